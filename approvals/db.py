"""Database plumbing shared by every use case: the UTC time type, the database clock, portable upserts."""

from __future__ import annotations

import datetime as dt
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


async def db_now(conn: AsyncConnection) -> dt.datetime:
    """The database server's clock: every timestamp we record comes from here, never from the caller."""
    if conn.dialect.name == "sqlite":
        raw = (await conn.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))).scalar_one()
        return dt.datetime.fromisoformat(raw).replace(tzinfo=UTC)
    # clock_timestamp(), not now(): now() is frozen at transaction start, which would let a long
    # transaction record times earlier than events it has already seen committed.
    value = (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()
    assert isinstance(value, dt.datetime)
    return value.astimezone(UTC)


async def insert_ignoring_conflict(
    conn: AsyncConnection, table: Table, values: dict[str, Any], *, returning: Any = None
) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING; the RETURNING row (default: the key), None if it existed.

    RETURNING, not rowcount, tells whether the row was inserted: psycopg reports -1 here.
    """
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table).values(**values).on_conflict_do_nothing()
    columns = [returning] if returning is not None else list(table.primary_key.columns)
    return (await conn.execute(stmt.returning(*columns))).first()


def is_postgres(conn: AsyncConnection) -> bool:
    """True on PostgreSQL, where row locks (FOR UPDATE [SKIP LOCKED]) are available."""
    return conn.dialect.name == "postgresql"
