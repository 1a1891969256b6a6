"""Engines: the URL an operator gives becomes an async engine tuned for its backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from approvals.audit import canonical_text


def async_url(url: str) -> str:
    """Accept plain sqlite:/// and postgresql:// URLs and pick our async drivers for them."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername in ("postgresql", "postgresql+psycopg2", "postgresql+asyncpg"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def build_engine(url: str, *, statement_timeout_seconds: float = 0, **kwargs: Any) -> AsyncEngine:
    """An engine; on SQLite every transaction takes the write lock up front so concurrent writers queue.

    On PostgreSQL `statement_timeout_seconds` bounds every statement of every connection (set when the
    connection opens, so it costs no round trip; see app.statement_timeout for the way out of it).
    """
    url = async_url(url)
    parsed = make_url(url)
    # JSON columns hold canonical JSON (sorted keys, no spaces): an audit event's data is then stored
    # as the exact text its hash covers, which lets verification hash it where it lies.
    kwargs.setdefault("json_serializer", canonical_text)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 5)
        kwargs.setdefault("pool_pre_ping", True)
        # A server that stops answering (frozen, partitioned) must fail a new connection within seconds,
        # and TCP keepalives find a dead peer under an idle pooled connection in about a minute.
        connect_args: dict[str, Any] = {
            "connect_timeout": 10,
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
        if statement_timeout_seconds > 0:
            connect_args["options"] = (
                f"-c statement_timeout={max(1, round(statement_timeout_seconds * 1000))}"
            )
        kwargs.setdefault("connect_args", connect_args)
        return create_async_engine(url, **kwargs)
    kwargs.pop("pool_size", None)  # SQLite: one file, one writer at a time; the default pool suits it
    kwargs.pop("max_overflow", None)

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, say when a transaction starts (see the "begin" hook).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A deferred transaction that later writes can fail with "database is locked" instead of
        # waiting; IMMEDIATE makes it wait (busy_timeout) for its turn at the start.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
