"""The auditor's report as one self-contained HTML file: inline CSS and inline SVG charts, nothing else.

The page is app/templates/report.html.j2, rendered with autoescaping (app.templating): agents write
titles, summaries, params and reasons, and Slack supplies names, so all of it is untrusted, and every
value reaches the page through `{{ }}`, which escapes it. Nothing here builds markup: this module
turns ReportData into plain values for the template (times and durations in words, timelines in
order, chart layouts from app.report_charts). The page has no script, and its Content-Security-Policy
forbids scripts and every fetch, so even a value that slipped through could neither run nor phone
home. Links an agent gave are shown as text, never as links.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from app.report_charts import decision_time_chart, weekly_chart
from app.templating import environment
from approvals.audit.report_figures import REFUSAL_REASONS, REFUSAL_SERIES, ReportData
from approvals.requests.lifecycle import STATUSES

# default-src 'none' blocks scripts, images, fonts, frames and connections; only the inline style is allowed.
CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
MFA_FIELDS = ("iss", "sub", "amr", "acr", "auth_time")


def _dash(value: Any) -> str:
    """A value as text; None (or nothing) shows as a dash."""
    if value is None or value == "":
        return "—"
    return str(value)


def _when(value: dt.datetime | str | None) -> str:
    """A UTC time an auditor reads at a glance: 2026-11-17 09:30:05 UTC."""
    if value is None:
        return "—"
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return _dash(value)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.1f} %"


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _plural(number: int, noun: str) -> str:
    return noun if number == 1 else f"{noun}s"


def count(number: int, noun: str) -> str:
    """ "1 request", "8 requests"."""
    return f"{number} {_plural(number, noun)}"


def _ordinal(number: int) -> str:
    """2nd, 3rd, 11th, 21st, 1000th."""
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number:,}{suffix}"


def _mfa_evidence(mfa: Any) -> list[tuple[str, str]] | str | None:
    """A decision's MFA evidence as (field, value) pairs, the known fields first; None for none, or
    the value itself as text if it is not a mapping."""
    if not mfa:
        return None
    if not isinstance(mfa, dict):
        return str(mfa)
    keys = [k for k in MFA_FIELDS if k in mfa] + sorted(k for k in mfa if k not in MFA_FIELDS)
    return [
        (key, ", ".join(map(str, mfa[key])) if isinstance(mfa[key], list) else _dash(mfa[key]))
        for key in keys
    ]


def _event_summary(kind: str, data: dict[str, Any]) -> str:
    """One line of plain text for a timeline row (escaped by the caller)."""
    who = f"{data.get('user_name') or '?'} <{data.get('email') or '?'}> ({data.get('user_id') or '?'})"
    if kind == "request_created":
        return (
            f"{data.get('agent')} asked for {data.get('action')} on behalf of {data.get('on_behalf_of')}, "
            f"expiring {data.get('expires_at')}"
        )
    if kind == "policy_evaluated":
        reason = f": {data['reason']}" if data.get("reason") else ""
        return (
            f"policy {data.get('policy')} (version {data.get('policy_version')}, rule {data.get('rule_index')}) "
            f"decided {data.get('decision')}{reason}"
        )
    if kind == "decision_recorded":
        reason = f", reason: {data['reason']}" if data.get("reason") else ""
        mfa = "with MFA evidence" if data.get("mfa") else "without MFA evidence"
        return f"{data.get('choice')} by {who}{reason}, {mfa}"
    if kind == "click_refused":
        return (
            f"{data.get('choice')} by {who} refused: {data.get('reason')} (request was {data.get('status')})"
        )
    if kind.startswith("step_up_"):
        detail = f" ({data['detail']})" if data.get("detail") else ""
        return f"{data.get('choice')} by {data.get('user_id')}: {data.get('reason') or 'step-up login asked'}{detail}"
    if kind.startswith("request_"):
        extra = ""
        if "approvals" in data:
            extra = f", {data['approvals']} of {data.get('required')} approvals"
        if data.get("reason"):
            extra += f": {data['reason']}"
        return f"{kind.removeprefix('request_')} (decided by {data.get('decided_by')}){extra}"
    if kind == "outcome_recorded":
        return f"outcome {data.get('status')}: {data.get('detail') or ''} (ref {data.get('external_ref')})"
    if kind == "notification_posted":
        return (
            f"card posted to {data.get('destination')} (channel {data.get('channel')}, ts {data.get('ts')})"
        )
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= 300 else text[:300] + "…"


@dataclass(frozen=True)
class TimelineRow:
    """An audit event (with its seq, data and hash) or a callback attempt (with none of them)."""

    at: str
    seq: int | None
    kind: str
    actor: str
    what: str
    data: str | None  # the event's data as indented JSON
    hash: str | None


def _timeline(chain: dict[str, Any]) -> list[TimelineRow]:
    """Audit events in chain order, with callback attempts (not audit events) placed among them by time."""

    def moment(value: str) -> dt.datetime:
        # ISO strings only sort as text when every one has microseconds: compare times instead.
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))

    entries: list[tuple[dt.datetime, int, int, TimelineRow]] = []
    latest: dt.datetime | None = None
    for event in chain["events"]:
        # The chain's order (seq) is the truth: an event may carry a time a moment before the one
        # ahead of it (a decision's final state is stamped with the click's time), so key events by
        # the latest time seen so far, which never goes backwards along the chain.
        at = moment(event["at"])
        latest = at if latest is None or at > latest else latest
        data = event["data"] if isinstance(event["data"], dict) else {"data": event["data"]}
        row = TimelineRow(
            at=_when(event["at"]),
            seq=int(event["seq"]),
            kind=str(event["kind"]),
            actor=_dash(event["actor"]),
            what=_event_summary(str(event["kind"]), data),
            data=_json(event["data"]),
            hash=str(event["hash"]),
        )
        entries.append((latest, 0, int(event["seq"]), row))
    for attempt in chain["callbacks"]:
        status = attempt["status_code"] if attempt["status_code"] is not None else "no answer"
        error = f", {attempt['error']}" if attempt.get("error") else ""
        what = (
            f"attempt {attempt['attempt']}: {attempt['result']} ({status}, {attempt['latency_ms']} ms{error})"
        )
        row = TimelineRow(_when(attempt["at"]), None, "callback_attempt", "service", what, None, None)
        entries.append((moment(attempt["at"]), 1, int(attempt["attempt"]), row))
    return [entry[3] for entry in sorted(entries, key=lambda entry: entry[:3])]


def _approvals_asked(chain: dict[str, Any]) -> str:
    """What the policy asked of people: a request the policy decided itself asked nobody."""
    final = chain.get("final") or {}
    if final.get("decided_by") == "policy":
        return "decided by the policy, no approval asked"
    required = int(chain["policy"].get("required_approvals") or 0)
    return f"{required} {_plural(required, 'approval')} required"


def _sample_step(data: ReportData) -> str:
    """How the sample was picked, in words."""
    if data.population <= data.sample_size:
        return "every request"
    ratio = data.population / data.sample_size
    if ratio.is_integer():
        return f"every {_ordinal(int(ratio))} request in creation order"
    return f"about one request in {ratio:.1f}, in creation order"


def render_report(data: ReportData) -> str:
    """The whole report as one HTML document."""
    statuses = list(data.by_status)
    reasons = list(REFUSAL_REASONS) + sorted(set(data.refusals_by_reason) - set(REFUSAL_REASONS))
    return (
        environment()
        .get_template("report.html.j2")
        .render(
            data=data,
            csp=CSP,
            # Known statuses get an id to find their count by; any other one a future version stores is listed too.
            known_statuses=[s for s in statuses if s in STATUSES],
            other_statuses=[s for s in statuses if s not in STATUSES],
            statuses=statuses,
            reasons=reasons,
            refusal_series=REFUSAL_SERIES,
            decision_chart=decision_time_chart(data.decision_times),
            decisions_chart=weekly_chart(data.decisions_by_week),
            refusals_chart=weekly_chart(data.refusals_by_week),
            chains=[
                {
                    "chain": chain,
                    "asked": _approvals_asked(chain),
                    "timeline": _timeline(chain),
                    "decisions": [{**d, "evidence": _mfa_evidence(d["mfa"])} for d in chain["decisions"]],
                }
                for chain in data.sample
            ],
            sample_step=_sample_step(data) if data.sample else "",
            dash=_dash,
            when=_when,
            duration=_duration,
            percent=_percent,
            json=_json,
            count=count,
            plural=_plural,
        )
    )
