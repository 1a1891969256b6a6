"""Approval chains for auditors: request -> policy decision -> human decisions -> deliveries -> outcome.

A chain is assembled from the request row, its decisions, cards, delivery attempts and its hash-chained
audit events; params are redacted per the policy rule the request was judged under.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Select,
    String,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    exists,
    func,
    or_,
    select,
    type_coerce,
    union,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.db import iso_utc
from approvals.errors import InvalidInput, NotFound
from approvals.tables import (
    agents,
    audit_events,
    decisions,
    delivery_attempts,
    policy_versions,
    requests,
    slack_messages,
)

PAGE = 500
REDACTED = "[redacted]"


@dataclass(frozen=True)
class ChainFilter:
    agent: str | None = None
    policy: str | None = None
    action: str | None = None
    approver: str | None = None
    status: str | None = None
    outcome: str | None = None
    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None


def encode_cursor(created_at: dt.datetime, request_id: str) -> str:
    return base64.urlsafe_b64encode(f"{iso_utc(created_at)}|{request_id}".encode()).decode()


# Request ids are new_id("req_") values; a cursor's id is checked against this looser shape.
_CURSOR_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """The (created_at, id) an encode_cursor value names; anything else is refused.

    The caller hands the cursor back, so it is hostile input: a time without a zone or beyond
    datetime's range, or an id no request has (a NUL in it), would otherwise fail in SQL as a 500.
    """
    try:
        when, request_id = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii").split("|", 1)
        after = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
        if after.tzinfo is None or not _CURSOR_ID.fullmatch(request_id):
            raise ValueError("not a cursor this API wrote")
        return after.astimezone(dt.UTC), request_id
    except (ValueError, OverflowError):  # UnicodeError and binascii.Error are ValueErrors
        raise InvalidInput("invalid_cursor", "the cursor is not one this API returned", "cursor") from None


def _filtered(query: Select[Any], f: ChainFilter, *, counting: bool = False) -> Select[Any]:
    conditions: list[ColumnElement[bool]] = []
    if f.agent:
        # A subquery rather than a condition on the joined agents row, so that counting needs no join.
        conditions.append(requests.c.agent_id.in_(select(agents.c.id).where(agents.c.name == f.agent)))
    if f.policy:
        conditions.append(requests.c.policy_name == f.policy)
    if f.action:
        conditions.append(requests.c.action == f.action)
    if f.status:
        conditions.append(requests.c.status == f.status)
    if f.outcome:
        conditions.append(
            requests.c.outcome_status.is_(None)
            if f.outcome == "none"
            else requests.c.outcome_status == f.outcome
        )
    if f.created_from:
        conditions.append(requests.c.created_at >= f.created_from)
    if f.created_to:
        conditions.append(requests.c.created_at < f.created_to)
    if f.approver:
        # Requests with a decision by this approver (Slack id or email), said the way each query runs
        # best on the (approver_id, request_id) and (approver_email, request_id) indexes: a count
        # takes the approver's request ids from both, a page walks requests in order keeping those in
        # either set (one EXISTS over `id = X OR email = X` would visit every decision row instead).
        if counting:
            conditions.append(
                requests.c.id.in_(
                    union_all(
                        select(decisions.c.request_id).where(decisions.c.approver_id == f.approver),
                        select(decisions.c.request_id).where(decisions.c.approver_email == f.approver),
                    )
                )
            )
        else:
            conditions.append(
                or_(
                    exists().where(
                        decisions.c.request_id == requests.c.id, decisions.c.approver_id == f.approver
                    ),
                    exists().where(
                        decisions.c.request_id == requests.c.id, decisions.c.approver_email == f.approver
                    ),
                )
            )
    return query.where(and_(*conditions)) if conditions else query


# JSON columns the export reads as their text, to decode a page's worth in one json.loads (see
# _decode_all) instead of one call per value in the driver.
_REQUEST_JSON = ("params", "links", "policy_rule")


def _base() -> Select[Any]:
    return select(
        *(cast(c, Text).label(c.name) if c.name in _REQUEST_JSON else c for c in requests.c),
        agents.c.name.label("agent_name"),
        agents.c.owner.label("agent_owner"),
        agents.c.purpose.label("agent_purpose"),
        agents.c.risk.label("agent_risk"),
        policy_versions.c.sha256.label("policy_sha256"),
    ).select_from(
        requests.join(agents, agents.c.id == requests.c.agent_id).join(
            policy_versions, policy_versions.c.id == requests.c.policy_version_id
        )
    )


async def count_chains(conn: AsyncConnection, f: ChainFilter) -> int:
    """The population: how many chains match, so an auditor can reconcile a sample or an export."""
    if f.approver and dataclasses.replace(f, approver=None) == ChainFilter():
        # Only an approver: count their requests from the two decision indexes alone. Every decision
        # belongs to a request (a foreign key), so visiting each request row would add nothing.
        theirs = union(
            select(decisions.c.request_id).where(decisions.c.approver_id == f.approver),
            select(decisions.c.request_id).where(decisions.c.approver_email == f.approver),
        ).subquery()
        return int((await conn.execute(select(func.count()).select_from(theirs))).scalar_one())
    # Every request has exactly one agent (a foreign key), so no join is needed to count them.
    query = _filtered(select(func.count()).select_from(requests), f, counting=True)
    return int((await conn.execute(query)).scalar_one())


def _page(query: Select[Any], f: ChainFilter, cursor: str | None, limit: int) -> Select[Any]:
    """`query` filtered, after the cursor, in export order, one row more than a page (to tell if
    another page follows)."""
    query = _filtered(query, f)
    if cursor:
        after_at, after_id = decode_cursor(cursor)
        query = query.where(
            # The first condition is implied by the second; it lets the (created_at, id) index start
            # at the cursor instead of reading the table from its beginning.
            requests.c.created_at >= after_at,
            or_(
                requests.c.created_at > after_at,
                and_(requests.c.created_at == after_at, requests.c.id > after_id),
            ),
        )
    return query.order_by(requests.c.created_at, requests.c.id).limit(limit + 1)


def _next_cursor(rows: list[Any], limit: int) -> str | None:
    return encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id) if len(rows) > limit else None


async def chain_page(
    conn: AsyncConnection, f: ChainFilter, *, cursor: str | None = None, limit: int = 100
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of chains, oldest first, and the cursor for the next page (None at the end)."""
    rows = list(await conn.execute(_page(_base(), f, cursor, limit)))
    chains = await _assemble(conn, rows[:limit])
    return chains, _next_cursor(rows, limit)


async def page_ids(
    conn: AsyncConnection, f: ChainFilter, *, cursor: str | None = None, limit: int = 100
) -> tuple[list[str], str | None]:
    """The request ids of one page of chains (as chain_page would give them) and the next cursor."""
    rows = list(await conn.execute(_page(select(requests.c.id, requests.c.created_at), f, cursor, limit)))
    return [row.id for row in rows[:limit]], _next_cursor(rows, limit)


async def iter_chains(
    conn: AsyncConnection, f: ChainFilter, *, page: int = PAGE
) -> AsyncIterator[dict[str, Any]]:
    """Every matching chain, `page` at a time: memory stays flat however many there are."""
    cursor: str | None = None
    while True:
        chains, cursor = await chain_page(conn, f, cursor=cursor, limit=page)
        for chain in chains:
            yield chain
        if cursor is None:
            return


async def get_chain(conn: AsyncConnection, request_id: str) -> dict[str, Any]:
    rows = list(await conn.execute(_base().where(requests.c.id == request_id)))
    if not rows:
        raise NotFound("chain_not_found", f"no request {request_id!r}", "id")
    return (await _assemble(conn, rows))[0]


def redact(params: Any, paths: list[str]) -> Any:
    """A copy of params with each `params.a.b` path replaced by [redacted]."""
    if not paths:
        return params  # nothing to replace: params as the database gave them are already a copy
    result = json.loads(json.dumps(params))
    for path in paths:
        parts = path.split(".")[1:] if path.startswith("params.") else []
        node = result
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if parts and isinstance(node, dict) and parts[-1] in node:
            node[parts[-1]] = REDACTED
    return result


def _among(column: Any, ids: list[str]) -> Any:
    """`column IN ids` as `= ANY(array)`, one parameter instead of one per id (a page of 500 chains
    otherwise makes statements of 500 parameters to build and parse, four per page)."""
    return column == any_(bindparam("ids", ids, type_=ARRAY(String)))


def _decode_all(texts: list[Any]) -> list[Any]:
    """Each JSON text decoded (None stays None), with one json.loads over them all: PostgreSQL's
    json type holds only valid JSON, so the array of them decodes to exactly their values."""
    present = [t for t in texts if t is not None]
    if not present:
        return [None] * len(texts)
    values = iter(json.loads("[" + ",".join(present) + "]"))
    return [None if t is None else next(values) for t in texts]


def _time(column: Any) -> Any:
    """A time column for iso_utc: the aware datetime psycopg gives, without the column type's own
    conversion to UTC (iso_utc converts anyway)."""
    return type_coerce(column, DateTime(timezone=True))


async def _assemble(conn: AsyncConnection, rows: list[Any]) -> list[dict[str, Any]]:
    """The chains of these request rows, their parts read a page at a time and built into the
    export's form as they are read (rows unpacked by position: there are many of them)."""
    ids = [r.id for r in rows]
    if not ids:
        return []
    by_request: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    m = slack_messages.c
    for request_id, destination, channel, ts, permalink, posted_at in await conn.execute(
        select(m.request_id, m.destination, m.channel, m.ts, m.permalink, _time(m.created_at))
        .where(_among(m.request_id, ids))
        .order_by(m.id)
    ):
        by_request[request_id]["messages"].append(
            {
                "destination": destination,
                "channel": channel,
                "ts": ts,
                "permalink": permalink,
                "posted_at": iso_utc(posted_at),
            }
        )
    a = delivery_attempts.c
    # Only callback attempts are part of a chain (cards' deliveries are its notifications).
    for request_id, attempt, started_at, status_code, result, latency_ms, error in await conn.execute(
        select(
            a.request_id,
            a.attempt,
            _time(a.started_at),
            a.status_code,
            a.result,
            a.latency_ms,
            a.error,
        )
        .where(_among(a.request_id, ids), a.kind == "callback")
        .order_by(a.id)
    ):
        by_request[request_id]["callbacks"].append(
            {
                "attempt": attempt,
                "at": iso_utc(started_at),
                "status_code": status_code,
                "result": result,
                "latency_ms": latency_ms,
                "error": error,
            }
        )
    d = decisions.c
    found: list[Any] = list(
        await conn.execute(
            select(
                d.request_id,
                d.approver_id,
                d.approver_name,
                d.approver_email,
                d.team_id,
                d.decision,
                d.reason,
                d.action_ts,
                d.policy_version_id,
                cast(d.mfa, Text),
                _time(d.created_at),
            )
            .where(_among(d.request_id, ids))
            .order_by(d.id)
        )
    )
    mfas = _decode_all([r[9] for r in found])
    for (request_id, approver, name, email, team, decision, reason, action_ts, version, _, at), mfa in zip(
        found, mfas, strict=True
    ):
        by_request[request_id]["decisions"].append(
            {
                "approver": {"id": approver, "name": name, "email": email, "team_id": team},
                "decision": decision,
                "reason": reason,
                "action_ts": action_ts,
                "policy_version": version,
                "mfa": mfa,
                "decided_at": iso_utc(at),
            }
        )
    e = audit_events.c
    found = list(
        await conn.execute(
            select(
                e.chain_id,
                e.seq,
                e.kind,
                e.actor,
                _time(e.created_at),
                cast(e.data, Text),
                e.prev_hash,
                e.hash,
            )
            .where(_among(e.chain_id, ids))
            .order_by(e.chain_id, e.seq)
        )
    )
    payloads = _decode_all([r[5] for r in found])
    last_time: Any = None
    last_text: str | None = None
    for (chain_id, seq, kind, actor, created_at, _, prev_hash, digest), payload in zip(
        found, payloads, strict=True
    ):
        if created_at != last_time:  # a chain's events often share their time (one transaction)
            last_time, last_text = created_at, iso_utc(created_at)
        # The export's form of the event, built once: the chain's other parts are read from it.
        by_request[chain_id]["events"].append(
            {
                "seq": seq,
                "kind": kind,
                "actor": actor,
                "at": last_text,
                "data": payload,
                "prev_hash": prev_hash,
                "hash": digest,
            }
        )
    decoded = _decode_all([v for r in rows for v in (r.params, r.links, r.policy_rule)])
    json_values = [decoded[i : i + 3] for i in range(0, len(decoded), 3)]
    return [_chain(row, by_request[row.id], *values) for row, values in zip(rows, json_values, strict=True)]


def _chain(
    row: Any, parts: dict[str, list[Any]], params: Any, links: Any, policy_rule: Any
) -> dict[str, Any]:
    rule = policy_rule or {}
    events = parts["events"]
    policy_event = next((e["data"] for e in events if e["kind"] == "policy_evaluated"), None)
    return {
        "id": row.id,
        "status": row.status,
        "request": {
            "action": row.action,
            "title": row.title,
            "summary": row.summary,
            "params": redact(params, list(rule.get("redact", []))),
            "payload_sha256": row.payload_sha256,
            "on_behalf_of": row.on_behalf_of,
            "links": links,
            "callback_url": row.callback_url,
            "created_at": iso_utc(row.created_at),
            "expires_at": iso_utc(row.expires_at),
        },
        "agent": {
            "id": row.agent_id,
            "name": row.agent_name,
            "owner": row.agent_owner,
            "purpose": row.agent_purpose,
            "risk": row.agent_risk,
        },
        "policy": {
            "name": row.policy_name,
            "version": row.policy_version_id,
            "sha256": row.policy_sha256,
            "approvers": rule.get("approvers"),
            "required_approvals": row.required_approvals,
            "mfa": rule.get("mfa"),
            "rule": rule or None,
        },
        "policy_decision": policy_event,
        "notifications": parts["messages"],
        "clicks": [
            {
                "kind": e["kind"],
                "at": e["at"],
                **{
                    k: e["data"].get(k)
                    for k in (
                        "user_id",
                        "user_name",
                        "email",
                        "team_id",
                        "authorised_as",
                        "choice",
                        "reason",
                        "action_ts",
                    )
                },
            }
            for e in events
            if e["kind"] in ("decision_recorded", "click_refused")
        ],
        "decisions": parts["decisions"],
        "final": {
            "status": row.status,
            "decided_by": row.decided_by,
            "reason": row.reason,
            "decided_at": iso_utc(row.decided_at),
        }
        if row.decided_at
        else None,
        "callbacks": parts["callbacks"],
        "outcome": {
            "status": row.outcome_status,
            "detail": row.outcome_detail,
            "external_ref": row.outcome_external_ref,
            "recorded_at": iso_utc(row.outcome_at),
        }
        if row.outcome_status
        else None,
        "events": events,
    }
