"""The transactional outbox: side effects (Slack posts, agent callbacks) written with the state change."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.db import db_now, insert_ignoring_conflict, insert_many_ignoring_conflict, is_postgres, iso_utc
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
    if is_postgres(conn):
        return await _claim_due_postgres(conn, kinds=kinds, limit=limit, lease=lease)
    now = await db_now(conn)
    rows: list[Any] = []
    for kind in kinds:
        query = (
            select(*_CLAIM_COLUMNS)
            .where(outbox.c.status == "pending", outbox.c.kind == kind, outbox.c.next_attempt_at <= now)
            .order_by(outbox.c.next_attempt_at, outbox.c.id)
            .limit(limit)
        )
        rows.extend((await conn.execute(query)).all())
    if not rows:
        return []
    for row in rows:
        if row.attempts > 0:
            await _record_interrupted(conn, row)
    # One statement for the batch: the rows are ours (SQLite has one writer).
    await conn.execute(
        update(outbox)
        .where(outbox.c.id.in_([row.id for row in rows]))
        .values(attempts=outbox.c.attempts + 1, next_attempt_at=now + lease, updated_at=now)
    )
    return [
        Claimed(row.id, row.kind, row.request_id, row.dedupe_key, dict(row.payload), row.attempts + 1)
        for row in rows
    ]


# PostgreSQL: lock, lease and read a kind's due rows in one statement (instead of reading the clock,
# selecting, then updating). `due` keeps each row's attempts and updated_at as they were before the
# lease, which _record_interrupted needs. FOR UPDATE SKIP LOCKED in the CTE: other replicas skip them.
_CLAIM_POSTGRES = text(
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


async def _claim_due_postgres(
    conn: AsyncConnection, *, kinds: list[str], limit: int, lease: dt.timedelta
) -> list[Claimed]:
    rows: list[Any] = []
    for kind in kinds:
        result = await conn.execute(
            _CLAIM_POSTGRES, {"kind": kind, "limit": limit, "lease": lease.total_seconds()}
        )
        # RETURNING has no order of its own: oldest row first.
        rows.extend(sorted(result.all(), key=lambda row: row.id))
    for row in rows:
        if row.attempts > 0:
            await _record_interrupted(conn, row)
    return [
        Claimed(row.id, row.kind, row.request_id, row.dedupe_key, dict(row.payload), row.attempts + 1)
        for row in rows
    ]


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


_RETRY = (
    update(outbox)
    .where(outbox.c.id == bindparam("b_id"))
    .values(
        next_attempt_at=bindparam("b_next"), last_error=bindparam("b_error"), updated_at=bindparam("b_now")
    )
)
_FINISH = (
    update(outbox)
    .where(outbox.c.id == bindparam("b_id"))
    .values(status=bindparam("b_status"), last_error=bindparam("b_error"), updated_at=bindparam("b_now"))
)


# PostgreSQL: the whole settlement in one statement, its rows passed as one array per column (a
# fixed shape, so it is prepared once; executemany would send, and dump in Python, one row at a time,
# which cost more CPU than the callback's HTTP request). One clock reading for every row, as below.
_SETTLE_POSTGRES = text(
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
    if is_postgres(conn):
        await conn.execute(
            _SETTLE_POSTGRES,
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
        return
    now = await db_now(conn)
    await conn.execute(
        delivery_attempts.insert(),
        [
            {
                "outbox_id": a.claimed.id,
                "request_id": a.claimed.request_id,
                "kind": a.claimed.kind,
                "attempt": a.claimed.attempt,
                "target": a.target,
                "started_at": a.started_at
                or (now - dt.timedelta(seconds=a.ago) if a.ago is not None else now),
                "latency_ms": a.latency_ms,
                "status_code": a.status_code,
                "result": a.result,
                "error": a.error,
            }
            for a in attempts
        ],
    )
    retries, finished = [], []
    for a in attempts:
        if a.result == "retry" and a.retry_in is not None:
            retries.append(
                {
                    "b_id": a.claimed.id,
                    "b_next": now + dt.timedelta(seconds=a.retry_in),
                    "b_error": a.error,
                    "b_now": now,
                }
            )
        else:
            status = "done" if a.result in ("delivered", "skipped") else "failed"
            finished.append({"b_id": a.claimed.id, "b_status": status, "b_error": a.error, "b_now": now})
    if retries:
        await conn.execute(_RETRY, retries)
    if finished:
        await conn.execute(_FINISH, finished)


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
