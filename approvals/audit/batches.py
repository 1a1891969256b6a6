"""Appending to many audit chains in one go: what a sweep (expiry, say) uses instead of one append each.

The result is the same as calling approvals.audit.events.append_events once per chain: each chain's head row is
locked, its events linked after it, the head moved on. Only the number of statements differs: three for
the whole batch instead of four per chain (two where the caller locked the heads already), which is what
lets a sweep keep up with thousands of rows a second.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.events import GENESIS_HASH, NewEvent, chain_rows
from approvals.db import array_literal, insert_many
from approvals.tables import audit_events, chain_heads

# Every head of the batch in one statement (an executemany is a statement per row), the strings as
# array text (see approvals.db.array_literal).
_MOVE_HEADS = text(
    """
    UPDATE chain_heads AS h SET seq = t.seq, hash = t.hash
      FROM unnest(:chain_ids ::VARCHAR[], :seqs ::INTEGER[], :hashes ::VARCHAR[]) AS t(chain_id, seq, hash)
     WHERE h.chain_id = t.chain_id
    """
)

Head = tuple[int, str]  # a chain head's (seq, hash)


async def lock_heads(conn: AsyncConnection, chain_ids: Sequence[str]) -> dict[str, Head]:
    """The heads of these chains, locked (in chain id order) until the transaction ends; a chain
    without a head row is left out."""
    ordered = sorted(chain_ids)
    heads: dict[str, Head] = {}
    for start in range(0, len(ordered), 1000):
        query = (
            select(chain_heads.c.chain_id, chain_heads.c.seq, chain_heads.c.hash)
            .where(chain_heads.c.chain_id.in_(ordered[start : start + 1000]))
            .order_by(chain_heads.c.chain_id)
            .with_for_update()
        )
        heads.update((row.chain_id, (row.seq, row.hash)) for row in await conn.execute(query))
    return heads


async def append_to_chains(
    conn: AsyncConnection,
    events_by_chain: Mapping[str, Sequence[NewEvent]],
    *,
    now: dt.datetime,
    locked_heads: Mapping[str, Head | None] | None = None,
) -> None:
    """Append each chain's events after its head, all in the caller's transaction.

    Heads are locked in chain id order, so two batches that share chains cannot deadlock each other.
    A caller that already locked them in this transaction (in the statement that claimed its rows,
    say) passes them as `locked_heads`, with None for a chain that has no head row. A chain without
    a head row starts from the genesis hash, as append_events would start it.
    """
    chain_ids = sorted(chain_id for chain_id, events in events_by_chain.items() if events)
    if not chain_ids:
        return
    if locked_heads is None:
        found = await lock_heads(conn, chain_ids)
    else:
        found = {chain_id: head for chain_id, head in locked_heads.items() if head is not None}
    heads: dict[str, Head] = dict(found)
    missing = [chain_id for chain_id in chain_ids if chain_id not in heads]
    if missing:
        # Rare (every request chain gets its head at intake); inserted like append_events does, so a
        # concurrent starter of the same chain conflicts on the primary key instead of forking it.
        await conn.execute(
            chain_heads.insert(), [{"chain_id": c, "seq": 0, "hash": GENESIS_HASH} for c in missing]
        )
        heads.update((chain_id, (0, GENESIS_HASH)) for chain_id in missing)
    rows = []
    moved: list[tuple[str, int, str]] = []
    for chain_id in chain_ids:
        seq, prev_hash = heads[chain_id]
        new_rows, head = chain_rows(
            chain_id, list(events_by_chain[chain_id]), now, seq=seq, prev_hash=prev_hash
        )
        rows.extend(new_rows)
        moved.append((chain_id, head["seq"], head["hash"]))
    await insert_many(conn, audit_events, rows)
    ids, seqs, hashes = zip(*moved, strict=True)
    await conn.execute(
        _MOVE_HEADS,
        {
            "chain_ids": array_literal(list(ids)),
            "seqs": list(seqs),
            "hashes": array_literal(list(hashes)),
        },
    )
