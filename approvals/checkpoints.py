"""Signed checkpoints over the whole audit log, so that removing entire chains is detected too.

Each checkpoint covers the events with ids after the previous checkpoint's last id, in id order, and
carries a running hash (SHA-256 over the previous running hash and each covered event's hash), the
counts, and a signature by the service's checkpoint key. Signing is passed in: the domain stays free
of key handling.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit import GENESIS_HASH, canonical_json, format_time
from approvals.db import db_now
from approvals.tables import audit_checkpoints, audit_events

# Events younger than this are left for the next checkpoint: a transaction still in flight may hold
# a lower id than one already committed, and must not be skipped for ever.
DEFAULT_LAG = dt.timedelta(seconds=30)
CHECKPOINT_LOCK_ID = 0x41434B50

Signer = Callable[[bytes], str]
Verifier = Callable[[bytes, str], bool]


def checkpoint_body(row: Any) -> bytes:
    """The exact bytes that are signed: every field of the checkpoint but the signature."""
    return canonical_json(
        {
            "number": row["number"],
            "created_at": format_time(row["created_at"]),
            "first_event_id": row["first_event_id"],
            "last_event_id": row["last_event_id"],
            "event_count": row["event_count"],
            "total_events": row["total_events"],
            "running_hash": row["running_hash"],
            "key_id": row["key_id"],
        }
    )


def _advance(running: str, event_hash: str) -> str:
    return hashlib.sha256((running + event_hash).encode()).hexdigest()


async def _running_hash(conn: AsyncConnection, start: str, after_id: int, up_to_id: int) -> tuple[str, int]:
    running, count = start, 0
    result = await conn.stream(
        select(audit_events.c.hash)
        .where(audit_events.c.id > after_id, audit_events.c.id <= up_to_id)
        .order_by(audit_events.c.id)
        .execution_options(yield_per=10_000)
    )
    async for row in result:
        running, count = _advance(running, row.hash), count + 1
    return running, count


async def create_checkpoint(
    conn: AsyncConnection, *, sign: Signer, key_id: str, lag: dt.timedelta = DEFAULT_LAG
) -> dict[str, Any] | None:
    """Sign everything appended since the last checkpoint (older than `lag`); None when nothing is new."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": CHECKPOINT_LOCK_ID})
    previous = (
        (await conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.number.desc()).limit(1)))
        .mappings()
        .first()
    )
    after_id = int(previous["last_event_id"]) if previous else 0
    now = await db_now(conn)
    last_id = (
        await conn.execute(
            select(func.max(audit_events.c.id)).where(
                audit_events.c.id > after_id, audit_events.c.created_at <= now - lag
            )
        )
    ).scalar()
    if last_id is None:
        return None
    start = previous["running_hash"] if previous else GENESIS_HASH
    running, count = await _running_hash(conn, start, after_id, int(last_id))
    row: dict[str, Any] = {
        "number": (int(previous["number"]) + 1) if previous else 1,
        "created_at": now,
        "first_event_id": after_id,
        "last_event_id": int(last_id),
        "event_count": count,
        "total_events": (int(previous["total_events"]) if previous else 0) + count,
        "running_hash": running,
        "key_id": key_id,
    }
    row["signature"] = sign(checkpoint_body(row))
    await conn.execute(audit_checkpoints.insert(), row)
    return row


@dataclass(frozen=True)
class CheckpointProblem:
    number: int
    problem: str


async def latest_checkpoint(conn: AsyncConnection) -> dict[str, Any] | None:
    row = (
        (await conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.number.desc()).limit(1)))
        .mappings()
        .first()
    )
    return dict(row) if row else None


async def verify_checkpoints(
    conn: AsyncConnection, *, verify: Verifier, exported: dict[str, Any] | None = None
) -> tuple[int, CheckpointProblem | None]:
    """Check every checkpoint's signature, links and running hash against the events it covers.

    `exported` is a checkpoint kept outside the database: the stored one must be identical to it.
    """
    rows = [
        dict(r)
        for r in (
            await conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.number))
        ).mappings()
    ]
    running, after_id, total = GENESIS_HASH, 0, 0
    for expected_number, row in enumerate(rows, start=1):
        number = int(row["number"])
        if number != expected_number:
            return len(rows), CheckpointProblem(expected_number, f"checkpoint {expected_number} is missing")
        if not verify(checkpoint_body(row), row["signature"]):
            return len(rows), CheckpointProblem(
                number, "signature does not verify (forged or altered checkpoint)"
            )
        if int(row["first_event_id"]) != after_id:
            return len(rows), CheckpointProblem(number, "does not continue from the previous checkpoint")
        recomputed, count = await _running_hash(conn, running, after_id, int(row["last_event_id"]))
        total += count
        if count != int(row["event_count"]) or total != int(row["total_events"]):
            return len(rows), CheckpointProblem(
                number,
                f"{int(row['event_count']) - count} events it covers were removed (ids {after_id + 1}-{row['last_event_id']})",
            )
        if recomputed != row["running_hash"]:
            return len(rows), CheckpointProblem(number, "events it covers were changed or reordered")
        running, after_id = row["running_hash"], int(row["last_event_id"])
    if exported is not None:
        number = int(exported["number"])
        stored = next((r for r in rows if int(r["number"]) == number), None)
        if stored is None:
            return len(rows), CheckpointProblem(
                number, "the exported checkpoint is not in the database (removed)"
            )
        mine = {k: exported[k] for k in ("running_hash", "last_event_id", "total_events", "signature")}
        theirs = {k: stored[k] for k in ("running_hash", "last_event_id", "total_events", "signature")}
        if mine != theirs:
            return len(rows), CheckpointProblem(
                number, "the database's checkpoint differs from the exported one (swapped)"
            )
    return len(rows), None
