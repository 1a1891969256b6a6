"""Approval chains written as JSON text by PostgreSQL, for exports that stream many of them.

approvals.audit.chains assembles each chain as a dict from rows read into Python, which costs more than
reading the rows themselves; here the database writes each chain's JSON in one statement a page,
byte for byte the compact form app.chain_formats.jsonl gives the dict of approvals.audit.chains (a test
holds the two together). That works because JSON columns hold canonical compact text (see
app.database) that can be copied as it lies, strings are escaped by to_json exactly as Python's
encoder escapes them (ensure_ascii off), and times are written as iso_utc writes them.

Params that the policy redacts are the one part left to Python: those chains (flagged by the
statement) have their params replaced with approvals.audit.chains.redact and are encoded again.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import String, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.chains import PAGE, ChainFilter, page_ids, redact

# The same compact encoder as app.chain_formats.jsonl (the domain does not import the app).
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _time(column: str) -> str:
    """iso_utc(column) as JSON: UTC, microseconds only when there are any, a trailing Z; or null."""
    utc = f"pg_catalog.timezone('UTC', {column})"
    return (
        f"CASE WHEN {column} IS NULL THEN 'null' ELSE pg_catalog.concat('\"', "
        f"pg_catalog.to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS'), "
        f"CASE WHEN pg_catalog.date_trunc('second', {column}) <> {column} THEN pg_catalog.to_char({utc}, '.US') END, "
        "'Z\"') END"
    )


def _value(column: str) -> str:
    """A text or number column as JSON (to_json escapes strings as Python's encoder does), or null."""
    return f"COALESCE(pg_catalog.to_json({column})::text, 'null')"


def _json(column: str) -> str:
    """A JSON column (or json expression) copied as it is stored, or null."""
    return f"COALESCE(({column})::text, 'null')"


def _object(*pairs: tuple[str, str]) -> str:
    """A JSON object of (key, SQL expression giving JSON text) pairs, in this order, compact."""
    parts = ["'{'"]
    for index, (key, expression) in enumerate(pairs):
        parts.append(repr(("," if index else "") + json.dumps(key) + ":"))
        parts.append(expression)
    parts.append("'}'")
    return "pg_catalog.concat(" + ", ".join(parts) + ")"


def _array(element: str, source: str, order: str, where: str = "") -> str:
    """A JSON array of one object per row of `source` (a FROM clause), in `order`."""
    condition = f" WHERE {where}" if where else ""
    aggregate = f"pg_catalog.concat('[', pg_catalog.string_agg({element}, ',' ORDER BY {order}), ']')"
    return f"(SELECT {aggregate} FROM {source}{condition})"  # noqa: S608 (this module's constants only)


_CLICK_FIELDS = ("user_id", "user_name", "email", "team_id", "authorised_as", "choice", "reason", "action_ts")

_EVENT = _object(
    ("seq", "e.seq::text"),
    ("kind", _value("e.kind")),
    ("actor", _value("e.actor")),
    ("at", _time("e.created_at")),
    ("data", _json("e.data")),
    ("prev_hash", _value("e.prev_hash")),
    ("hash", _value("e.hash")),
)
_CLICK = _object(
    ("kind", _value("e.kind")),
    ("at", _time("e.created_at")),
    *((field, _json(f"e.data -> '{field}'")) for field in _CLICK_FIELDS),
)
_MESSAGE = _object(
    ("destination", _value("m.destination")),
    ("channel", _value("m.channel")),
    ("ts", _value("m.ts")),
    ("permalink", _value("m.permalink")),
    ("posted_at", _time("m.created_at")),
)
_CALLBACK = _object(
    ("attempt", _value("a.attempt")),
    ("at", _time("a.started_at")),
    ("status_code", _value("a.status_code")),
    ("result", _value("a.result")),
    ("latency_ms", _value("a.latency_ms")),
    ("error", _value("a.error")),
)
_DECISION = _object(
    (
        "approver",
        _object(
            ("id", _value("d.approver_id")),
            ("name", _value("d.approver_name")),
            ("email", _value("d.approver_email")),
            ("team_id", _value("d.team_id")),
        ),
    ),
    ("decision", _value("d.decision")),
    ("reason", _value("d.reason")),
    ("action_ts", _value("d.action_ts")),
    ("policy_version", _value("d.policy_version_id")),
    ("mfa", _json("d.mfa")),
    ("decided_at", _time("d.created_at")),
)
# `rule or None` and `rule.get(...)` of approvals.audit.chains._chain, with a missing rule as {}.
_RULE = "CASE WHEN r.policy_rule IS NULL OR r.policy_rule::text IN ('{}', 'null') THEN 'null' ELSE r.policy_rule::text END"

_CHAIN = _object(
    ("id", _value("r.id")),
    ("status", _value("r.status")),
    (
        "request",
        _object(
            ("action", _value("r.action")),
            ("title", _value("r.title")),
            ("summary", _value("r.summary")),
            ("params", _json("r.params")),
            ("payload_sha256", _value("r.payload_sha256")),
            ("on_behalf_of", _value("r.on_behalf_of")),
            ("links", _json("r.links")),
            ("callback_url", _value("r.callback_url")),
            ("created_at", _time("r.created_at")),
            ("expires_at", _time("r.expires_at")),
        ),
    ),
    (
        "agent",
        _object(
            ("id", _value("r.agent_id")),
            ("name", _value("ag.name")),
            ("owner", _value("ag.owner")),
            ("purpose", _value("ag.purpose")),
            ("risk", _value("ag.risk")),
        ),
    ),
    (
        "policy",
        _object(
            ("name", _value("r.policy_name")),
            ("version", _value("r.policy_version_id")),
            ("sha256", _value("pv.sha256")),
            ("approvers", _json("r.policy_rule -> 'approvers'")),
            ("required_approvals", _value("r.required_approvals")),
            ("mfa", _json("r.policy_rule -> 'mfa'")),
            ("rule", _RULE),
        ),
    ),
    ("policy_decision", "COALESCE(ev.policy_decision, 'null')"),
    ("notifications", _array(_MESSAGE, "slack_messages AS m", "m.id", "m.request_id = r.id")),
    ("clicks", "COALESCE(ev.clicks, '[]')"),
    ("decisions", _array(_DECISION, "decisions AS d", "d.id", "d.request_id = r.id")),
    (
        "final",
        "CASE WHEN r.decided_at IS NULL THEN 'null' ELSE "
        + _object(
            ("status", _value("r.status")),
            ("decided_by", _value("r.decided_by")),
            ("reason", _value("r.reason")),
            ("decided_at", _time("r.decided_at")),
        )
        + " END",
    ),
    (
        "callbacks",
        _array(_CALLBACK, "delivery_attempts AS a", "a.id", "a.request_id = r.id AND a.kind = 'callback'"),
    ),
    (
        "outcome",
        "CASE WHEN COALESCE(r.outcome_status, '') = '' THEN 'null' ELSE "
        + _object(
            ("status", _value("r.outcome_status")),
            ("detail", _value("r.outcome_detail")),
            ("external_ref", _value("r.outcome_external_ref")),
            ("recorded_at", _time("r.outcome_at")),
        )
        + " END",
    ),
    ("events", "COALESCE(ev.events, '[]')"),
)

# The events are read once for their three uses: the chain's events, its clicks, its policy decision.
_CHAINS = text(
    f"""
SELECT r.id,
       COALESCE(r.policy_rule::jsonb -> 'redact', '[]'::jsonb) <> '[]'::jsonb AS redacts,
       {_CHAIN} AS chain
FROM requests AS r
JOIN agents AS ag ON ag.id = r.agent_id
JOIN policy_versions AS pv ON pv.id = r.policy_version_id
LEFT JOIN LATERAL (
    SELECT pg_catalog.concat('[', pg_catalog.string_agg({_EVENT}, ',' ORDER BY e.seq), ']') AS events,
           pg_catalog.concat('[', pg_catalog.string_agg({_CLICK}, ',' ORDER BY e.seq)
               FILTER (WHERE e.kind IN ('decision_recorded', 'click_refused')), ']') AS clicks,
           (pg_catalog.array_agg(e.data::text ORDER BY e.seq) FILTER (WHERE e.kind = 'policy_evaluated'))[1]
               AS policy_decision
    FROM audit_events AS e WHERE e.chain_id = r.id
) AS ev ON true
WHERE r.id = ANY(:ids)
"""  # noqa: S608 (built from this module's constants only)
).bindparams(bindparam("ids", type_=ARRAY(String)))


async def iter_chain_texts(
    conn: AsyncConnection,
    f: ChainFilter,
    *,
    builders: Sequence[AsyncConnection] = (),
    page: int = PAGE,
) -> AsyncIterator[str]:
    """Every matching chain as compact JSON text, in export order, a page at a time (PostgreSQL).

    `conn` finds each page's ids (`page` of them); the pages are written on `builders` (default:
    `conn` itself), one page in flight on each, so that several database sessions write JSON while
    this one hands it out in order. Memory stays at a page per builder.
    """
    writers = list(builders) or [conn]
    in_flight: deque[tuple[list[str], asyncio.Task[dict[str, Any]]]] = deque()
    cursor: str | None = None
    turn, more = 0, True
    try:
        while True:
            while more and len(in_flight) < len(writers):
                # With `conn` among the writers, this waits until no page is being written on it.
                ids, cursor = await page_ids(conn, f, cursor=cursor, limit=page)
                more = cursor is not None
                if ids:
                    writer = writers[turn % len(writers)]
                    turn += 1
                    in_flight.append((ids, asyncio.ensure_future(_write_page(writer, ids))))
            if not in_flight:
                return
            ids, writing = in_flight.popleft()
            built = await writing
            for request_id in ids:
                redacts, chain = built[request_id]
                yield _redacted(chain) if redacts else chain
    finally:  # pages still being written finish (their sessions stay usable); what they wrote is dropped
        await asyncio.gather(*(writing for _ids, writing in in_flight), return_exceptions=True)


async def _write_page(conn: AsyncConnection, ids: list[str]) -> dict[str, Any]:
    return {row.id: (row.redacts, row.chain) for row in await conn.execute(_CHAINS, {"ids": ids})}


def _redacted(chain_text: str) -> str:
    """The chain with its params redacted per its policy rule, as approvals.audit.chains writes it."""
    chain: dict[str, Any] = json.loads(chain_text)
    rule = chain["policy"]["rule"] or {}
    request = chain["request"]
    request["params"] = redact(request["params"], list(rule.get("redact", [])))
    return _COMPACT.encode(chain)
