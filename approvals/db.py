"""Database plumbing shared by every use case: the UTC time type, the database clock, portable upserts."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from sqlalchemy import DateTime, Table, TypeDecorator, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

UTC = dt.UTC


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the backend stores."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        # SQLite keeps text: drop the zone so every stored value has the same sortable shape.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_utc(value: dt.datetime | None) -> str | None:
    """How the API and exports write a time: ISO 8601 in UTC with a trailing Z."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


_SQLITE_NOW = text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")
_POSTGRES_NOW = text("SELECT clock_timestamp()")


async def db_now(conn: AsyncConnection) -> dt.datetime:
    """The database server's clock: every timestamp we record comes from here, never from the caller."""
    if conn.dialect.name == "sqlite":
        raw = (await conn.execute(_SQLITE_NOW)).scalar_one()
        return dt.datetime.fromisoformat(raw).replace(tzinfo=UTC)
    # clock_timestamp(), not now(): now() is frozen at transaction start, which would let a long
    # transaction record times earlier than events it has already seen committed.
    value = (await conn.execute(_POSTGRES_NOW)).scalar_one()
    assert isinstance(value, dt.datetime)
    return value.astimezone(UTC)


async def insert_ignoring_conflict(
    conn: AsyncConnection, table: Table, values: dict[str, Any], *, returning: Any = None
) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING; the RETURNING row (default: the key), None if it existed.

    RETURNING, not rowcount, tells whether the row was inserted: psycopg reports -1 here.
    """
    stmt = _insert_ignoring(conn.dialect.name, table, returning)
    return (await conn.execute(stmt, values)).first()


async def insert_many_ignoring_conflict(
    conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]
) -> None:
    """INSERT ... ON CONFLICT DO NOTHING for many rows in one statement; rows that exist are skipped."""
    if rows:
        await conn.execute(_on_conflict_do_nothing(conn.dialect.name, table), rows)


@functools.cache
def _on_conflict_do_nothing(dialect: str, table: Table) -> Any:
    # Built once per table: constructing statements per call costs more CPU than running them.
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing()


@functools.cache
def _insert_ignoring(dialect: str, table: Table, returning: Any) -> Any:
    columns = [returning] if returning is not None else list(table.primary_key.columns)
    return _on_conflict_do_nothing(dialect, table).returning(*columns)


def is_postgres(conn: AsyncConnection) -> bool:
    """True on PostgreSQL, where row locks (FOR UPDATE [SKIP LOCKED]) are available."""
    return conn.dialect.name == "postgresql"
