"""Database plumbing shared by every use case: the UTC time type, the database clock, upserts."""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import operator
from typing import Any

from sqlalchemy import DateTime, String, Table, TypeDecorator, bindparam, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

UTC = dt.UTC


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the session's time zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_utc(value: dt.datetime | None) -> str | None:
    """How the API and exports write a time: ISO 8601 in UTC with a trailing Z."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


_NOW = text("SELECT clock_timestamp()")


async def db_now(conn: AsyncConnection) -> dt.datetime:
    """The database server's clock: every timestamp we record comes from here, never from the caller."""
    # clock_timestamp(), not now(): now() is frozen at transaction start, which would let a long
    # transaction record times earlier than events it has already seen committed.
    value = (await conn.execute(_NOW)).scalar_one()
    assert isinstance(value, dt.datetime)
    return value.astimezone(UTC)


async def insert_ignoring_conflict(
    conn: AsyncConnection, table: Table, values: dict[str, Any], *, returning: Any = None
) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING; the RETURNING row (default: the key), None if it existed.

    RETURNING, not rowcount, tells whether the row was inserted: psycopg reports -1 here.
    """
    stmt = _insert_ignoring(table, returning)
    return (await conn.execute(stmt, values)).first()


async def insert_many(
    conn: AsyncConnection, table: Table, rows: list[dict[str, Any]], *, ignore_conflicts: bool = False
) -> None:
    """INSERT many rows in one statement (with ignore_conflicts, rows that exist are skipped).

    The rows go as one array per column into `INSERT ... SELECT FROM unnest(...)`: an executemany is
    one statement per row on the server (psycopg pipelines them, but each is parsed, planned and run
    alone), which cost the expiry sweep more than the rows' writes themselves.
    A column with the same value in every row (a batch's time, say) goes once, as a plain parameter,
    and an array of strings goes as array text built here (see array_literal): turning values into
    array text element by element in the driver was most of the CPU such an insert cost this process.
    """
    if not rows:
        return
    columns = _uniform_columns(table, rows)
    if columns is None:
        statement = _on_conflict_do_nothing(table) if ignore_conflicts else table.insert()
        await conn.execute(statement, rows)
        return
    first = rows[0]
    varying = tuple(name for name in columns if not _all_same([row[name] for row in rows]))
    # unnest() needs one array to give the number of rows, even when every row is the same.
    varying = varying or columns[:1]
    params: dict[str, Any] = {}
    literal = []
    for name in columns:
        if name not in varying:
            params[name] = first[name]
            continue
        values = [row[name] for row in rows]
        if _plain_string(table.c[name].type) and all(type(v) is str or v is None for v in values):
            params[name] = array_literal(values)
            literal.append(name)
        else:
            params[name] = values
    await conn.execute(_unnest_insert(table, columns, varying, tuple(literal), ignore_conflicts), params)


def array_literal(values: list[str | None]) -> str:
    """A one-dimensional PostgreSQL array of strings in its text form, to be cast to VARCHAR[] (or
    TEXT[]) in the statement: every element quoted, with `"` and `\\` escaped, and None as NULL."""
    return (
        "{"
        + ",".join(
            "NULL" if value is None else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for value in values
        )
        + "}"
    )


def _plain_string(type_: Any) -> bool:
    """A string type whose values SQLAlchemy hands to the driver as they are (not Enum, say)."""
    return isinstance(type_, String) and type(type_).bind_processor is String.bind_processor


async def insert_many_ignoring_conflict(
    conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]
) -> None:
    """INSERT ... ON CONFLICT DO NOTHING for many rows in one statement; rows that exist are skipped."""
    await insert_many(conn, table, rows, ignore_conflicts=True)


def _uniform_columns(table: Table, rows: list[dict[str, Any]]) -> tuple[str, ...] | None:
    """The columns every row gives, or None when the rows differ or leave out a column with a default
    computed in Python (which only SQLAlchemy's own INSERT would fill in)."""
    first = rows[0].keys()
    if any(row.keys() != first for row in rows):
        return None
    if any(column.default is not None and column.name not in first for column in table.columns):
        return None
    return tuple(first)


def _all_same(values: list[Any]) -> bool:
    first = values[0]
    # Mostly the very same object (one time, one status for a whole batch): `is` settles those in C,
    # and `==` in C settles the columns that differ. What is left is equal as Python sees it, which is
    # equal as stored too when it is made of strings only; anything else is checked type by type.
    if all(map(operator.is_, values, itertools.repeat(first))):
        return True
    if not all(map(operator.eq, values, itertools.repeat(first))):
        return False
    return _only_strings(first) or all(_same(value, first) for value in values)


def _only_strings(value: Any) -> bool:
    """A string, None, or lists and dicts of those: nothing Python holds equal that JSON tells apart."""
    if value is None or type(value) is str:
        return True
    if type(value) is dict:
        return all(type(key) is str and _only_strings(item) for key, item in value.items())
    if type(value) is list:
        return all(_only_strings(item) for item in value)
    return False


def _same(a: Any, b: Any) -> bool:
    """Whether a and b would be stored alike: equal, and of the same types all the way down (1, 1.0,
    True and 0.0, -0.0 are equal in Python but not in JSON)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(value, b[key]) for key, value in a.items())
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float):
        return repr(a) == repr(b)
    return bool(a == b)


@functools.cache
def _unnest_insert(
    table: Table,
    columns: tuple[str, ...],
    varying: tuple[str, ...],
    literal: tuple[str, ...],
    ignore_conflicts: bool,
) -> Any:
    """The unnest INSERT for these columns (arrays for the varying ones, single values for the others;
    the `literal` ones given as array text), as SQL text with typed parameters, built once per shape.

    The parameters' types are the columns' own, so values are converted (UTC times, JSON through the
    engine's serializer) exactly as table.insert() would convert them; but without a length, because
    parameters are cast to their type (by us, and by psycopg's dialect), and a cast to VARCHAR(40)
    cuts a longer value short without a word where the INSERT into the column refuses it.
    """
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    quote = dialect.identifier_preparer.quote
    types = {name: without_length(table.c[name].type) for name in columns}
    sql_types = {name: type_.compile(dialect=dialect) for name, type_ in types.items()}
    arrays = ", ".join(f":{name} ::{sql_types[name]}[]" for name in varying)
    values = ", ".join(
        f"u.{quote(name)}" if name in varying else f":{name} ::{sql_types[name]}" for name in columns
    )
    target = f"{dialect.identifier_preparer.format_table(table)} ({', '.join(quote(n) for n in columns)})"
    # Only the table's own column names reach the text (table.c[name] refused any other), quoted.
    sql = (
        f"INSERT INTO {target} SELECT {values} "  # noqa: S608
        f"FROM unnest({arrays}) AS u({', '.join(quote(n) for n in varying)})"
    )
    if ignore_conflicts:
        sql += " ON CONFLICT DO NOTHING"
    binds = [
        # Array text is a plain string to the driver; the statement's cast makes it an array.
        bindparam(name)
        if name in literal
        # One dimension: a JSON value that is itself a list stays one element.
        else bindparam(name, type_=postgresql.ARRAY(types[name], dimensions=1))
        if name in varying
        else bindparam(name, type_=types[name])
        for name in columns
    ]
    return text(sql).bindparams(*binds)


def without_length(type_: Any) -> Any:
    """A string type without its length: a cast to VARCHAR(40) cuts a longer value short without a
    word, where the INSERT into the column refuses it."""
    if isinstance(type_, String) and type_.length is not None:
        unbounded = type_.copy()
        unbounded.length = None
        return unbounded
    return type_


@functools.cache
def _on_conflict_do_nothing(table: Table) -> Any:
    # Built once per table: constructing statements per call costs more CPU than running them.
    return postgresql.insert(table).on_conflict_do_nothing()


@functools.cache
def _insert_ignoring(table: Table, returning: Any) -> Any:
    columns = [returning] if returning is not None else list(table.primary_key.columns)
    return _on_conflict_do_nothing(table).returning(*columns)
