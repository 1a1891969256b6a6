"""Appending to many audit chains in one go: what a sweep (expiry, say) uses instead of one append each.

The result is the same as calling approvals.audit.append_events once per chain: each chain's head row is
locked, its events linked after it, the head moved on. Only the number of statements differs: three for
the whole batch instead of four per chain, which is what lets a sweep keep up with thousands of rows a
second.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit import GENESIS_HASH, NewEvent, chain_rows
from approvals.db import is_postgres
from approvals.tables import audit_events, chain_heads

_INSERT_EVENTS = audit_events.insert()
_MOVE_HEAD = (
    update(chain_heads)
    .where(chain_heads.c.chain_id == bindparam("b_chain_id"))
    .values(seq=bindparam("b_seq"), hash=bindparam("b_hash"))
)


async def append_to_chains(
    conn: AsyncConnection, events_by_chain: Mapping[str, Sequence[NewEvent]], *, now: dt.datetime
) -> None:
    """Append each chain's events after its head, all in the caller's transaction.

    Heads are locked in chain id order, so two batches that share chains cannot deadlock each other.
    A chain without a head row starts from the genesis hash, as append_events would start it.
    """
    chain_ids = sorted(chain_id for chain_id, events in events_by_chain.items() if events)
    if not chain_ids:
        return
    heads: dict[str, tuple[int, str]] = {}
    for start in range(0, len(chain_ids), 1000):
        query = (
            select(chain_heads.c.chain_id, chain_heads.c.seq, chain_heads.c.hash)
            .where(chain_heads.c.chain_id.in_(chain_ids[start : start + 1000]))
            .order_by(chain_heads.c.chain_id)
        )
        if is_postgres(conn):
            query = query.with_for_update()
        heads.update((row.chain_id, (row.seq, row.hash)) for row in await conn.execute(query))
    missing = [chain_id for chain_id in chain_ids if chain_id not in heads]
    if missing:
        # Rare (every request chain gets its head at intake); inserted like append_events does, so a
        # concurrent starter of the same chain conflicts on the primary key instead of forking it.
        await conn.execute(
            chain_heads.insert(), [{"chain_id": c, "seq": 0, "hash": GENESIS_HASH} for c in missing]
        )
        heads.update((chain_id, (0, GENESIS_HASH)) for chain_id in missing)
    rows = []
    moves = []
    for chain_id in chain_ids:
        seq, prev_hash = heads[chain_id]
        new_rows, head = chain_rows(
            chain_id, list(events_by_chain[chain_id]), now, seq=seq, prev_hash=prev_hash
        )
        rows.extend(new_rows)
        moves.append({"b_chain_id": chain_id, "b_seq": head["seq"], "b_hash": head["hash"]})
    await conn.execute(_INSERT_EVENTS, rows)
    await conn.execute(_MOVE_HEAD, moves)
