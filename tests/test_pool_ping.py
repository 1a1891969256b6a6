"""Pooled connections are pinged only after sitting idle: a dead idle one is replaced without an error.

The server ends the pooled session behind our back (pg_terminate_backend), as a database restart does.
"""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.database import build_engine


def _terminate(database_url: str, pid: int) -> None:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])


async def _pid_of_pooled_connection(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_an_idle_connection_killed_by_the_server_is_replaced_before_use(database_url: str) -> None:
    # Every checkout counts as idle.
    engine = build_engine(database_url, ping_idle_seconds=0.0, pool_size=1, max_overflow=0)
    try:
        killed = await _pid_of_pooled_connection(engine)
        _terminate(database_url, killed)
        # The ping finds it dead, the pool is renewed, and the caller never sees the failure.
        assert await _pid_of_pooled_connection(engine) != killed
    finally:
        await engine.dispose()


async def test_a_connection_just_used_is_not_pinged(database_url: str) -> None:
    engine = build_engine(database_url, ping_idle_seconds=3600.0, pool_size=1, max_overflow=0)
    try:
        killed = await _pid_of_pooled_connection(engine)
        _terminate(database_url, killed)
        with pytest.raises(DBAPIError):  # no round trip spent checking: the statement itself fails...
            await _pid_of_pooled_connection(engine)
        assert await _pid_of_pooled_connection(engine) != killed  # ...and the pool is renewed at once
    finally:
        await engine.dispose()
