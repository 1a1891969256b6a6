"""A statement of the agent API that waits too long on PostgreSQL ends in a clean 503, and changes nothing.

Another connection holds the request's row lock (as a stuck transaction or a frozen server would), so the
cancel's `SELECT ... FOR UPDATE` waits; APPROVALS_STATEMENT_TIMEOUT_SECONDS bounds that wait.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import psycopg
import pytest
from aiohttp import ClientSession
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from approvals.tables import audit_events, outbox
from tests.conftest import Api, offer, start_service, stop_service

BOUND_SECONDS = 1.0


@pytest.fixture
async def bounded_api(database_url: str) -> AsyncIterator[Api]:
    # One pooled connection: the bounded and unbounded views below then share it for certain.
    container, server = await start_service(
        database_url, statement_timeout_seconds=BOUND_SECONDS, database_pool_size=1, database_max_overflow=0
    )
    async with ClientSession() as session:
        api = Api(session=session, base=str(server.make_url("")), key="", container=container)
        api.key = await api.add_agent("slow-bot", ["send_offer_letter"])
        yield api
    await stop_service(container, server)


async def _footprint(api: Api, request_id: str) -> tuple[str, int, int]:
    async with api.container.engine.connect() as conn:
        status = (
            await conn.execute(text("SELECT status FROM requests WHERE id = :id"), {"id": request_id})
        ).scalar()
        events = await conn.scalar(
            select(func.count()).select_from(audit_events).where(audit_events.c.chain_id == request_id)
        )
        rows = await conn.scalar(
            select(func.count()).select_from(outbox).where(outbox.c.request_id == request_id)
        )
    return str(status), int(events or 0), int(rows or 0)


async def test_a_statement_stuck_behind_a_lock_gets_a_503_within_the_bound_and_writes_nothing(
    bounded_api: Api, database_url: str
) -> None:
    created = await (await bounded_api.post("/v1/requests", offer())).json()
    request_id = created["id"]
    before = await _footprint(bounded_api, request_id)
    assert before[0] == "pending"

    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    async with await psycopg.AsyncConnection.connect(dsn) as holder:
        await holder.execute("SELECT id FROM requests WHERE id = %s FOR UPDATE", (request_id,))
        started = time.monotonic()
        response = await bounded_api.post(f"/v1/requests/{request_id}/cancel")
        elapsed = time.monotonic() - started
        body = await response.json()
        await holder.rollback()

    assert response.status == 503, body
    assert body["error"]["code"] == "database_timeout" and body["error"]["field"] is None
    assert set(body["error"]) == {"code", "message", "field"}
    assert response.headers["Retry-After"] == "1"
    assert BOUND_SECONDS <= elapsed < BOUND_SECONDS + 4, elapsed
    # Nothing half-written: no status change, no audit event, no callback or card update queued.
    assert await _footprint(bounded_api, request_id) == before

    # The pooled connection is fine afterwards, and the bound ended with its transaction.
    retried = await bounded_api.post(f"/v1/requests/{request_id}/cancel")
    assert retried.status == 200 and (await retried.json())["status"] == "cancelled"


async def test_only_the_interactive_paths_are_bounded(bounded_api: Api) -> None:
    async with bounded_api.container.interactive.connect() as conn:
        interactive = (await conn.execute(text("SHOW statement_timeout"))).scalar()
    # Long compliance reads (exports, verification) and sweeps share the connection but keep no limit.
    async with bounded_api.container.engine.connect() as conn:
        unbounded = (await conn.execute(text("SHOW statement_timeout"))).scalar()
    async with bounded_api.container.interactive.begin() as conn:
        await conn.execute(text("SELECT 1"))
    async with bounded_api.container.engine.connect() as conn:
        after = (await conn.execute(text("SHOW statement_timeout"))).scalar()
    assert (interactive, unbounded, after) == ("1s", "0", "0")
