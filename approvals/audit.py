"""The tamper-evident audit log: per-chain hash-linked events, appended inside the caller's transaction."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.db import db_now, insert_ignoring_conflict, is_postgres
from approvals.tables import audit_events, chain_heads

GENESIS_HASH = "0" * 64
# A retention purge holds this advisory lock exclusively; verification holds it shared, so it never
# reads the log half-way through a purge (PostgreSQL; SQLite serialises transactions anyway).
PURGE_LOCK_ID = 0x41505247
_INSERT_EVENT = audit_events.insert()


def canonical_json(value: Any) -> bytes:
    """The one byte form we hash: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def format_time(value: dt.datetime) -> str:
    """Timestamps inside hashes: UTC, microseconds, 'Z', the same on every backend."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(
    *,
    chain_id: str,
    seq: int,
    kind: str,
    actor: str,
    data: Any,
    created_at: dt.datetime,
    prev_hash: str,
) -> str:
    """SHA-256 over the canonical JSON of everything an event says, linked to the one before it."""
    body = {
        "chain_id": chain_id,
        "seq": seq,
        "kind": kind,
        "actor": actor,
        "data": data,
        "created_at": format_time(created_at),
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_json(body)).hexdigest()


@dataclass(frozen=True)
class AppendedEvent:
    chain_id: str
    seq: int
    hash: str


@dataclass(frozen=True)
class NewEvent:
    kind: str
    actor: str
    data: dict[str, Any]


async def append_events(
    conn: AsyncConnection,
    chain_id: str,
    events: list[NewEvent],
    *,
    now: dt.datetime | None = None,
) -> AppendedEvent:
    """Append events to a chain in order. Appends to one chain are ordered by a lock on its head row only."""
    await insert_ignoring_conflict(conn, chain_heads, {"chain_id": chain_id, "seq": 0, "hash": GENESIS_HASH})
    head_query = select(chain_heads.c.seq, chain_heads.c.hash).where(chain_heads.c.chain_id == chain_id)
    if is_postgres(conn):
        head_query = head_query.with_for_update()
    head = (await conn.execute(head_query)).one()
    created_at = now or await db_now(conn)
    rows, new_head = chain_rows(chain_id, events, created_at, seq=head.seq, prev_hash=head.hash)
    await conn.execute(_INSERT_EVENT, rows)
    await conn.execute(
        update(chain_heads)
        .where(chain_heads.c.chain_id == chain_id)
        .values(seq=new_head["seq"], hash=new_head["hash"])
    )
    return AppendedEvent(chain_id=chain_id, seq=new_head["seq"], hash=new_head["hash"])


async def append_event(
    conn: AsyncConnection,
    *,
    chain_id: str,
    kind: str,
    actor: str,
    data: dict[str, Any],
    now: dt.datetime | None = None,
) -> AppendedEvent:
    """Append one event to an existing (or implicitly started) chain."""
    return await append_events(conn, chain_id, [NewEvent(kind, actor, data)], now=now)


@dataclass(frozen=True)
class ChainBreak:
    chain_id: str
    seq: int
    problem: str


def check_link(row: Any, expected_seq: int, prev_hash: str) -> ChainBreak | None:
    """One event against the one before it: its place, its link, and its own hash."""
    if row.seq != expected_seq:
        return ChainBreak(row.chain_id, expected_seq, f"event {expected_seq} is missing")
    if row.prev_hash != prev_hash:
        return ChainBreak(row.chain_id, row.seq, "prev_hash does not match the event before it")
    recomputed = event_hash(
        chain_id=row.chain_id,
        seq=row.seq,
        kind=row.kind,
        actor=row.actor,
        data=row.data,
        created_at=row.created_at,
        prev_hash=row.prev_hash,
    )
    if recomputed != row.hash:
        return ChainBreak(row.chain_id, row.seq, "event content does not match its hash")
    return None


async def verify_chain(conn: AsyncConnection, chain_id: str) -> ChainBreak | None:
    """Recompute one chain; the first broken link, or None when every hash and link holds."""
    rows = (
        await conn.execute(
            select(audit_events).where(audit_events.c.chain_id == chain_id).order_by(audit_events.c.seq)
        )
    ).all()
    prev_hash, expected_seq = GENESIS_HASH, 1
    for row in rows:
        broken = check_link(row, expected_seq, prev_hash)
        if broken is not None:
            return broken
        prev_hash, expected_seq = row.hash, expected_seq + 1
    head = (await conn.execute(select(chain_heads).where(chain_heads.c.chain_id == chain_id))).first()
    if head is not None and (head.seq != expected_seq - 1 or head.hash != prev_hash):
        return ChainBreak(chain_id, expected_seq, "events after this point were removed")
    return None


@dataclass(frozen=True)
class VerifyReport:
    chains: int
    events: int
    first_break: ChainBreak | None

    @property
    def ok(self) -> bool:
        return self.first_break is None


async def verify_all(conn: AsyncConnection) -> VerifyReport:
    """Recompute every chain in one pass over the log, and check each chain's head row agrees.

    A chain whose events were deleted entirely but whose head row remains is reported too.
    """
    if is_postgres(conn):
        await conn.execute(text("SELECT pg_advisory_xact_lock_shared(:id)"), {"id": PURGE_LOCK_ID})
    heads = {row.chain_id: (row.seq, row.hash) for row in await conn.execute(select(chain_heads))}
    result = await conn.stream(
        select(audit_events)
        .order_by(audit_events.c.chain_id, audit_events.c.seq)
        .execution_options(yield_per=5000)
    )
    chains = events = 0
    current: str | None = None
    prev_hash, expected_seq = GENESIS_HASH, 1
    first_break: ChainBreak | None = None

    def close_chain(chain_id: str) -> ChainBreak | None:
        head = heads.pop(chain_id, None)
        if head is not None and (head[0] != expected_seq - 1 or head[1] != prev_hash):
            return ChainBreak(chain_id, expected_seq, "events after this point were removed")
        return None

    async for row in result:
        events += 1
        if row.chain_id != current:
            if current is not None and first_break is None:
                first_break = close_chain(current)
            current, prev_hash, expected_seq = row.chain_id, GENESIS_HASH, 1
            chains += 1
        if first_break is not None:
            continue
        first_break = check_link(row, expected_seq, prev_hash)
        if first_break is None:
            prev_hash, expected_seq = row.hash, expected_seq + 1
    if current is not None and first_break is None:
        first_break = close_chain(current)
    if first_break is None:
        for chain_id in sorted(heads):
            first_break = ChainBreak(chain_id, 1, "the whole chain was removed")
            break
    return VerifyReport(chains=chains, events=events, first_break=first_break)


def chain_rows(
    chain_id: str,
    events: list[NewEvent],
    created_at: dt.datetime,
    *,
    seq: int = 0,
    prev_hash: str = GENESIS_HASH,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows of `events` linked after (seq, prev_hash), and the chain's new head row.

    The defaults start a new chain: callers creating one insert its rows and head without a lock.
    """
    rows: list[dict[str, Any]] = []
    for event in events:
        seq += 1
        # Round-trip through JSON so the hash covers exactly what the database will give back.
        data = json.loads(canonical_json(event.data))
        digest = event_hash(
            chain_id=chain_id,
            seq=seq,
            kind=event.kind,
            actor=event.actor,
            data=data,
            created_at=created_at,
            prev_hash=prev_hash,
        )
        rows.append(
            {
                "chain_id": chain_id,
                "seq": seq,
                "kind": event.kind,
                "actor": event.actor,
                "data": data,
                "created_at": created_at,
                "prev_hash": prev_hash,
                "hash": digest,
            }
        )
        prev_hash = digest
    return rows, {"chain_id": chain_id, "seq": seq, "hash": prev_hash}
