"""Retention purge: remove whole request chains older than the retention period, provably.

What goes: a request that is final (never a pending one), whose final state was reached before the
boundary (now minus APPROVALS_RETENTION_DAYS, at least 365 days), whose every audit event is older
than the boundary and already covered by a signed checkpoint, whose chain still verifies, and that
has no delivery or click still in flight. With it go its decisions, cards, clicks, delivery attempts,
outbox rows, idempotency keys, MFA step-up intents, its chain head and its audit events. Chains that
are not a request's (agent:..., policy, identity:..., retention) are kept.

What stays: for every purged event its id, chain, seq, time and hash (not its content) in
`audit_purged_events`, and one purge record in `audit_purges` signed with the checkpoint key: the
boundary, the checkpoint relied on, the counts and a digest over those kept lines. Checkpoints are
never rewritten, so each one (and any copy exported before the purge) still recomputes from the
surviving events plus the kept hashes; see approvals/audit/checkpoints.py for what verification checks.
The purge itself is an event in the `retention` chain.

Every function runs in the caller's transaction and commits nothing. A purge holds an advisory
lock (concurrent purges take turns; verification waits) and deletes audit events under a
transaction-local `approvals.purge` setting, which the append-only trigger (migration 0005) demands
together with the event's hash already recorded under the latest purge record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, delete, exists, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.checkpoints import (
    MIN_RETENTION,
    PURGE_EVENT_KIND,
    RETENTION_CHAIN,
    Signer,
    Verifier,
    checkpoint_body,
    latest_checkpoint,
    purge_body,
    purged_event_line,
)
from approvals.audit.events import GENESIS_HASH, PURGE_LOCK_ID, append_event, check_link, format_time
from approvals.db import db_now
from approvals.errors import InvalidInput
from approvals.requests.lifecycle import Status
from approvals.tables import (
    audit_events,
    audit_purged_events,
    audit_purges,
    chain_heads,
    decisions,
    delivery_attempts,
    idempotency_keys,
    outbox,
    requests,
    slack_clicks,
    slack_messages,
    step_up_intents,
)

DEFAULT_BATCH = 500

# Rows that belong to a request, deleted before the request row itself (children of foreign keys
# first). Audit events and the chain head are handled apart: they need the purge record first.
_REQUEST_ROWS: tuple[tuple[str, Table], ...] = (
    ("delivery_attempts", delivery_attempts),
    ("outbox", outbox),
    ("slack_clicks", slack_clicks),
    ("idempotency_keys", idempotency_keys),
    ("step_up_intents", step_up_intents),
    ("decisions", decisions),
    ("slack_messages", slack_messages),
)


@dataclass(frozen=True)
class PurgeBatch:
    """What one batch removed (or, in a dry run, would remove)."""

    purge_number: int | None  # the signed purge record written; None in a dry run or when nothing went
    checkpoint_number: int | None  # the signed checkpoint the batch relied on
    chains: int
    events: int
    rows: dict[str, int]  # per table, requests included
    broken: list[str]  # old chains kept because they do not verify: evidence is never purged
    candidates: int  # requests looked at: fewer than the limit means there are no more
    next_after: str | None  # where the next batch starts (request ids are scanned in order)


@dataclass
class PurgeSummary:
    """Batches added up, for the report an operator (or a cron log) reads."""

    boundary: dt.datetime
    retention_days: int
    dry_run: bool
    chains: int = 0
    events: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    purges: list[int] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    kept: int = 0  # old final requests still there afterwards (waiting, or broken)

    def add(self, batch: PurgeBatch) -> None:
        self.chains += batch.chains
        self.events += batch.events
        for table, count in batch.rows.items():
            self.rows[table] = self.rows.get(table, 0) + count
        if batch.purge_number is not None:
            self.purges.append(batch.purge_number)
        self.broken += batch.broken

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "boundary": format_time(self.boundary),
            "retention_days": self.retention_days,
            "requests": self.rows.get("requests", 0),
            "chains": self.chains,
            "events": self.events,
            "rows": dict(sorted(self.rows.items())),
            "purges": self.purges,
            "kept": self.kept,
            "broken": self.broken,
        }


def _check_retention(retention: dt.timedelta) -> None:
    if retention < MIN_RETENTION:
        raise InvalidInput(
            "retention_too_short",
            f"retention must be at least {MIN_RETENTION.days} days, not {retention.days}",
            "retention_days",
        )


async def purge_boundary(conn: AsyncConnection, retention: dt.timedelta) -> dt.datetime:
    """Now (the database's clock) minus the retention period; under 365 days is refused."""
    _check_retention(retention)
    return await db_now(conn) - retention


def _final_at() -> Any:
    return func.coalesce(requests.c.decided_at, requests.c.created_at)


async def count_kept(conn: AsyncConnection, boundary: dt.datetime) -> int:
    """Final requests older than the boundary that are still here (waiting for a checkpoint, say)."""
    query = select(func.count()).where(requests.c.status != Status.PENDING, _final_at() < boundary)
    return int((await conn.execute(query)).scalar_one())


async def purge_batch(
    conn: AsyncConnection,
    *,
    boundary: dt.datetime,
    retention_days: int,
    sign: Signer,
    verify: Verifier,
    key_id: str,
    actor: str = "system:retention",
    after: str | None = None,
    limit: int = DEFAULT_BATCH,
    dry_run: bool = False,
) -> PurgeBatch:
    """Purge (or, with dry_run, count) up to `limit` eligible requests with ids after `after`.

    Idempotent: what was purged is gone, so a second run finds nothing; a chain that became
    ineligible meanwhile (a late event, say) is simply left for another run.
    """
    retention = dt.timedelta(days=retention_days)
    _check_retention(retention)
    if boundary > await db_now(conn) - retention:
        raise InvalidInput(
            "boundary_too_recent", f"the boundary must be at least {retention_days} days ago", "boundary"
        )
    lock = "pg_advisory_xact_lock_shared" if dry_run else "pg_advisory_xact_lock"
    await conn.execute(text(f"SELECT {lock}(:id)"), {"id": PURGE_LOCK_ID})

    checkpoint = await latest_checkpoint(conn)
    if checkpoint is None:
        return PurgeBatch(None, None, 0, 0, {}, [], 0, None)
    # "Covered by a signed checkpoint" must mean signed by our key, not merely a row in a table.
    if not verify(checkpoint_body(checkpoint), checkpoint["signature"]):
        raise InvalidInput(
            "checkpoint_not_verified",
            f"checkpoint {checkpoint['number']} does not verify: run `approvals audit verify` before purging",
        )
    covered = int(checkpoint["last_event_id"])

    ids = await _candidates(conn, boundary, covered, after, limit, lock=not dry_run)
    next_after = ids[-1] if ids else None
    if not ids:
        return PurgeBatch(None, int(checkpoint["number"]), 0, 0, {}, [], 0, None)
    if not dry_run:
        # Appends to a chain lock its head row: holding the heads, no event can join these chains
        # between reading them and deleting them.
        await conn.execute(
            select(chain_heads.c.chain_id).where(chain_heads.c.chain_id.in_(ids)).with_for_update()
        )
    events, broken = await _verified_events(conn, ids, boundary, covered)
    chains = sorted({e.chain_id for e in events})
    if dry_run or not chains:
        rows = await _count_rows(conn, chains) if chains else {}
        return PurgeBatch(
            None, int(checkpoint["number"]), len(chains), len(events), rows, broken, len(ids), next_after
        )

    number, digest = await _record_purge(
        conn,
        events=events,
        chain_count=len(chains),
        boundary=boundary,
        retention_days=retention_days,
        checkpoint=checkpoint,
        sign=sign,
        key_id=key_id,
    )
    rows = await _delete_request_rows(conn, chains)
    await append_event(
        conn,
        chain_id=RETENTION_CHAIN,
        kind=PURGE_EVENT_KIND,
        actor=actor,
        data={
            "purge": number,
            "boundary": format_time(boundary),
            "retention_days": retention_days,
            "checkpoint": int(checkpoint["number"]),
            "chains": len(chains),
            "events": len(events),
            "digest": digest,
            "rows": rows,
        },
    )
    await _delete_chains(conn, chains, number, expected_events=len(events))
    return PurgeBatch(
        number, int(checkpoint["number"]), len(chains), len(events), rows, broken, len(ids), next_after
    )


async def _candidates(
    conn: AsyncConnection, boundary: dt.datetime, covered: int, after: str | None, limit: int, *, lock: bool
) -> list[str]:
    """Final requests whose every event is old and checkpointed, with nothing still in flight."""
    young_or_unsealed = exists().where(
        audit_events.c.chain_id == requests.c.id,
        or_(audit_events.c.created_at >= boundary, audit_events.c.id > covered),
    )
    in_flight = or_(
        exists().where(outbox.c.request_id == requests.c.id, outbox.c.status.notin_(("done", "failed"))),
        exists().where(slack_clicks.c.request_id == requests.c.id, slack_clicks.c.status != "done"),
    )
    query = select(requests.c.id).where(
        requests.c.status != Status.PENDING, _final_at() < boundary, ~young_or_unsealed, ~in_flight
    )
    if after is not None:
        query = query.where(requests.c.id > after)
    query = query.order_by(requests.c.id).limit(limit)
    if lock:
        # A click or outcome report on one of these waits for us and then finds no request; one
        # already holding a row is skipped, and that request waits for the next run.
        query = query.with_for_update(of=requests, skip_locked=True)
    return [row.id for row in await conn.execute(query)]


async def _verified_events(
    conn: AsyncConnection, ids: list[str], boundary: dt.datetime, covered: int
) -> tuple[list[Any], list[str]]:
    """The events of the chains that are whole, intact, old and checkpointed; and those that do not verify.

    A chain that does not verify is kept: purging it would destroy the evidence of its tampering.
    """
    heads = {
        row.chain_id: (row.seq, row.hash)
        for row in await conn.execute(select(chain_heads).where(chain_heads.c.chain_id.in_(ids)))
    }
    by_chain: dict[str, list[Any]] = {chain_id: [] for chain_id in ids}
    for row in await conn.execute(
        select(audit_events)
        .where(audit_events.c.chain_id.in_(ids))
        .order_by(audit_events.c.chain_id, audit_events.c.seq)
    ):
        by_chain[row.chain_id].append(row)
    keep: list[Any] = []
    broken: list[str] = []
    for chain_id, rows in by_chain.items():
        if any(r.created_at >= boundary or r.id > covered for r in rows):
            continue  # an event arrived since the candidates were chosen: not old enough after all
        prev_hash, problem = GENESIS_HASH, not rows
        for expected_seq, row in enumerate(rows, start=1):
            if check_link(row, expected_seq, prev_hash) is not None:
                problem = True
                break
            prev_hash = row.hash
        if problem or heads.get(chain_id) != (len(rows), prev_hash):
            broken.append(chain_id)
            continue
        keep += rows
    keep.sort(key=lambda r: r.id)
    return keep, broken


async def _count_rows(conn: AsyncConnection, chains: list[str]) -> dict[str, int]:
    counts = {"requests": len(chains)}
    for name, table in _REQUEST_ROWS:
        query = select(func.count()).select_from(table).where(table.c.request_id.in_(chains))
        counts[name] = int((await conn.execute(query)).scalar_one())
    return counts


async def _record_purge(
    conn: AsyncConnection,
    *,
    events: list[Any],
    chain_count: int,
    boundary: dt.datetime,
    retention_days: int,
    checkpoint: dict[str, Any],
    sign: Signer,
    key_id: str,
) -> tuple[int, str]:
    """Write the signed purge record and every purged event's (id, chain, seq, time, hash) line."""
    last = (await conn.execute(select(func.max(audit_purges.c.number)))).scalar()
    number = int(last or 0) + 1
    hasher = hashlib.sha256()
    kept = []
    for e in events:  # in id order: the digest is defined over that order
        hasher.update(purged_event_line(e.id, e.chain_id, e.seq, e.created_at, e.hash))
        kept.append(
            {
                "event_id": e.id,
                "purge_number": number,
                "chain_id": e.chain_id,
                "seq": e.seq,
                "created_at": e.created_at,
                "hash": e.hash,
            }
        )
    record: dict[str, Any] = {
        "number": number,
        "purged_at": await db_now(conn),
        "boundary": boundary,
        "retention_days": retention_days,
        "checkpoint_number": int(checkpoint["number"]),
        "last_event_id": int(checkpoint["last_event_id"]),
        "chain_count": chain_count,
        "event_count": len(events),
        "digest": hasher.hexdigest(),
        "key_id": key_id,
    }
    record["signature"] = sign(purge_body(record))
    await conn.execute(audit_purges.insert(), record)
    await conn.execute(audit_purged_events.insert(), kept)
    return number, str(record["digest"])


async def _delete_request_rows(conn: AsyncConnection, chains: list[str]) -> dict[str, int]:
    """Delete what hangs off the requests (before the requests: foreign keys); counts per table."""
    rows = {"requests": len(chains)}  # deleted last, in _delete_chains; they are locked, so all go
    for name, table in _REQUEST_ROWS:
        rows[name] = (await conn.execute(delete(table).where(table.c.request_id.in_(chains)))).rowcount
    return rows


async def _delete_chains(
    conn: AsyncConnection, chains: list[str], number: int, *, expected_events: int
) -> None:
    """Delete the chains' events under the purge setting, then their heads and the requests."""
    # The trigger lets a DELETE through only under this setting, and only for rows whose hash is
    # recorded under the latest purge record, older than its boundary.
    await conn.execute(text("SELECT set_config('approvals.purge', :n, true)"), {"n": str(number)})
    removed = (await conn.execute(delete(audit_events).where(audit_events.c.chain_id.in_(chains)))).rowcount
    # Closed again at once: nothing else in this transaction may delete audit events.
    await conn.execute(text("SELECT set_config('approvals.purge', '', true)"))
    if removed != expected_events:
        # The heads are locked, so this cannot happen; if it ever does, roll the purge back.
        raise RuntimeError(f"purge {number}: deleted {removed} audit events, recorded {expected_events}")
    await conn.execute(delete(chain_heads).where(chain_heads.c.chain_id.in_(chains)))
    deleted = (await conn.execute(delete(requests).where(requests.c.id.in_(chains)))).rowcount
    if deleted != len(chains):
        raise RuntimeError(f"purge {number}: deleted {deleted} requests, expected {len(chains)}")
