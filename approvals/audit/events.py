"""The tamper-evident audit log: per-chain hash-linked events, appended inside the caller's transaction."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import DateTime, Text, cast, literal_column, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.findings_sql import MISSING, UNLINKED, UNSEALED, ChainFindings, chain_findings
from approvals.db import db_now, insert_ignoring_conflict
from approvals.tables import audit_events, chain_heads

GENESIS_HASH = "0" * 64
# A retention purge holds this advisory lock exclusively; verification holds it shared, so it never
# reads the log half-way through a purge.
PURGE_LOCK_ID = 0x41505247
_INSERT_EVENT = audit_events.insert()


# json.dumps with these arguments builds an encoder per call; this one is built once (same output).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# How _CANONICAL writes a string (ensure_ascii=False), for writing an event's body out directly.
_json_string = json.encoder.encode_basestring
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def canonical_json(value: Any) -> bytes:
    """The one byte form we hash: sorted keys, no whitespace, UTF-8."""
    return _CANONICAL.encode(value).encode()


def canonical_text(value: Any) -> str:
    """canonical_json as text. JSON columns are written this way, so an event's stored data is the
    very text its hash covers and the database can check the hash without decoding anything."""
    return _CANONICAL.encode(value)


def canonical_around(value: dict[str, Any], key: str) -> tuple[str, str]:
    """The canonical text of `value` with `key` set to a string, in two parts around that string:
    `before + json string + after` is canonical_text of the whole, for whatever string goes there.
    It lets the database fill in a value only it knows (a time) without re-encoding the rest."""
    rest = {k: v for k, v in value.items() if k != key}
    before = canonical_text({k: v for k, v in rest.items() if k < key})[:-1]
    after = canonical_text({k: v for k, v in rest.items() if k > key})[1:]
    return (before + ("," if len(before) > 1 else "") + _json_string(key) + ":"), (
        ("," if len(after) > 1 else "") + after
    )


def format_time(value: dt.datetime) -> str:
    """Timestamps inside hashes: UTC, microseconds, 'Z' (audit_sql.event_time_text writes the same)."""
    utc = value.astimezone(dt.UTC)
    if utc.year < 1000:  # strftime writes such a year unpadded, isoformat pads it: keep strftime's
        return utc.strftime(_TIME_FORMAT)
    # The same text as strftime(_TIME_FORMAT), at a fraction of the cost (verification formats
    # every event's time): isoformat() leaves out a zero microsecond and ends in +00:00.
    text = utc.isoformat()
    return (text[:26] if utc.microsecond else text[:19] + ".000000") + "Z"


def _event_body(
    chain_id: Any, seq: Any, kind: Any, actor: Any, data_json: str, created_at: str, prev_hash: Any
) -> bytes | None:
    """canonical_json of an event's body written out key by key (sorted), given its data already
    in canonical JSON; None unless every field has the plain type the columns give (then the
    caller encodes the body as a whole, so odd values still hash exactly as they always did)."""
    if type(seq) is not int or not (
        type(chain_id) is str and type(kind) is str and type(actor) is str and type(prev_hash) is str
    ):
        return None
    return (
        '{"actor":'
        + _json_string(actor)
        + ',"chain_id":'
        + _json_string(chain_id)
        + ',"created_at":'
        + _json_string(created_at)
        + ',"data":'
        + data_json
        + ',"kind":'
        + _json_string(kind)
        + ',"prev_hash":'
        + _json_string(prev_hash)
        + ',"seq":'
        + int.__repr__(seq)
        + "}"
    ).encode()


@dataclass(frozen=True)
class BodyParts:
    """An event's body (as _event_body writes it) in the parts around what the database fills in:
    `opening + time + DATA_KEY + data + before_prev + prev_hash + closing` (time and prev_hash bare)."""

    opening: str
    before_prev: str
    closing: str


# Between an event body's time and its data (BodyParts): a constant.
DATA_KEY = '","data":'


def body_parts(chain_id: str, seq: int, kind: str, actor: str) -> BodyParts:
    """The parts of an event's body its writer knows before the database has given it a time and
    (for a chain built in one statement) the hash of the event before it."""
    return BodyParts(
        opening='{"actor":'
        + _json_string(actor)
        + ',"chain_id":'
        + _json_string(chain_id)
        + ',"created_at":"',
        before_prev=',"kind":' + _json_string(kind) + ',"prev_hash":"',
        closing='","seq":' + int.__repr__(seq) + "}",
    )


# An event's body with its data as stored and its time as PostgreSQL writes it (see _stored_body).
_STORED_BODY = '{"actor":%s,"chain_id":%s,"created_at":"%s","data":%s,"kind":%s,"prev_hash":%s,"seq":%d}'


def _compact(stored: str) -> str:
    """JSON text as json.dumps writes it by default (", " and ": " between tokens), without those
    spaces: the canonical text when its keys are sorted and it escapes nothing (no backslash).

    The caller passes only valid JSON without a backslash, so every '"' opens or closes a string
    and the even pieces between them are what lies outside strings. Only spaces outside strings go,
    so the result always means the same JSON value as `stored`: a hash over it that matches the
    stored hash proves the event's content, whatever else might differ.
    """
    pieces = stored.split('"')
    # Outside strings there is no NUL in valid JSON (PostgreSQL text holds none at all), so it
    # joins those pieces for two replaces in C instead of a replace per piece.
    pieces[0::2] = "\x00".join(pieces[0::2]).replace(", ", ",").replace(": ", ":").split("\x00")
    return '"'.join(pieces)


def _stored_body(
    chain_id: str, seq: int, kind: str, actor: str, compacted: str, when: str, prev_hash: str
) -> bytes:
    """The bytes event_hash would hash, built from the row as PostgreSQL gives it cheaply: its data
    as stored, _compact-ed, and its time already formatted in UTC. Verification's fast path; it is
    only ever trusted when its SHA-256 matches the stored hash (see _compact), anything else is
    decided by event_hash itself. Raises TypeError for a value of another type than its column's."""
    if type(seq) is not int:  # "%d" would write a float or Decimal as event_hash never does
        raise TypeError(seq)
    return (
        _STORED_BODY
        % (
            _json_string(actor),
            _json_string(chain_id),
            when,
            compacted,
            _json_string(kind),
            _json_string(prev_hash),
            seq,
        )
    ).encode()


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
    when = format_time(created_at)
    body = _event_body(chain_id, seq, kind, actor, _CANONICAL.encode(data), when, prev_hash)
    if body is None:
        body = canonical_json(
            {
                "chain_id": chain_id,
                "seq": seq,
                "kind": kind,
                "actor": actor,
                "data": data,
                "created_at": when,
                "prev_hash": prev_hash,
            }
        )
    return hashlib.sha256(body).hexdigest()


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
    head_query = (
        select(chain_heads.c.seq, chain_heads.c.hash)
        .where(chain_heads.c.chain_id == chain_id)
        .with_for_update()
    )
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
        return ChainBreak(row.chain_id, row.seq, CONTENT_CHANGED)
    return None


CONTENT_CHANGED = "event content does not match its hash"
REMOVED_AFTER = "events after this point were removed"


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
        return ChainBreak(chain_id, expected_seq, REMOVED_AFTER)
    return None


@dataclass(frozen=True)
class VerifyReport:
    chains: int
    events: int
    first_break: ChainBreak | None

    @property
    def ok(self) -> bool:
        return self.first_break is None


# More events than this that PostgreSQL could not seal (a log written before JSON columns held
# canonical text) and verify_all re-checks the whole log in Python rather than row by row.
_RECHECK_LIMIT = 10_000


async def verify_all(conn: AsyncConnection, *, hash_in_database: bool = True) -> VerifyReport:
    """Recompute every chain, and check each chain's head row agrees.

    A chain whose events were deleted entirely but whose head row remains is reported too. The
    report names the first broken chain in chain order, at its first broken link in seq order.

    The database hashes every event where it lies and reports only what is out of place
    (approvals.audit.findings_sql); whatever it could not seal is re-checked here by the exact path.
    `hash_in_database=False` recomputes every hash in this process instead, for an auditor who
    does not want to rely on the database server's own functions.
    """
    await conn.execute(text("SELECT pg_advisory_xact_lock_shared(:id)"), {"id": PURGE_LOCK_ID})
    if hash_in_database:
        found = await chain_findings(conn, GENESIS_HASH, give_up_after=_RECHECK_LIMIT)
        if found is not None:
            return await _report_findings(conn, found)
    return await _verify_in_process(conn)


async def _report_findings(conn: AsyncConnection, found: ChainFindings) -> VerifyReport:
    """verify_all's report from what PostgreSQL found, after re-checking unsealed events here."""
    suspects: list[tuple[str, int]] = []  # unsealed events before each chain's first other finding
    for chain_id, (findings, _last, _head) in found.broken.items():
        for seq, _place, finding in findings:
            if finding != UNSEALED:
                break
            suspects.append((chain_id, seq))
    proven = await _recheck(conn, suspects)
    breaks: dict[str, ChainBreak] = {}
    for chain_id, (findings, (last_seq, last_hash), head) in found.broken.items():
        brk: ChainBreak | None = None
        for seq, place, finding in findings:
            if finding in (MISSING, UNLINKED) or (chain_id, seq) not in proven:
                # A MISSING event stands where `place` was due; the others are in their place.
                brk = _link_break(chain_id, seq, place, link_ok=finding != UNLINKED)
                break
        if brk is None and head is not None and head != (last_seq, last_hash):
            brk = ChainBreak(chain_id, int(last_seq) + 1, REMOVED_AFTER)
        if brk is not None:
            breaks[chain_id] = brk
    return await _report(conn, found.chains, found.events, breaks, found.head_only)


async def _report(
    conn: AsyncConnection, chains: int, events: int, breaks: dict[str, ChainBreak], head_only: list[str]
) -> VerifyReport:
    """The report naming the first broken chain in the database's order, or a chain removed whole."""
    first_break: ChainBreak | None = None
    if breaks:
        first_break = breaks[await _first_in_chain_order(conn, list(breaks))]
    elif head_only:
        first_break = ChainBreak(min(head_only), 1, "the whole chain was removed")
    return VerifyReport(chains=chains, events=events, first_break=first_break)


async def _recheck(conn: AsyncConnection, events: list[tuple[str, int]]) -> set[tuple[str, int]]:
    """Of these (chain, seq) events, those whose content matches their hash by the exact path."""
    matches = _ContentCheck()
    c = audit_events.c
    proven: set[tuple[str, int]] = set()
    for start in range(0, len(events), 1000):
        some = events[start : start + 1000]
        rows = await conn.execute(select(*_event_columns()).where(tuple_(c.chain_id, c.seq).in_(some)))
        proven.update((row[0], row[1]) for row in rows if matches(row))
    return proven


def _event_columns() -> tuple[Any, ...]:
    """What verification reads of an event: chain_id, seq, kind, actor, data, time as text (or None),
    time, prev_hash, hash.

    The JSON column is read as its text, and the time as its UTC text too (to_char's form is
    format_time's for years 1000-9999; NULL outside them, where the time comes as the aware datetime
    psycopg gives instead). That lets most events be hashed straight from what was read
    (_stored_body); the others, and any whose shortcut does not match, are decided by
    event_hash over the data as psycopg would decode it. Functions are named in pg_catalog so
    that nothing on the search path can stand in for them.
    """
    c = audit_events.c
    in_range = (
        "audit_events.created_at >= '1000-01-01 00:00:00+00'::pg_catalog.timestamptz"
        " AND audit_events.created_at < '10000-01-01 00:00:00+00'::pg_catalog.timestamptz"
    )
    return (
        c.chain_id,
        c.seq,
        c.kind,
        c.actor,
        cast(c.data, Text).label("data"),
        literal_column(
            f"CASE WHEN {in_range} THEN pg_catalog.to_char(pg_catalog.timezone('UTC', "
            """audit_events.created_at), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END""",
            Text,
        ).label("at_text"),
        literal_column(
            f"CASE WHEN {in_range} THEN NULL ELSE audit_events.created_at END",
            DateTime(timezone=True),
        ).label("created_at"),
        c.prev_hash,
        c.hash,
    )


class _ContentCheck:
    """Whether a row read with _event_columns hashes to its stored hash: the shortest sure way."""

    def __init__(self) -> None:
        # JSON text as stored -> its _compact form, or "" where the shortcut does not apply. Payloads
        # recur (policy decisions, final states), so many events need no work on their data at all.
        self._compacted: dict[Any, str] = {}

    def __call__(self, row: Any) -> bool:
        chain_id, seq, kind, actor, payload, when, created_at, link, digest = row
        compacted = self._compacted.get(payload)
        if compacted is None:
            # Only valid JSON (PostgreSQL's json type) without a backslash can be _compact-ed.
            compacted = ""
            if type(payload) is str and "\\" not in payload:
                try:
                    compacted = _compact(payload)
                except ValueError:  # not JSON as PostgreSQL keeps it (cannot be): no shortcut
                    pass
            if len(self._compacted) >= 50_000:
                self._compacted.clear()
            self._compacted[payload] = compacted
        if compacted and when is not None:
            try:
                body = _stored_body(chain_id, seq, kind, actor, compacted, when, link)
                if hashlib.sha256(body).hexdigest() == digest:
                    return True
            except TypeError:  # a value of another type than its column's (tampered)
                pass
        # The reference: event_hash over what psycopg would give for this row.
        if when is not None:
            created_at = dt.datetime.strptime(when, _TIME_FORMAT).replace(tzinfo=dt.UTC)
        return _hash_matches(row, json.loads(payload), created_at)


async def _verify_in_process(conn: AsyncConnection) -> VerifyReport:
    """verify_all with every hash recomputed here, in one pass over the log.

    The log is read in id order, which is the table's own order (a sequential read, where chain
    order makes the database visit a page per event), keeping each chain's place as it goes. Appends
    to a chain are serialised by its head row, so its ids ascend with its seqs; a chain whose events
    come in any other order (or with a gap) is read again at the end, in seq order.
    """
    # chain_id -> [head seq, head hash, next expected seq, hash to link to]; the expected seq is None
    # until the chain's first event, and 0 once the chain is broken or out of order.
    chains_by_id: dict[str, list[Any]] = {
        row.chain_id: [row.seq, row.hash, None, GENESIS_HASH]
        for row in await conn.execute(select(chain_heads))
    }
    c = audit_events.c
    event_columns = _event_columns()
    result = await conn.stream(select(*event_columns).order_by(c.id).execution_options(yield_per=5000))
    chains = events = 0
    breaks: dict[str, ChainBreak] = {}
    unordered: list[str] = []  # chains whose events are not in seq order (or have a gap) by id
    content_matches = _ContentCheck()

    async for partition in result.partitions():
        for row in partition:
            chain_id, seq, link, digest = row[0], row[1], row[7], row[8]
            events += 1
            state = chains_by_id.get(chain_id)
            if state is None:
                state = chains_by_id[chain_id] = [None, None, None, GENESIS_HASH]
            expected = state[2]
            if expected is None:
                expected = state[2] = 1
                chains += 1
            elif expected == 0:  # broken already, or to be read again
                continue
            if seq != expected:
                state[2] = 0
                unordered.append(chain_id)
            elif link != state[3]:
                state[2] = 0
                breaks[chain_id] = _link_break(chain_id, seq, expected, link_ok=False)
            elif not content_matches(row):
                state[2] = 0
                breaks[chain_id] = _link_break(chain_id, seq, expected, link_ok=True)
            else:
                state[2] = expected + 1
                # At its head (as is usual) the chain keeps the head's copy of the hash, not another.
                state[3] = state[1] if seq == state[0] and digest == state[1] else digest

    for start in range(0, len(unordered), 1000):
        again = await conn.stream(
            select(*event_columns)
            .where(c.chain_id.in_(unordered[start : start + 1000]))
            .order_by(c.chain_id, c.seq)
            .execution_options(yield_per=5000)
        )
        async for partition in again.partitions():
            for row in partition:
                chain_id, seq, link, digest = row[0], row[1], row[7], row[8]
                state = chains_by_id[chain_id]
                if state[2] == 0:  # its first event in seq order
                    state[2], state[3] = 1, GENESIS_HASH
                expected = state[2]
                if chain_id in breaks:
                    continue
                if seq != expected or link != state[3] or not content_matches(row):
                    breaks[chain_id] = _link_break(chain_id, seq, expected, link_ok=link == state[3])
                else:
                    state[2], state[3] = expected + 1, digest
        for chain_id in unordered[start : start + 1000]:
            if chain_id in breaks:
                chains_by_id[chain_id][2] = 0
    head_only: list[str] = []
    for chain_id, (head_seq, head_hash, expected, prev_hash) in chains_by_id.items():
        if expected is None:
            head_only.append(chain_id)
        elif expected and head_seq is not None and (head_seq != expected - 1 or head_hash != prev_hash):
            breaks[chain_id] = ChainBreak(chain_id, expected, REMOVED_AFTER)
    return await _report(conn, chains, events, breaks, head_only)


def _hash_matches(row: Any, data: Any, created_at: dt.datetime) -> bool:
    """The reference check of a verify_all row: event_hash over its decoded data and time."""
    chain_id, seq, kind, actor, *_, link, digest = row
    recomputed = event_hash(
        chain_id=chain_id, seq=seq, kind=kind, actor=actor, data=data, created_at=created_at, prev_hash=link
    )
    return bool(recomputed == digest)


def _link_break(chain_id: str, seq: Any, expected_seq: int, *, link_ok: bool) -> ChainBreak:
    """check_link's finding for an event that is not the next one, or does not link, or was changed."""
    if seq != expected_seq:
        return ChainBreak(chain_id, expected_seq, f"event {expected_seq} is missing")
    if not link_ok:
        return ChainBreak(chain_id, seq, "prev_hash does not match the event before it")
    return ChainBreak(chain_id, seq, CONTENT_CHANGED)


async def _first_in_chain_order(conn: AsyncConnection, chain_ids: list[str]) -> str:
    """The first of these chain ids in the database's order for them (its collation, which need
    not be Python's): the chain a read in chain order would have reached first."""
    c = audit_events.c
    while len(chain_ids) > 1:
        firsts = []
        for start in range(0, len(chain_ids), 1000):
            some = chain_ids[start : start + 1000]
            ordered = select(c.chain_id).where(c.chain_id.in_(some)).group_by(c.chain_id).order_by(c.chain_id)
            first = (await conn.execute(ordered.limit(1))).scalar()
            firsts.append(str(first) if first is not None else min(some))
        chain_ids = firsts
    return chain_ids[0]


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
