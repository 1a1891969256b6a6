"""Signed checkpoints over the whole audit log, so that removing entire chains is detected too.

Each checkpoint covers the events with ids after the previous checkpoint's last id, in id order, and
carries a running hash over the previous checkpoint's running hash and each covered event's hash, the
counts, and a signature by the service's checkpoint key. Signing is passed in: the domain stays free
of key handling. Two schemes form the running hash (the `scheme` column, signed from scheme 2 on):
SCHEME_STEPWISE, SHA-256 advanced one event at a time (checkpoints written before migration 0008),
and SCHEME_DIGEST, one SHA-256 over the previous running hash and every covered hash concatenated,
which PostgreSQL can compute where the log lies (approvals.audit.findings_sql) when verifying.

A retention purge (approvals/audit/retention.py) removes old request chains but never a checkpoint: it keeps
each removed event's id and hash in `audit_purged_events`, bound by a purge record signed with the same
key. Verification recomputes every running hash over the surviving events plus those recorded hashes,
so a checkpoint signed (or exported) before a purge still verifies exactly, while an event removed any
other way is still missing from the count.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncResult

from approvals.audit.events import GENESIS_HASH, PURGE_LOCK_ID, canonical_json, format_time
from approvals.audit.findings_sql import checkpoint_digests
from approvals.db import db_now
from approvals.tables import audit_checkpoints, audit_events, audit_purged_events, audit_purges

# Events younger than this are left for the next checkpoint: a transaction still in flight may hold
# a lower id than one already committed, and must not be skipped for ever.
DEFAULT_LAG = dt.timedelta(seconds=30)
CHECKPOINT_LOCK_ID = 0x41434B50
# A heartbeat is written when the newest checkpoint is at least this share of an interval old: a
# replica's tick then always finds one due within 1.75 intervals of the last, under the two intervals
# verification reports as a gap, while replicas ticking out of step do not write one each.
HEARTBEAT_SHARE = 0.75
# DESIGN section 6: retention is at least 365 days. Verification holds every purge record to it too,
# so even a purge run with a bad setting (or a forged one) cannot pass for a legitimate one.
MIN_RETENTION = dt.timedelta(days=365)
RETENTION_CHAIN = "retention"
PURGE_EVENT_KIND = "retention_purged"

Signer = Callable[[bytes], str]
Verifier = Callable[[bytes, str], bool]

SCHEME_STEPWISE = 1  # running = SHA-256(running + hash), for each covered event in id order
SCHEME_DIGEST = 2  # running = SHA-256(previous running + every covered hash, in id order, concatenated)
# A scheme-2 checkpoint covering more events than this is recomputed here, streaming, rather than by
# the database, which would hold all its hashes in one value (64 bytes each) to hash them.
DATABASE_DIGEST_LIMIT = 1_000_000


def checkpoint_body(row: Any) -> bytes:
    """The exact bytes that are signed: every field of the checkpoint but the signature.

    Scheme 1 checkpoints were signed before the scheme was a field, so it is named from scheme 2 on.
    """
    body = {
        "number": row["number"],
        "created_at": format_time(row["created_at"]),
        "first_event_id": row["first_event_id"],
        "last_event_id": row["last_event_id"],
        "event_count": row["event_count"],
        "total_events": row["total_events"],
        "running_hash": row["running_hash"],
        "key_id": row["key_id"],
    }
    scheme = row.get("scheme", SCHEME_STEPWISE)
    if scheme != SCHEME_STEPWISE:
        body["scheme"] = scheme
    return canonical_json(body)


class _Running:
    """A running hash being advanced over event hashes under one scheme."""

    def __init__(self, start: str, scheme: int) -> None:
        self.scheme, self._value = scheme, start
        self._digest = hashlib.sha256(start.encode()) if scheme == SCHEME_DIGEST else None

    def add(self, event_hash: str) -> None:
        if self._digest is not None:
            self._digest.update(event_hash.encode())
        else:
            self._value = hashlib.sha256((self._value + event_hash).encode()).hexdigest()

    def value(self) -> str:
        return self._digest.hexdigest() if self._digest is not None else self._value


async def _running_hash(conn: AsyncConnection, start: str, after_id: int, up_to_id: int) -> tuple[str, int]:
    running, count = _Running(start, SCHEME_DIGEST), 0
    result = await conn.stream(
        select(audit_events.c.hash)
        .where(audit_events.c.id > after_id, audit_events.c.id <= up_to_id)
        .order_by(audit_events.c.id)
        .execution_options(yield_per=10_000)
    )
    async for partition in result.partitions():
        for row in partition:
            running.add(row.hash)
        count += len(partition)
    return running.value(), count


def _merged_hashes(after_id: int, up_to_id: int) -> Any:
    """(id, hash) of surviving events and purged events' recorded hashes in (after_id, up_to_id], in id order."""
    live = select(audit_events.c.id.label("id"), audit_events.c.hash.label("hash")).where(
        audit_events.c.id > after_id, audit_events.c.id <= up_to_id
    )
    purged = select(
        audit_purged_events.c.event_id.label("id"), audit_purged_events.c.hash.label("hash")
    ).where(audit_purged_events.c.event_id > after_id, audit_purged_events.c.event_id <= up_to_id)
    merged = union_all(live, purged)
    return merged.order_by(merged.selected_columns.id).execution_options(yield_per=10_000)


async def _running_hash_with_purged(
    conn: AsyncConnection, start: str, after_id: int, up_to_id: int, scheme: int
) -> tuple[str, int, int | None]:
    """The running hash over surviving events and purged events' recorded hashes, merged in id order.

    One statement, so a purge committing meanwhile is seen entirely or not at all. The third value is
    the first id found in both tables (a purge record claiming an event that is still there), if any.
    """
    result = await conn.stream(_merged_hashes(after_id, up_to_id))
    try:
        return await _MergedHashes(result).running_hash(_Running(start, scheme), up_to_id)
    finally:
        await result.close()


class _MergedHashes:
    """A cursor over _merged_hashes rows that hands them out checkpoint by checkpoint."""

    def __init__(self, result: AsyncResult[Any]) -> None:
        self._partitions: AsyncIterator[Sequence[Any]] = result.partitions().__aiter__()
        self._rows: Sequence[Any] = ()
        self._at = 0

    async def running_hash(self, running: _Running | None, up_to_id: int) -> tuple[str, int, int | None]:
        """Advance `running` over the next rows with ids up to `up_to_id`: (hash, count, id in both).
        With None the rows are only passed over (a checkpoint the database recomputed)."""
        count, previous_id, both = 0, None, None
        add = running.add if running is not None else None
        while True:
            rows, index = self._rows, self._at
            for index in range(self._at, len(rows)):
                row_id, digest = rows[index]
                if row_id > up_to_id:
                    break
                if row_id == previous_id:
                    both = int(row_id)
                    break
                if add is not None:
                    add(digest)
                count, previous_id = count + 1, row_id
            else:
                try:
                    self._rows, self._at = await self._partitions.__anext__(), 0
                    continue
                except StopAsyncIteration:
                    self._rows, index = (), 0
            self._at = index  # where the next checkpoint's range starts
            return (running.value() if running is not None else ""), count, both


def _one_pass(rows: list[dict[str, Any]]) -> bool:
    """True when checkpoints 1..n cover consecutive id ranges from 0 (as they always should): then one
    ordered read of the log serves them all, instead of one query per checkpoint."""
    after_id = 0
    for number, row in enumerate(rows, start=1):
        first, last = int(row["first_event_id"]), int(row["last_event_id"])
        if int(row["number"]) != number or first != after_id or last < first:
            return False
        after_id = last
    return True


async def create_checkpoint(
    conn: AsyncConnection,
    *,
    sign: Signer,
    key_id: str,
    lag: dt.timedelta = DEFAULT_LAG,
    interval: dt.timedelta | None = None,
) -> dict[str, Any] | None:
    """Sign everything appended since the last checkpoint (older than `lag`).

    With nothing new: None, unless an `interval` is given and the newest checkpoint is at least
    HEARTBEAT_SHARE of it old; then a heartbeat, a checkpoint of no events (its running hash is still
    the scheme's: SHA-256 over the previous one). Heartbeats make time visible: a log rolled back to an
    older checkpoint then shows a gap where the removed ones stood (see checkpoint_gaps). An interval
    of 0 always writes one.
    """
    await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": CHECKPOINT_LOCK_ID})
    previous = await latest_checkpoint(conn)
    after_id = int(previous["last_event_id"]) if previous else 0
    now = await db_now(conn)
    last_id = (
        await conn.execute(
            select(func.max(audit_events.c.id)).where(
                audit_events.c.id > after_id, audit_events.c.created_at <= now - lag
            )
        )
    ).scalar()
    if last_id is None and not _heartbeat_due(previous, now, interval):
        return None
    last_id = after_id if last_id is None else int(last_id)
    start = previous["running_hash"] if previous else GENESIS_HASH
    running, count = await _running_hash(conn, start, after_id, last_id)
    row: dict[str, Any] = {
        "number": (int(previous["number"]) + 1) if previous else 1,
        "created_at": now,
        "first_event_id": after_id,
        "last_event_id": last_id,
        "event_count": count,
        "total_events": (int(previous["total_events"]) if previous else 0) + count,
        "running_hash": running,
        "key_id": key_id,
        "scheme": SCHEME_DIGEST,
    }
    row["signature"] = sign(checkpoint_body(row))
    await conn.execute(audit_checkpoints.insert(), row)
    return row


def _heartbeat_due(previous: dict[str, Any] | None, now: dt.datetime, interval: dt.timedelta | None) -> bool:
    """Whether an empty checkpoint is owed. Every replica runs the job each interval (taking turns on
    the lock): one finding a checkpoint younger than most of an interval leaves it to the one that
    wrote it, so there is about one heartbeat per interval however many replicas run."""
    if interval is None:
        return False
    return previous is None or now - previous["created_at"] >= interval * HEARTBEAT_SHARE


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
    conn: AsyncConnection,
    *,
    verify: Verifier,
    exported: dict[str, Any] | None = None,
    hash_in_database: bool = True,
) -> tuple[int, CheckpointProblem | None]:
    """Check every checkpoint's signature, links and running hash against the events it covers.

    `exported` is a checkpoint kept outside the database: the stored one must be identical to it.
    Scheme-2 running hashes are computed by the database where the log lies, while this process
    checks the signatures; `hash_in_database=False` computes them here as well.
    """
    # A purge deletes events and records their hashes in one transaction; while we read, it waits.
    await conn.execute(text("SELECT pg_advisory_xact_lock_shared(:id)"), {"id": PURGE_LOCK_ID})
    rows = [
        dict(r)
        for r in (
            await conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.number))
        ).mappings()
    ]
    purge_problem = await verify_purges(conn, verify=verify, checkpoints=rows)
    if purge_problem is not None:
        return len(rows), purge_problem
    one_pass = bool(rows) and _one_pass(rows)
    # number -> (events, running hash) as the database computed them, while the signatures are
    # checked here meanwhile (they cost this process more than anything else verification does).
    computed: dict[int, tuple[int, str]] = {}
    both = None
    if hash_in_database and one_pass:
        query = asyncio.ensure_future(checkpoint_digests(conn, GENESIS_HASH, limit=DATABASE_DIGEST_LIMIT))
        try:
            signed = await _signatures(rows, verify)
        finally:
            digests, both = await query
        computed = {number: (events, digest) for number, events, digest in digests}
    else:
        signed = await _signatures(rows, verify)
    # Normally one statement reads every covered event the database did not (a purge committing
    # meanwhile is seen entirely or not at all); checkpoints that do not follow one another (forged,
    # or rows removed) are checked one range at a time, as they come.
    result = None
    rest = [int(r["last_event_id"]) for r in rows if int(r["number"]) not in computed]
    if one_pass and rest:
        result = await conn.stream(_merged_hashes(0, max(rest)))
    try:
        return await _check_checkpoints(conn, rows, signed, exported, result, computed, both)
    finally:
        if result is not None:
            await result.close()


async def _signatures(rows: list[dict[str, Any]], verify: Verifier) -> list[bool]:
    """Whether each checkpoint's signature verifies, letting the event loop run between batches (the
    database's answer, or another connection's, comes in meanwhile)."""
    signed = []
    for index, row in enumerate(rows):
        signed.append(verify(checkpoint_body(row), row["signature"]))
        if index % 256 == 255:
            await asyncio.sleep(0)
    return signed


async def _check_checkpoints(
    conn: AsyncConnection,
    rows: list[dict[str, Any]],
    signed: list[bool],
    exported: dict[str, Any] | None,
    result: AsyncResult[Any] | None,
    computed: dict[int, tuple[int, str]],
    both_in_database: int | None,
) -> tuple[int, CheckpointProblem | None]:
    merged = _MergedHashes(result) if result is not None else None
    running, after_id, total = GENESIS_HASH, 0, 0
    for expected_number, row in enumerate(rows, start=1):
        number = int(row["number"])
        if number != expected_number:
            return len(rows), CheckpointProblem(expected_number, f"checkpoint {expected_number} is missing")
        if not signed[expected_number - 1]:
            return len(rows), CheckpointProblem(
                number, "signature does not verify (forged or altered checkpoint)"
            )
        if int(row["first_event_id"]) != after_id:
            return len(rows), CheckpointProblem(number, "does not continue from the previous checkpoint")
        last_id, scheme = int(row["last_event_id"]), int(row.get("scheme", SCHEME_STEPWISE))
        both: int | None = None
        if number in computed:
            count, recomputed = computed[number]
            if both_in_database is not None and after_id < both_in_database <= last_id:
                both = both_in_database
            if merged is not None:
                await merged.running_hash(None, last_id)
        elif merged is not None:
            recomputed, count, both = await merged.running_hash(_Running(running, scheme), last_id)
        else:
            recomputed, count, both = await _running_hash_with_purged(
                conn, running, after_id, last_id, scheme
            )
        if both is not None:
            return len(rows), CheckpointProblem(
                number, f"event {both} is recorded as purged but is still in the log"
            )
        total += count
        if count != int(row["event_count"]) or total != int(row["total_events"]):
            return len(rows), CheckpointProblem(
                number,
                f"{int(row['event_count']) - count} events it covers were removed (ids {after_id + 1}-{row['last_event_id']})",
            )
        if recomputed != row["running_hash"]:
            return len(rows), CheckpointProblem(number, "events it covers were changed or reordered")
        running, after_id = row["running_hash"], last_id
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


def purge_body(row: Any) -> bytes:
    """The exact bytes of a purge record that are signed; `type` keeps them apart from checkpoints'."""
    return canonical_json(
        {
            "type": "audit_purge",
            "number": row["number"],
            "purged_at": format_time(row["purged_at"]),
            "boundary": format_time(row["boundary"]),
            "retention_days": row["retention_days"],
            "checkpoint_number": row["checkpoint_number"],
            "last_event_id": row["last_event_id"],
            "chain_count": row["chain_count"],
            "event_count": row["event_count"],
            "digest": row["digest"],
            "key_id": row["key_id"],
        }
    )


def purged_event_line(event_id: int, chain_id: str, seq: int, created_at: dt.datetime, digest: str) -> bytes:
    """One purged event as it enters a purge record's digest (the lines are hashed in id order)."""
    return canonical_json([event_id, chain_id, seq, format_time(created_at), digest]) + b"\n"


async def verify_purges(
    conn: AsyncConnection, *, verify: Verifier, checkpoints: list[dict[str, Any]]
) -> CheckpointProblem | None:
    """Check every purge record: signed, numbered without gaps, old enough, and matching what it kept.

    For each record: the signature; the boundary at least MIN_RETENTION before the purge; the
    checkpoint it relied on exists, predates it and ends where it says; its kept (id, hash) rows
    reproduce its digest and counts, lie within that checkpoint, are older than the boundary and
    are whole chains (seq 1..n); and the `retention` chain holds its event with the same digest.
    A problem is reported under the number of the checkpoint the purge relied on.
    """
    purges = [
        dict(r) for r in (await conn.execute(select(audit_purges).order_by(audit_purges.c.number))).mappings()
    ]
    if not purges:
        return None
    by_number = {int(c["number"]): c for c in checkpoints}
    announced: dict[int, Any] = {}
    for event in await conn.execute(
        select(audit_events.c.data).where(
            audit_events.c.chain_id == RETENTION_CHAIN, audit_events.c.kind == PURGE_EVENT_KIND
        )
    ):
        # Read defensively: this runs before the chains are checked, on data that may be tampered.
        if isinstance(event.data, dict) and isinstance(event.data.get("purge"), int):
            announced[event.data["purge"]] = event.data.get("digest")
    for expected_number, purge in enumerate(purges, start=1):
        number, at = int(purge["number"]), int(purge["checkpoint_number"])

        def problem(text: str, number: int = number, at: int = at) -> CheckpointProblem:
            return CheckpointProblem(at, f"purge {number}: {text}")

        if number != expected_number:
            return problem(f"purge record {expected_number} is missing")
        if not verify(purge_body(purge), purge["signature"]):
            return problem("signature does not verify (forged or altered purge record)")
        retention = dt.timedelta(days=int(purge["retention_days"]))
        if retention < MIN_RETENTION or purge["boundary"] > purge["purged_at"] - retention:
            return problem(
                f"its boundary is less than its retention ({retention.days} days, at least "
                f"{MIN_RETENTION.days}) before the purge"
            )
        covering = by_number.get(at)
        if covering is None or int(covering["last_event_id"]) != int(purge["last_event_id"]):
            return problem(f"the checkpoint it relied on ({at}) is missing or different")
        if covering["created_at"] > purge["purged_at"]:
            return problem(f"the checkpoint it relied on ({at}) was signed after the purge")
        if announced.get(number) != purge["digest"]:
            return problem(f"its event in the {RETENTION_CHAIN!r} chain is missing or different")
        found = await _check_purged_events(conn, purge)
        if found is not None:
            return problem(found)
    return None


async def _check_purged_events(conn: AsyncConnection, purge: dict[str, Any]) -> str | None:
    """Recompute a purge record's digest and counts from the (id, hash) rows it kept."""
    hasher, count = hashlib.sha256(), 0
    seqs: dict[str, list[int]] = {}
    result = await conn.stream(
        select(audit_purged_events)
        .where(audit_purged_events.c.purge_number == purge["number"])
        .order_by(audit_purged_events.c.event_id)
        .execution_options(yield_per=10_000)
    )
    async for row in result:
        if row.event_id > purge["last_event_id"]:
            return f"event {row.event_id} was not under a signed checkpoint when purged"
        if row.created_at >= purge["boundary"]:
            return f"event {row.event_id} is younger than the purge boundary"
        hasher.update(purged_event_line(row.event_id, row.chain_id, row.seq, row.created_at, row.hash))
        seqs.setdefault(row.chain_id, []).append(row.seq)
        count += 1
    if count != int(purge["event_count"]) or len(seqs) != int(purge["chain_count"]):
        return (
            f"it recorded {purge['event_count']} events of {purge['chain_count']} chains; "
            f"{count} events of {len(seqs)} chains are kept"
        )
    if hasher.hexdigest() != purge["digest"]:
        return "the purged events' recorded hashes were changed"
    for chain_id, numbers in seqs.items():
        if sorted(numbers) != list(range(1, len(numbers) + 1)):
            return f"chain {chain_id} was not purged whole"
    return None


# How many gaps verification names; beyond that it counts them.
MOST_GAPS_NAMED = 20


@dataclass(frozen=True)
class CheckpointGap:
    """A stretch longer than allowed without a checkpoint: after checkpoint `after` (None: no
    checkpoint at all) until checkpoint `until` (None: until the time verification looks from)."""

    after: int | None
    until: int | None
    length: dt.timedelta


@dataclass(frozen=True)
class CheckpointTimeline:
    """When checkpoints were signed, as seen from `as_of`: the newest one's age and every gap."""

    as_of: dt.datetime
    newest: int | None
    newest_age: dt.timedelta | None
    gaps: list[CheckpointGap]
    more_gaps: int  # gaps beyond MOST_GAPS_NAMED, counted, not listed


async def checkpoint_timeline(
    conn: AsyncConnection,
    *,
    longest: dt.timedelta,
    as_of: dt.datetime | None = None,
    since: dt.datetime | None = None,
) -> CheckpointTimeline:
    """Every stretch longer than `longest` between consecutive checkpoints, and from the newest to
    `as_of` (default: the database's clock now). With heartbeats (create_checkpoint's interval) the
    service leaves none while it runs; a gap is a time it was down, or checkpoints removed. A gap that
    began before `since` is not reported: checkpoints written before heartbeats left one whenever the
    log was idle."""
    when = as_of if as_of is not None else await db_now(conn)
    gaps: list[CheckpointGap] = []
    more = 0
    previous: tuple[int, dt.datetime] | None = None
    result = await conn.stream(
        select(audit_checkpoints.c.number, audit_checkpoints.c.created_at)
        .order_by(audit_checkpoints.c.number)
        .execution_options(yield_per=10_000)
    )
    async for number, created_at in result:
        began_in_view = since is None or (previous is not None and previous[1] >= since)
        if previous is not None and began_in_view and created_at - previous[1] > longest:
            if len(gaps) < MOST_GAPS_NAMED:
                gaps.append(CheckpointGap(previous[0], int(number), created_at - previous[1]))
            else:
                more += 1
        previous = (int(number), created_at)
    if previous is None:
        return CheckpointTimeline(when, None, None, [], 0)
    age = when - previous[1]
    if age > longest:
        gaps.append(CheckpointGap(previous[0], None, age))  # always named: it is the one that matters
    return CheckpointTimeline(when, previous[0], age, gaps, more)
