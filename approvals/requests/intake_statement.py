"""A new request in one PostgreSQL statement: its row, deliveries, hash-chained events and chain head.

Intake is the hottest path there is, and every round trip costs the service more CPU than the
statement itself. Audit times come from the database's clock, and an event's hash covers its time,
so hashing in Python needs the clock first: one round trip more. Here PostgreSQL reads its clock
and hashes the events where it writes them: Python sends each event's body in the parts it knows
(approvals.audit.events.body_parts, the same text approvals.audit.events.event_hash hashes) and PostgreSQL puts
in the time, the request's expiry and each previous event's hash, and takes `sha256` of the whole.
Verification rebuilds every body from the stored row independently (in Python with
`--in-process`), so a body built differently here could not go unnoticed.

Every function is named in pg_catalog, so nothing on a search path can stand in for it.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, bindparam, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import String

from approvals.audit.events import (
    DATA_KEY,
    GENESIS_HASH,
    NewEvent,
    body_parts,
    canonical_around,
    canonical_text,
)
from approvals.audit.findings_sql import event_time_text
from approvals.db import UTCDateTime, without_length
from approvals.delivery.outbox import TIME_COLUMNS
from approvals.tables import audit_events, chain_heads, outbox, requests


class _Expiry:
    """Stands in an event's data for the request's expiry, which only the database knows yet."""

    def __repr__(self) -> str:
        return "EXPIRES_AT"


EXPIRES_AT: Any = _Expiry()

# A request's columns this statement fills from the database's clock.
REQUEST_TIME_COLUMNS = ("created_at", "expires_at", "decided_at", "next_reminder_at")


def isoformat_text(column: str) -> str:
    """SQL for a timestamptz as Python's isoformat() writes it in UTC (no fraction when it is zero)."""
    utc = f"pg_catalog.timezone('UTC', {column})"
    return f"""pg_catalog.concat(pg_catalog.to_char({utc}, 'YYYY-MM-DD"T"HH24:MI:SS'),
        CASE WHEN pg_catalog.to_char({utc}, 'US') = '000000' THEN '' ELSE pg_catalog.to_char({utc}, '.US') END,
        '+00:00')"""


# The clock read once; the expiry `:lifetime` seconds after it; both as text the way the hashed
# bodies write them: event times as format_time, the expiry as the isoformat() Python would write.
_CLOCK = f"""clock AS MATERIALIZED (
    SELECT c.now, c.now + pg_catalog.make_interval(secs => CAST(:lifetime AS integer)) AS expires_at
    FROM (SELECT pg_catalog.clock_timestamp() AS now) AS c
), stamp AS MATERIALIZED (
    SELECT c.now, c.expires_at, {event_time_text("c.now")} AS at, {isoformat_text("c.expires_at")} AS expires_text
    FROM clock AS c
)"""  # noqa: S608


def _param(name: str, sql_type: str) -> str:
    return f"CAST(:{name} AS {sql_type})"


def _column_type(table: Table, column: str) -> str:
    # Without a length (see without_length): a value too long for the column is refused, not cut.
    return str(without_length(table.c[column].type).compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]


def _expiry_key(event: NewEvent) -> str | None:
    keys = [k for k, v in event.data.items() if v is EXPIRES_AT]
    if len(keys) > 1:
        raise ValueError(f"{event.kind}: one EXPIRES_AT per event")
    return keys[0] if keys else None


# Names in these statements come from this module and the table definitions, never from input:
# every value travels as a bound parameter (hence the S608 exemptions below).


def _event_cte(i: int, has_expiry: bool) -> tuple[str, list[Any]]:
    """Event i's data and hash, linked to event i - 1 (the first to the genesis hash)."""
    prev = "CAST(:genesis AS text)" if i == 0 else f"e{i - 1}.hash"
    source = "stamp AS s" if i == 0 else f"stamp AS s, e{i - 1}"
    parts = ["data", "opening", "before_prev", "closing", "kind", "actor"]
    data = _param(f"e{i}_data", "text")
    if has_expiry:
        data = f"pg_catalog.concat({data}, '\"', s.expires_text, '\"', {_param(f'e{i}_data_after', 'text')})"
        parts.append("data_after")
    body = (
        f"pg_catalog.concat({_param(f'e{i}_opening', 'text')}, s.at, '{DATA_KEY}', d.data, "
        f"{_param(f'e{i}_before_prev', 'text')}, d.prev, {_param(f'e{i}_closing', 'text')})"
    )
    sql = f"""e{i} AS MATERIALIZED (
    SELECT d.data, d.prev,
           pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to({body}, 'UTF8')), 'hex') AS hash
    FROM {source}, LATERAL (SELECT {data} AS data, {prev} AS prev) AS d
)"""  # noqa: S608
    return sql, [bindparam(f"e{i}_{part}", type_=String()) for part in parts]


def _insert_cte(
    name: str, table: Table, columns: tuple[str, ...], stamped: list[str], rows: list[str]
) -> str:
    """INSERT INTO table (columns, then the stamped ones) the rows (SELECTs from `stamp`)."""
    assert set(columns) | set(stamped) <= set(table.c.keys())
    return f"""{name} AS (
    INSERT INTO {table.name} ({", ".join((*columns, *stamped))})
    {" UNION ALL ".join(rows)}
)"""


@functools.cache
def _statement(
    request_columns: tuple[str, ...],
    final: bool,
    reminded: bool,
    outbox_columns: tuple[tuple[str, ...], ...],
    expiry_in_event: tuple[bool, ...],
) -> Any:
    """The statement for rows of these shapes, built once per shape (a few shapes exist)."""
    binds: list[Any] = [bindparam("lifetime"), bindparam("chain_id", type_=String())]
    if reminded:
        binds.append(bindparam("first_reminder"))
    binds.append(bindparam("genesis", type_=String()))
    ctes = [_CLOCK]
    for i, has_expiry in enumerate(expiry_in_event):
        sql, event_binds = _event_cte(i, has_expiry)
        ctes.append(sql)
        binds += event_binds

    values = [_param(f"r_{c}", _column_type(requests, c)) for c in request_columns]
    reminder = "s.now + pg_catalog.make_interval(secs => CAST(:first_reminder AS double precision))"
    values += ["s.now", "s.expires_at", "s.now" if final else "NULL", reminder if reminded else "NULL"]
    binds += [bindparam(f"r_{c}", type_=requests.c[c].type) for c in request_columns]
    ctes.append(
        _insert_cte(
            "new_request",
            requests,
            request_columns,
            list(REQUEST_TIME_COLUMNS),
            [f"SELECT {', '.join(values)} FROM stamp AS s"],  # noqa: S608
        )
    )
    if outbox_columns:
        if len(set(outbox_columns)) != 1:
            raise ValueError("the outbox rows of one request have the same columns")
        rows = []
        for i, columns in enumerate(outbox_columns):
            values = [_param(f"o{i}_{c}", _column_type(outbox, c)) for c in columns]
            rows.append(f"SELECT {', '.join(values + ['s.now'] * len(TIME_COLUMNS))} FROM stamp AS s")  # noqa: S608
            binds += [bindparam(f"o{i}_{c}", type_=outbox.c[c].type) for c in columns]
        ctes.append(_insert_cte("new_outbox", outbox, outbox_columns[0], list(TIME_COLUMNS), rows))
    events = [
        f"SELECT CAST(:chain_id AS text), {i + 1}, {_param(f'e{i}_kind', 'text')}, "  # noqa: S608
        f"{_param(f'e{i}_actor', 'text')}, CAST(e{i}.data AS json), s.now, e{i}.prev, e{i}.hash "
        f"FROM stamp AS s, e{i}"
        for i in range(len(expiry_in_event))
    ]
    event_columns = ("chain_id", "seq", "kind", "actor", "data", "created_at", "prev_hash", "hash")
    ctes.append(_insert_cte("new_events", audit_events, event_columns, [], events))
    last = len(expiry_in_event) - 1
    head = f"SELECT CAST(:chain_id AS text), {last + 1}, e{last}.hash FROM e{last}"  # noqa: S608
    ctes.append(_insert_cte("new_head", chain_heads, ("chain_id", "seq", "hash"), [], [head]))
    sql = "WITH " + ",\n".join(ctes) + "\nSELECT now, expires_at FROM clock"
    return text(sql).bindparams(*binds).columns(now=UTCDateTime(), expires_at=UTCDateTime())


@dataclass(frozen=True)
class Stamped:
    """The times the database gave the new request."""

    created_at: dt.datetime
    expires_at: dt.datetime


async def insert_new_request(
    conn: AsyncConnection,
    *,
    request: dict[str, Any],
    lifetime_seconds: int,
    final: bool,
    outbox_rows: list[dict[str, Any]],
    events: list[NewEvent],
    first_reminder: dt.timedelta | None = None,
) -> Stamped:
    """Write a new request (its row but for REQUEST_TIME_COLUMNS), its deliveries (rows of
    approvals.delivery.outbox.outbox_values) and its chain of `events` (EXPIRES_AT standing for its expiry),
    all stamped with one reading of the database's clock, in one statement; its first reminder is
    due `first_reminder` after that."""
    chain_id = request["id"]
    expiry_keys = [_expiry_key(e) for e in events]
    params: dict[str, Any] = {"lifetime": lifetime_seconds, "chain_id": chain_id, "genesis": GENESIS_HASH}
    if first_reminder is not None:
        params["first_reminder"] = first_reminder.total_seconds()
    for i, (event, key) in enumerate(zip(events, expiry_keys, strict=True)):
        parts = body_parts(chain_id, i + 1, event.kind, event.actor)
        params[f"e{i}_opening"] = parts.opening
        params[f"e{i}_before_prev"] = parts.before_prev
        params[f"e{i}_closing"] = parts.closing
        params[f"e{i}_kind"] = event.kind
        params[f"e{i}_actor"] = event.actor
        if key is None:
            params[f"e{i}_data"] = canonical_text(event.data)
        else:
            params[f"e{i}_data"], params[f"e{i}_data_after"] = canonical_around(event.data, key)
    params.update((f"r_{k}", v) for k, v in request.items())
    for i, row in enumerate(outbox_rows):
        params.update((f"o{i}_{k}", v) for k, v in row.items())
    statement = _statement(
        tuple(request),
        final,
        first_reminder is not None,
        tuple(tuple(row) for row in outbox_rows),
        tuple(key is not None for key in expiry_keys),
    )
    stamped = (await conn.execute(statement, params)).one()
    return Stamped(created_at=stamped.now, expires_at=stamped.expires_at)
