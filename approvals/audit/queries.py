"""Read-only questions auditors ask of the log beyond single chains: events of a kind, policy history."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.db import iso_utc
from approvals.tables import audit_events, policy_versions


async def events_of_kind(
    conn: AsyncConnection,
    kinds: list[str],
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 10_000,
) -> list[dict[str, Any]]:
    """Audit events of the given kinds (e.g. action_refused, click_refused, notification_failed), oldest first."""
    query = select(audit_events).where(audit_events.c.kind.in_(kinds))
    if since is not None:
        query = query.where(audit_events.c.created_at >= since)
    if until is not None:
        query = query.where(audit_events.c.created_at < until)
    rows = await conn.execute(query.order_by(audit_events.c.created_at, audit_events.c.id).limit(limit))
    return [
        {
            "at": iso_utc(r.created_at),
            "kind": r.kind,
            "chain_id": r.chain_id,
            "seq": r.seq,
            "actor": r.actor,
            "data": r.data,
            "hash": r.hash,
        }
        for r in rows
    ]


async def policy_history(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every policy content ever loaded: version, SHA-256, source, who loaded it and when."""
    rows = await conn.execute(select(policy_versions).order_by(policy_versions.c.id))
    return [
        {
            "version": r.id,
            "sha256": r.sha256,
            "source": r.source,
            "loaded_by": r.loaded_by,
            "loaded_at": iso_utc(r.loaded_at),
        }
        for r in rows
    ]
