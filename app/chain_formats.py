"""Chain export formats shared by the compliance API and the CLI: JSON, JSON Lines and CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any, Literal

from approvals.audit.chains import ChainFilter
from approvals.errors import InvalidInput
from approvals.requests.lifecycle import STATUSES

Format = Literal["json", "jsonl", "csv"]
FORMATS: tuple[Format, ...] = ("json", "jsonl", "csv")
MEDIA_TYPES = {"json": "application/json", "jsonl": "application/x-ndjson", "csv": "text/csv"}
CSV_COLUMNS = [
    "id",
    "status",
    "agent",
    "agent_owner",
    "action",
    "policy",
    "policy_version",
    "policy_sha256",
    "on_behalf_of",
    "payload_sha256",
    "created_at",
    "decided_at",
    "decided_by",
    "reason",
    "approvers",
    "mfa_decisions",
    "refused_clicks",
    "notifications",
    "callback_attempts",
    "outcome",
    "outcome_ref",
    "events",
    "last_event_hash",
]


def parse_time(value: str | None, field: str) -> dt.datetime | None:
    """ISO 8601 date or date-time; a date means its midnight UTC, a time without zone means UTC."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput("invalid_field", f"{field} must be an ISO 8601 date or date-time", field) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def chain_filter(values: dict[str, str | None]) -> ChainFilter:
    status = values.get("status")
    if status and status not in STATUSES:
        raise InvalidInput("invalid_field", f"unknown status {status!r}", "status")
    outcome = values.get("outcome")
    if outcome and outcome not in ("succeeded", "failed", "none"):
        raise InvalidInput("invalid_field", "outcome is succeeded, failed or none", "outcome")
    return ChainFilter(
        agent=values.get("agent") or None,
        policy=values.get("policy") or None,
        action=values.get("action") or None,
        approver=values.get("approver") or None,
        status=status or None,
        outcome=outcome or None,
        created_from=parse_time(values.get("from"), "from"),
        created_to=parse_time(values.get("to"), "to"),
    )


def csv_row(chain: dict[str, Any]) -> list[Any]:
    decisions = chain["decisions"]
    events = chain["events"]
    return [
        chain["id"],
        chain["status"],
        chain["agent"]["name"],
        chain["agent"]["owner"],
        chain["request"]["action"],
        chain["policy"]["name"],
        chain["policy"]["version"],
        chain["policy"]["sha256"],
        chain["request"]["on_behalf_of"],
        chain["request"]["payload_sha256"],
        chain["request"]["created_at"],
        (chain["final"] or {}).get("decided_at"),
        (chain["final"] or {}).get("decided_by"),
        (chain["final"] or {}).get("reason"),
        "; ".join(f"{d['approver']['name']} <{d['approver']['email']}> {d['decision']}" for d in decisions),
        sum(1 for d in decisions if d["mfa"]),
        sum(1 for c in chain["clicks"] if c["kind"] == "click_refused"),
        len(chain["notifications"]),
        len(chain["callbacks"]),
        (chain["outcome"] or {}).get("status"),
        (chain["outcome"] or {}).get("external_ref"),
        len(events),
        events[-1]["hash"] if events else "",
    ]


# OWASP's CSV injection list: a cell starting with one of these is a formula to Excel, LibreOffice
# and Google Sheets (tab and CR because spreadsheets strip them before looking for the others).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(cell: Any) -> Any:
    """A cell a spreadsheet shows as text: a string starting like a formula gets a leading `'`.

    Only strings: numbers the service computes (counts, versions) are written as numbers. Every
    string is treated alike, because agent text, Slack names and reasons reach many columns.
    """
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
        return "'" + cell
    return cell


def csv_text(rows: list[list[Any]]) -> str:
    """Rows as CSV, every cell through csv_safe: the one writer of every CSV the service produces."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow([csv_safe(cell) for cell in row])
    return buffer.getvalue()


# Built once: json.dumps with these arguments builds an encoder per call (same output).
_JSONL = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def compact_json(chain: dict[str, Any]) -> str:
    """A chain as one line of compact JSON (what approvals.audit.chain_json has PostgreSQL write too)."""
    return _JSONL.encode(chain)


def jsonl(chain: dict[str, Any]) -> str:
    return compact_json(chain) + "\n"
