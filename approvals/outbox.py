"""The transactional outbox: side effects (Slack posts, agent callbacks) written with the state change."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.db import db_now, insert_ignoring_conflict, is_postgres, iso_utc
from approvals.tables import delivery_attempts, outbox

SLACK_NOTIFY = "slack_notify"
SLACK_UPDATE = "slack_update"
CALLBACK = "callback"
SLACK_POST = "slack_post"


async def enqueue(
    conn: AsyncConnection,
    *,
    kind: str,
    dedupe_key: str,
    request_id: str | None,
    payload: dict[str, Any],
    now: dt.datetime | None = None,
) -> bool:
    """Queue one delivery in the caller's transaction; False when that delivery was already queued."""
    now = now or await db_now(conn)
    row = outbox_row(kind=kind, dedupe_key=dedupe_key, request_id=request_id, payload=payload, now=now)
    return await insert_ignoring_conflict(conn, outbox, row) is not None


def outbox_row(
    *, kind: str, dedupe_key: str, request_id: str | None, payload: dict[str, Any], now: dt.datetime
) -> dict[str, Any]:
    """A delivery due now, as a row (for callers that insert it together with other rows)."""
    return {
        "kind": kind,
        "dedupe_key": dedupe_key,
        "request_id": request_id,
        "payload": payload,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


@dataclass(frozen=True)
class Claimed:
    """An outbox row leased to this process for one delivery attempt."""

    id: int
    kind: str
    request_id: str | None
    dedupe_key: str
    payload: dict[str, Any]
    attempt: int


async def claim_due(
    conn: AsyncConnection, *, kinds: list[str], limit: int, lease: dt.timedelta
) -> list[Claimed]:
    """Lease due rows: other replicas skip them now and may retake them once the lease runs out.

    The lease is what makes a crash mid-delivery safe: the row comes due again by itself.
    """
    now = await db_now(conn)
    query = (
        select(
            outbox.c.id,
            outbox.c.kind,
            outbox.c.request_id,
            outbox.c.dedupe_key,
            outbox.c.payload,
            outbox.c.attempts,
            outbox.c.updated_at,
        )
        .where(outbox.c.status == "pending", outbox.c.next_attempt_at <= now, outbox.c.kind.in_(kinds))
        .order_by(outbox.c.next_attempt_at, outbox.c.id)
        .limit(limit)
    )
    if is_postgres(conn):
        query = query.with_for_update(skip_locked=True)
    rows = (await conn.execute(query)).all()
    claimed = []
    for row in rows:
        if row.attempts > 0:
            await _record_interrupted(conn, row)
        await conn.execute(
            update(outbox)
            .where(outbox.c.id == row.id)
            .values(attempts=row.attempts + 1, next_attempt_at=now + lease, updated_at=now)
        )
        claimed.append(
            Claimed(row.id, row.kind, row.request_id, row.dedupe_key, dict(row.payload), row.attempts + 1)
        )
    return claimed


async def _record_interrupted(conn: AsyncConnection, row: Any) -> None:
    """A lease that ran out with no result recorded: the process making that attempt stopped mid-way.

    It is written when the row is taken again, so the attempt shows in the API and the chain as
    `interrupted` instead of vanishing; the hot path pays nothing for it.
    """
    settled = (
        await conn.execute(
            select(delivery_attempts.c.id).where(
                delivery_attempts.c.outbox_id == row.id, delivery_attempts.c.attempt == row.attempts
            )
        )
    ).first()
    if settled is None:
        await conn.execute(
            delivery_attempts.insert().values(
                outbox_id=row.id,
                request_id=row.request_id,
                kind=row.kind,
                attempt=row.attempts,
                started_at=row.updated_at,
                result="interrupted",
                error="the process making this attempt stopped before recording its result",
            )
        )


async def settle(
    conn: AsyncConnection,
    claimed: Claimed,
    *,
    result: str,
    target: str | None = None,
    started_at: dt.datetime | None = None,
    latency_ms: int | None = None,
    status_code: int | None = None,
    error: str | None = None,
    retry_in: float | None = None,
) -> None:
    """Record one attempt and move the row on: done, retried later, or failed for good."""
    now = await db_now(conn)
    await conn.execute(
        delivery_attempts.insert().values(
            outbox_id=claimed.id,
            request_id=claimed.request_id,
            kind=claimed.kind,
            attempt=claimed.attempt,
            target=target,
            started_at=started_at or now,
            latency_ms=latency_ms,
            status_code=status_code,
            result=result,
            error=error,
        )
    )
    if result == "retry" and retry_in is not None:
        values: dict[str, Any] = {
            "next_attempt_at": now + dt.timedelta(seconds=retry_in),
            "last_error": error,
        }
    else:
        status = "done" if result in ("delivered", "skipped") else "failed"
        values = {"status": status, "last_error": error}
    await conn.execute(update(outbox).where(outbox.c.id == claimed.id).values(updated_at=now, **values))


async def attempts_for(conn: AsyncConnection, request_id: str) -> list[dict[str, Any]]:
    """Every delivery attempt for a request, oldest first, as the API shows them."""
    rows = (
        await conn.execute(
            select(delivery_attempts)
            .where(delivery_attempts.c.request_id == request_id)
            .order_by(delivery_attempts.c.id)
        )
    ).all()
    return [
        {
            "kind": r.kind,
            "attempt": r.attempt,
            "target": r.target,
            "at": iso_utc(r.started_at),
            "latency_ms": r.latency_ms,
            "status_code": r.status_code,
            "result": r.result,
            "error": r.error,
        }
        for r in rows
    ]
