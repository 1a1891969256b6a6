"""Approval chains for auditors: request -> policy decision -> human decisions -> deliveries -> outcome.

A chain is assembled from the request row, its decisions, cards, delivery attempts and its hash-chained
audit events; params are redacted per the policy rule the request was judged under.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    any_,
    bindparam,
    exists,
    func,
    or_,
    select,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.db import is_postgres, iso_utc
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


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        when, request_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return dt.datetime.fromisoformat(when.replace("Z", "+00:00")), request_id
    except (ValueError, UnicodeDecodeError):
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


def _base() -> Select[Any]:
    return select(
        requests,
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
    # Every request has exactly one agent (a foreign key), so no join is needed to count them.
    query = _filtered(select(func.count()).select_from(requests), f, counting=True)
    return int((await conn.execute(query)).scalar_one())


async def chain_page(
    conn: AsyncConnection, f: ChainFilter, *, cursor: str | None = None, limit: int = 100
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of chains, oldest first, and the cursor for the next page (None at the end)."""
    query = _filtered(_base(), f)
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
    rows = list(await conn.execute(query.order_by(requests.c.created_at, requests.c.id).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    chains = await _assemble(conn, rows)
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    return chains, next_cursor


async def iter_chains(conn: AsyncConnection, f: ChainFilter) -> AsyncIterator[dict[str, Any]]:
    """Every matching chain, a page at a time: memory stays flat however many there are."""
    cursor: str | None = None
    while True:
        chains, cursor = await chain_page(conn, f, cursor=cursor, limit=PAGE)
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


def _among(column: Any, ids: list[str], postgres: bool) -> Any:
    """`column IN ids`; on PostgreSQL `= ANY(array)`, one parameter instead of one per id (a page
    of 500 chains otherwise makes statements of 500 parameters to build and parse, four per page)."""
    if postgres:
        return column == any_(bindparam("ids", ids, type_=ARRAY(String)))
    return column.in_(ids)


async def _assemble(conn: AsyncConnection, rows: list[Any]) -> list[dict[str, Any]]:
    ids = [r.id for r in rows]
    if not ids:
        return []
    postgres = is_postgres(conn)
    by_request: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for name, table, order in (
        ("decisions", decisions, decisions.c.id),
        ("messages", slack_messages, slack_messages.c.id),
        ("attempts", delivery_attempts, delivery_attempts.c.id),
    ):
        query = select(table).where(_among(table.c.request_id, ids, postgres)).order_by(order)
        for item in await conn.execute(query):
            by_request[item.request_id][name].append(item)
    for event in await conn.execute(
        select(audit_events)
        .where(_among(audit_events.c.chain_id, ids, postgres))
        .order_by(audit_events.c.chain_id, audit_events.c.seq)
    ):
        by_request[event.chain_id]["events"].append(event)
    return [_chain(row, by_request[row.id]) for row in rows]


def _chain(row: Any, parts: dict[str, list[Any]]) -> dict[str, Any]:
    rule = row.policy_rule or {}
    events = parts["events"]
    policy_event = next((e.data for e in events if e.kind == "policy_evaluated"), None)
    return {
        "id": row.id,
        "status": row.status,
        "request": {
            "action": row.action,
            "title": row.title,
            "summary": row.summary,
            "params": redact(row.params, list(rule.get("redact", []))),
            "payload_sha256": row.payload_sha256,
            "on_behalf_of": row.on_behalf_of,
            "links": row.links,
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
        "notifications": [
            {
                "destination": m.destination,
                "channel": m.channel,
                "ts": m.ts,
                "permalink": m.permalink,
                "posted_at": iso_utc(m.created_at),
            }
            for m in parts["messages"]
        ],
        "clicks": [
            {
                "kind": e.kind,
                "at": iso_utc(e.created_at),
                **{
                    k: e.data.get(k)
                    for k in ("user_id", "user_name", "email", "team_id", "choice", "reason", "action_ts")
                },
            }
            for e in events
            if e.kind in ("decision_recorded", "click_refused")
        ],
        "decisions": [
            {
                "approver": {
                    "id": d.approver_id,
                    "name": d.approver_name,
                    "email": d.approver_email,
                    "team_id": d.team_id,
                },
                "decision": d.decision,
                "reason": d.reason,
                "action_ts": d.action_ts,
                "policy_version": d.policy_version_id,
                "mfa": d.mfa,
                "decided_at": iso_utc(d.created_at),
            }
            for d in parts["decisions"]
        ],
        "final": {
            "status": row.status,
            "decided_by": row.decided_by,
            "reason": row.reason,
            "decided_at": iso_utc(row.decided_at),
        }
        if row.decided_at
        else None,
        "callbacks": [
            {
                "attempt": a.attempt,
                "at": iso_utc(a.started_at),
                "status_code": a.status_code,
                "result": a.result,
                "latency_ms": a.latency_ms,
                "error": a.error,
            }
            for a in parts["attempts"]
            if a.kind == "callback"
        ],
        "outcome": {
            "status": row.outcome_status,
            "detail": row.outcome_detail,
            "external_ref": row.outcome_external_ref,
            "recorded_at": iso_utc(row.outcome_at),
        }
        if row.outcome_status
        else None,
        "events": [
            {
                "seq": e.seq,
                "kind": e.kind,
                "actor": e.actor,
                "at": iso_utc(e.created_at),
                "data": e.data,
                "prev_hash": e.prev_hash,
                "hash": e.hash,
            }
            for e in events
        ],
    }
