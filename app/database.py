"""Engines: the URL an operator gives (or the embedded server's) becomes an async engine on psycopg."""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from approvals.audit.events import canonical_text

if TYPE_CHECKING:
    from app.config import Settings


def async_url(url: str) -> str:
    """Accept plain postgresql:// (and postgres://) URLs and pick psycopg's async driver for them."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.drivername in ("postgresql", "postgresql+psycopg2", "postgresql+asyncpg"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


# A connection that was in use a moment ago is alive: pinging it at every checkout (pool_pre_ping) was
# a round trip on every intake request. One idle for longer than this is pinged first, so a pool that
# sat idle through a database restart still reconnects without failing anyone; a restart under load
# fails the few statements in flight (503, retried by agents) and the first failure renews the pool.
PING_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: AsyncEngine, idle_seconds: float) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine.pool, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(sync_engine.pool, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return  # a new connection, or one just used
        try:
            alive = sync_engine.dialect.do_ping(dbapi_connection)
        except sync_engine.dialect.loaded_dbapi.Error as exc:
            raise InvalidatePoolError(f"ping failed: {exc}") from exc
        if not alive:
            raise InvalidatePoolError("ping failed")


def build_engine(
    url: str,
    *,
    statement_timeout_seconds: float = 0,
    ping_idle_seconds: float = PING_IDLE_SECONDS,
    **kwargs: Any,
) -> AsyncEngine:
    """An engine on psycopg's async driver.

    `statement_timeout_seconds` bounds every statement of every connection (set when the connection
    opens, so it costs no round trip; see app.statement_timeout for the way out of it). A pooled
    connection idle for `ping_idle_seconds` or longer is pinged before it is handed out.
    """
    # JSON columns hold canonical JSON (sorted keys, no spaces): an audit event's data is then stored
    # as the exact text its hash covers, which lets verification hash it where it lies.
    kwargs.setdefault("json_serializer", canonical_text)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 5)
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
        connect_args["options"] = f"-c statement_timeout={max(1, round(statement_timeout_seconds * 1000))}"
    kwargs.setdefault("connect_args", connect_args)
    engine = create_async_engine(async_url(url), **kwargs)
    _ping_when_idle(engine, ping_idle_seconds)
    return engine


def database_url_of(settings: Settings) -> str:
    """Where to connect: APPROVALS_DATABASE_URL, or the embedded server's database (which this starts,
    or joins when another process of ours runs it). Raises EmbeddedDatabaseError when it cannot start."""
    if settings.database_url is not None:
        return settings.database_url
    from app.embedded_postgres import embedded_database_url  # only processes that use it pay for it

    return embedded_database_url(settings.embedded_database_dir)


def connection_for(
    engine: AsyncEngine, single_statements: AsyncEngine | None, *, one_statement: bool
) -> AbstractAsyncContextManager[AsyncConnection]:
    """Where a use case writes: a transaction on `engine`, or, when it writes exactly one statement
    and there is a pool in autocommit for that (PostgreSQL), a connection of that pool, on which
    the statement is its own transaction and costs no BEGIN or COMMIT round trip."""
    if one_statement and single_statements is not None:
        return single_statements.connect()
    return engine.begin()
