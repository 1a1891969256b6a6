"""The transactional outbox: side effects (Slack posts, agent callbacks) written with the state change."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.db import db_now, insert_ignoring_conflict, insert_many_ignoring_conflict, iso_utc
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


async def enqueue_many(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Queue many deliveries (rows from outbox_row) in one statement; ones already queued are skipped."""
    await insert_many_ignoring_conflict(conn, outbox, rows)


# The columns of a new outbox row that hold the time it was queued (it is due at once).
TIME_COLUMNS = ("next_attempt_at", "created_at", "updated_at")


def outbox_values(
    *, kind: str, dedupe_key: str, request_id: str | None, payload: dict[str, Any]
) -> dict[str, Any]:
    """A new delivery's row but for its TIME_COLUMNS (for a statement that stamps them itself)."""
    return {
        "kind": kind,
        "dedupe_key": dedupe_key,
        "request_id": request_id,
        "payload": payload,
        "status": "pending",
        "attempts": 0,
    }


def outbox_row(
    *, kind: str, dedupe_key: str, request_id: str | None, payload: dict[str, Any], now: dt.datetime
) -> dict[str, Any]:
    """A delivery due now, as a row (for callers that insert it together with other rows)."""
    row = outbox_values(kind=kind, dedupe_key=dedupe_key, request_id=request_id, payload=payload)
    row.update(dict.fromkeys(TIME_COLUMNS, now))
    return row


@dataclass(frozen=True)
class Claimed:
    """An outbox row leased to this process for one delivery attempt."""

    id: int
    kind: str
    request_id: str | None
    dedupe_key: str
    payload: dict[str, Any]
    attempt: int


_CLAIM_COLUMNS = (
    outbox.c.id,
    outbox.c.kind,
    outbox.c.request_id,
    outbox.c.dedupe_key,
    outbox.c.payload,
    outbox.c.attempts,
    outbox.c.updated_at,
)


async def claim_due(
    conn: AsyncConnection, *, kinds: list[str], limit: int, lease: dt.timedelta
) -> list[Claimed]:
    """Lease up to `limit` due rows of each kind: other replicas skip them now and may retake them once
    the lease runs out.

    The lease is what makes a crash mid-delivery safe: the row comes due again by itself.

    One query per kind, each answered from ix_outbox_status_kind_next_attempt_at in due order: rows of
    kinds this process has no handler for (Slack cards queued while Slack is switched off) are never
    visited, however many of them wait, and stay pending for a process that can deliver them.
    """
    rows: list[Any] = []
    for kind in kinds:
        result = await conn.execute(_CLAIM, {"kind": kind, "limit": limit, "lease": lease.total_seconds()})
        # RETURNING has no order of its own: oldest row first.
        rows.extend(sorted(result.all(), key=lambda row: row.id))
    for row in rows:
        if row.attempts > 0:
            await _record_interrupted(conn, row)
    return [
        Claimed(row.id, row.kind, row.request_id, row.dedupe_key, dict(row.payload), row.attempts + 1)
        for row in rows
    ]


# Lock, lease and read a kind's due rows in one statement (instead of reading the clock, selecting,
# then updating). `due` keeps each row's attempts and updated_at as they were before the lease, which
# _record_interrupted needs. FOR UPDATE SKIP LOCKED in the CTE: other replicas skip them.
_CLAIM = text(
    """
WITH t AS (SELECT clock_timestamp() AS now),
due AS (
  SELECT id, attempts, updated_at FROM outbox
  WHERE status = 'pending' AND kind = :kind AND next_attempt_at <= (SELECT now FROM t)
  ORDER BY next_attempt_at, id
  LIMIT :limit
  FOR UPDATE SKIP LOCKED
)
UPDATE outbox SET
  attempts = outbox.attempts + 1,
  next_attempt_at = t.now + make_interval(secs => :lease),
  updated_at = t.now
FROM due, t
WHERE outbox.id = due.id
RETURNING outbox.id, outbox.kind, outbox.request_id, outbox.dedupe_key, outbox.payload,
          due.attempts, due.updated_at
"""
).columns(*_CLAIM_COLUMNS)


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


@dataclass(frozen=True)
class Attempt:
    """The result of one delivery attempt, to be recorded by settle_many."""

    claimed: Claimed
    result: str  # delivered | skipped | retry | failed | gone
    target: str | None = None
    started_at: dt.datetime | None = None
    latency_ms: int | None = None
    status_code: int | None = None
    error: str | None = None
    retry_in: float | None = None
    # Seconds between the attempt's start and its recording, when it is recorded later (with others):
    # its time is then the database clock at recording minus this, not the moment of recording.
    ago: float | None = None


# The whole settlement in one statement, its rows passed as one array per column (a fixed shape, so
# it is prepared once; executemany would send, and dump in Python, one row at a time, which cost more
# CPU than the callback's HTTP request). One clock reading for every row.
_SETTLE = text(
    """
WITH t AS (SELECT clock_timestamp() AS now),
v AS (
  SELECT * FROM unnest(
    CAST(:outbox_id AS bigint[]), CAST(:request_id AS varchar[]), CAST(:kind AS varchar[]),
    CAST(:attempt AS integer[]), CAST(:target AS text[]), CAST(:started_at AS timestamptz[]),
    CAST(:ago AS double precision[]), CAST(:latency_ms AS integer[]), CAST(:status_code AS integer[]),
    CAST(:result AS varchar[]), CAST(:error AS text[]), CAST(:retry_in AS double precision[])
  ) AS v(outbox_id, request_id, kind, attempt, target, started_at, ago, latency_ms, status_code, result,
         error, retry_in)
),
recorded AS (
  INSERT INTO delivery_attempts
    (outbox_id, request_id, kind, attempt, target, started_at, latency_ms, status_code, result, error)
  SELECT v.outbox_id, v.request_id, v.kind, v.attempt, v.target,
         coalesce(v.started_at, t.now - make_interval(secs => coalesce(v.ago, 0))),
         v.latency_ms, v.status_code, v.result, v.error
  FROM v, t
)
UPDATE outbox SET
  status = CASE
    WHEN v.result = 'retry' AND v.retry_in IS NOT NULL THEN outbox.status
    WHEN v.result IN ('delivered', 'skipped') THEN 'done'
    ELSE 'failed' END,
  next_attempt_at = CASE
    WHEN v.result = 'retry' AND v.retry_in IS NOT NULL THEN t.now + make_interval(secs => v.retry_in)
    ELSE outbox.next_attempt_at END,
  last_error = v.error,
  updated_at = t.now
FROM v, t
WHERE outbox.id = v.outbox_id
"""
)


async def settle_many(conn: AsyncConnection, attempts: list[Attempt]) -> None:
    """Record attempts and move their rows on (done, retried later, or failed for good), all at once."""
    if not attempts:
        return
    await conn.execute(
        _SETTLE,
        {
            "outbox_id": [a.claimed.id for a in attempts],
            "request_id": [a.claimed.request_id for a in attempts],
            "kind": [a.claimed.kind for a in attempts],
            "attempt": [a.claimed.attempt for a in attempts],
            "target": [a.target for a in attempts],
            "started_at": [a.started_at for a in attempts],
            "ago": [a.ago for a in attempts],
            "latency_ms": [a.latency_ms for a in attempts],
            "status_code": [a.status_code for a in attempts],
            "result": [a.result for a in attempts],
            "error": [a.error for a in attempts],
            "retry_in": [a.retry_in for a in attempts],
        },
    )


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
