"""The audit checks PostgreSQL computes where the log lies, so verification reads findings, not the log.

Verifying in Python means shipping every event row to the client and hashing it there; PostgreSQL
can hash the very same bytes itself (`sha256`, in C, in parallel workers) because an event's data is
stored as the canonical JSON text its hash covers (app.database writes JSON columns that way). These
statements return only what is out of place, and the caller (approvals.audit.events.verify_all,
approvals.audit.checkpoints.verify_checkpoints) turns it into findings, re-checking in Python whatever
the database could not seal (older rows stored in another JSON layout, odd values): a hash that
matches here proves the row, anything else is decided by the exact Python path.

Every function is named in pg_catalog, so nothing on a search path can stand in for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


def _string(column: str) -> str:
    """A text column as a JSON string: quoted as it is when it holds no quote or backslash (which
    is how Python writes such a string, control characters aside: those it escapes, and as a JSON
    text can never hold one raw, such a body matches no stored hash and goes to the exact path),
    else by to_json. The shortcut spares to_json for the identifiers nearly every event holds."""
    return (
        f"CASE WHEN pg_catalog.strpos({column}, '\"') = 0 AND pg_catalog.strpos({column}, '\\') = 0 "
        f"THEN pg_catalog.concat('\"', {column}, '\"') ELSE pg_catalog.to_json({column})::text END"
    )


def event_time_text(column: str) -> str:
    """SQL for a timestamptz as approvals.audit.events.format_time writes it (years 1000 on)."""
    return f"""pg_catalog.to_char(pg_catalog.timezone('UTC', {column}), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


# An event's body, exactly as approvals.audit.events.event_hash writes it (keys sorted, no spaces), built from
# the row: strings JSON-encoded, the time in event_hash's form, the data as stored.
_EVENT_BODY = f"""pg_catalog.concat(
    '{{"actor":', {_string("e.actor")},
    ',"chain_id":', {_string("e.chain_id")},
    ',"created_at":"', {event_time_text("e.created_at")},
    '","data":', e.data,
    ',"kind":', {_string("e.kind")},
    ',"prev_hash":', {_string("e.prev_hash")},
    ',"seq":', e.seq, '}}')"""

_SEALED = (
    f"pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to({_EVENT_BODY}, 'UTF8')), 'hex') = e.hash"
)

# Findings per event, in seq order within each chain: 0 = not the next seq (one is missing),
# 1 = prev_hash does not link to the event before, 2 = its hash did not match the body built here.
MISSING, UNLINKED, UNSEALED = 0, 1, 2

# One pass over every event and every chain head. Heads ride along in the same sort (is_head) so
# that a chain's head is compared with its last event without a join, and a head with no events
# at all shows up as a chain of none. The window is ordered by `sealed` after `seq` (which is
# unique within a chain, so the order is the same): that makes PostgreSQL compute the hash below
# the sort, in its parallel workers, instead of in the leader above it. GROUPING SETS adds the
# totals row to the same pass. Only chains with a finding come back, and the totals. Chains are told
# apart bytewise (COLLATE "C": a third quicker to sort than by the database's collation); the caller
# orders what it reports in the database's own order.
_CHAIN_FINDINGS = text(
    f"""
WITH log AS (
    SELECT e.chain_id COLLATE "C" AS chain_id, false AS is_head, e.seq, e.prev_hash, e.hash, {_SEALED} AS sealed
    FROM audit_events AS e
    UNION ALL
    SELECT h.chain_id COLLATE "C", true, h.seq, NULL, h.hash, true FROM chain_heads AS h
), checked AS (
    SELECT l.chain_id, l.is_head, l.seq, l.hash, l.sealed,
           pg_catalog.row_number() OVER w AS place,
           l.prev_hash = COALESCE(pg_catalog.lag(l.hash) OVER w, :genesis) AS linked,
           pg_catalog.lead(l.seq) OVER w IS NULL AS last
    FROM log AS l
    WINDOW w AS (PARTITION BY l.chain_id, l.is_head ORDER BY l.seq, l.sealed)
), findings AS (
    SELECT *, CASE WHEN seq <> place THEN {MISSING} WHEN NOT linked THEN {UNLINKED} ELSE {UNSEALED} END AS finding
    FROM checked
)
SELECT chain_id,
       GROUPING(chain_id) AS is_total,
       pg_catalog.count(*) FILTER (WHERE NOT is_head) AS events,
       pg_catalog.count(*) FILTER (WHERE last AND NOT is_head) AS chains,
       pg_catalog.max(seq) FILTER (WHERE last AND NOT is_head) AS last_seq,
       pg_catalog.max(hash) FILTER (WHERE last AND NOT is_head) AS last_hash,
       pg_catalog.max(seq) FILTER (WHERE is_head) AS head_seq,
       pg_catalog.max(hash) FILTER (WHERE is_head) AS head_hash,
       pg_catalog.array_agg(ARRAY[seq, place, finding])
           FILTER (WHERE NOT is_head AND (seq <> place OR NOT linked OR NOT sealed)) AS findings
FROM findings
GROUP BY GROUPING SETS ((chain_id), ())
HAVING GROUPING(chain_id) = 1
    OR pg_catalog.count(*) FILTER (WHERE NOT is_head) = 0
    OR pg_catalog.count(*) FILTER (WHERE NOT is_head AND (seq <> place OR NOT linked OR NOT sealed)) > 0
    OR pg_catalog.max(seq) FILTER (WHERE is_head) IS DISTINCT FROM pg_catalog.max(seq) FILTER (WHERE last AND NOT is_head)
    OR pg_catalog.max(hash) FILTER (WHERE is_head) IS DISTINCT FROM pg_catalog.max(hash) FILTER (WHERE last AND NOT is_head)
ORDER BY GROUPING(chain_id) DESC
LIMIT :most
"""  # noqa: S608 (built from this module's constants only)
)

# The planner prices sha256 like any cheap function; told that parallel workers cost nothing to
# start, it hashes in them. The sort of (chain, seq, hashes) is about 150 bytes an event: up to
# this much memory (per worker) it stays in memory, beyond it spills to disk, slower but the same.
_SESSION_SETTINGS = (
    "SET LOCAL parallel_setup_cost = 0",
    "SET LOCAL parallel_tuple_cost = 0",
    "SET LOCAL work_mem = '256MB'",
)


async def use_parallel_workers(conn: AsyncConnection) -> None:
    """_SESSION_SETTINGS for the rest of this transaction (PostgreSQL only): for statements that
    read the whole log, so that they read and hash (or aggregate) it in parallel workers."""
    for setting in _SESSION_SETTINGS:
        await conn.execute(text(setting))


@dataclass
class ChainFindings:
    """What the database found: totals, and per chain with a finding, its details."""

    events: int = 0
    chains: int = 0
    # chain_id -> sorted [(seq, place, finding)], last event (seq, hash), head (seq, hash) or None
    broken: dict[str, tuple[list[tuple[int, int, int]], tuple[Any, Any], tuple[Any, Any] | None]] = field(
        default_factory=dict
    )
    head_only: list[str] = field(default_factory=list)
    unsealed: int = 0


async def chain_findings(
    conn: AsyncConnection, genesis: str, *, give_up_after: int, most_chains: int = 20_000
) -> ChainFindings | None:
    """Every chain checked in one statement. None once more than `give_up_after` events could not be
    sealed here (a log written in an older JSON layout) or more than `most_chains` chains have a
    finding (a log tampered with wholesale): the caller then verifies in Python, which needs no list
    of everything that is wrong to name the first."""
    await use_parallel_workers(conn)
    found = ChainFindings()
    # Read at once, not through a server-side cursor: PostgreSQL runs no parallel workers for those.
    rows = await conn.execute(_CHAIN_FINDINGS, {"genesis": genesis, "most": most_chains + 2})
    for row in rows:
        if row.is_total:  # first (ORDER BY)
            found.events, found.chains = int(row.events), int(row.chains)
            continue
        if len(found.broken) + len(found.head_only) >= most_chains:
            return None
        if not row.events:
            found.head_only.append(row.chain_id)
            continue
        findings = sorted((int(s), int(p), int(f)) for s, p, f in (row.findings or []))
        found.unsealed += sum(1 for _s, _p, f in findings if f == UNSEALED)
        if found.unsealed > give_up_after:
            return None
        head = None if row.head_seq is None else (row.head_seq, row.head_hash)
        found.broken[row.chain_id] = (findings, (row.last_seq, row.last_hash), head)
    return found


# Every scheme-2 checkpoint's event count and running hash, recomputed from the hashes of the events
# it covers (those still in the log and those a purge recorded), in id order. Each checkpoint starts
# from the running hash stored in the one before it, as the caller checks them.
_CHECKPOINT_DIGESTS = text(
    """
SELECT c.number, x.events,
       pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
           pg_catalog.concat(c.start, x.hashes), 'UTF8')), 'hex') AS digest
FROM (
    SELECT number, scheme, event_count, first_event_id, last_event_id,
           pg_catalog.lag(running_hash, 1, :genesis) OVER (ORDER BY number) AS start
    FROM audit_checkpoints
) AS c
CROSS JOIN LATERAL (
    SELECT pg_catalog.count(*) AS events, pg_catalog.string_agg(u.hash, '' ORDER BY u.id) AS hashes
    FROM (
        SELECT id, hash FROM audit_events WHERE id > c.first_event_id AND id <= c.last_event_id
        UNION ALL
        SELECT event_id, hash FROM audit_purged_events
        WHERE event_id > c.first_event_id AND event_id <= c.last_event_id
    ) AS u
) AS x
WHERE c.scheme = 2 AND c.event_count <= :limit
ORDER BY c.number
"""
)

# The first event that a purge record claims but that is still in the log (it would count twice).
_FIRST_IN_BOTH = text(
    "SELECT pg_catalog.min(p.event_id) FROM audit_purged_events AS p JOIN audit_events AS e ON e.id = p.event_id"
)


async def checkpoint_digests(
    conn: AsyncConnection, genesis: str, *, limit: int
) -> tuple[list[tuple[int, int, str]], int | None]:
    """(number, events, running hash) of every scheme-2 checkpoint covering at most `limit` events,
    and the first event id both in the log and among purged events' recorded hashes, if any."""
    rows = await conn.execute(_CHECKPOINT_DIGESTS, {"genesis": genesis, "limit": limit})
    digests = [(int(number), int(events), str(digest)) for number, events, digest in rows]
    both = (await conn.execute(_FIRST_IN_BOTH)).scalar()
    return digests, None if both is None else int(both)
