"""Outbox claims stay cheap and correct when many rows of kinds this process cannot deliver are waiting.

With Slack switched off (no Slack settings) the service still queues card posts and updates, for a
replica or a later restart that has Slack configured. Those rows must neither stand in front of the
callbacks this process can deliver, nor be touched, nor make every claim walk past them.

A claimed row is leased for APPROVALS_OUTBOX_LEASE_SECONDS (a validated setting): the lease a row in
flight carries is the configured one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import ConfigError, load_settings
from approvals.db import db_now
from approvals.delivery.outbox import (
    CALLBACK,
    SLACK_NOTIFY,
    SLACK_UPDATE,
    claim_due,
    enqueue_many,
    outbox_row,
)
from approvals.tables import outbox
from tests.conftest import Api, make_settings, offer, start_service, stop_service
from tests.eventually import eventually
from tests.receiver import Receiver

WAITING = 3000  # Slack rows queued while Slack is off, all due (and due earlier than the callback)
INDEX = "ix_outbox_status_kind_next_attempt_at"


async def _queue_undeliverable(engine: AsyncEngine, count: int) -> None:
    async with engine.begin() as conn:
        due = await db_now(conn) - dt.timedelta(hours=1)
        await enqueue_many(
            conn,
            [
                outbox_row(
                    kind=SLACK_NOTIFY if i % 2 else SLACK_UPDATE,
                    dedupe_key=f"waiting:{i}",
                    request_id=None,
                    payload={"n": i},
                    now=due,
                )
                for i in range(count)
            ],
        )


def _capture_claims(engine: AsyncEngine) -> list[tuple[str, Any]]:
    """Record the claims the dispatcher sends, with their parameters, to EXPLAIN them after."""
    seen: list[tuple[str, Any]] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        # The claim reads due rows in one WITH ... UPDATE.
        if "FROM outbox" in statement and "next_attempt_at <=" in statement and "EXPLAIN" not in statement:
            seen.append((statement, parameters))

    return seen


async def _plan(engine: AsyncEngine, statement: str, parameters: Any) -> str:
    async with engine.connect() as conn:
        await conn.exec_driver_sql("ANALYZE outbox")
        raw = (await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)).scalar_one()
        text = raw if isinstance(raw, str) else json.dumps(raw)
        await conn.rollback()
    return text


def _index_scans(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node] if "Index Name" in node else []
    for child in node.get("Plans", []):
        found.extend(_index_scans(child))
    return found


async def test_waiting_slack_rows_neither_block_nor_slow_callbacks_and_are_kept(
    cb_api: Api, receiver: Receiver
) -> None:
    assert cb_api.container.slack is None and cb_api.container.dispatcher.kinds == [CALLBACK]
    engine = cb_api.container.engine
    await _queue_undeliverable(engine, WAITING)
    # On the pool's own engine (`engine` is a view of it), so the dispatcher's statements are seen.
    claims = _capture_claims(cb_api.container.interactive)

    created = await (
        await cb_api.post("/v1/requests", offer(action="read_mail", callback_url=receiver.url()))
    ).json()
    [hit] = await receiver.wait_for(1)
    assert json.loads(hit.body)["data"]["id"] == created["id"]
    await cb_api.container.dispatcher.run_until_idle()

    # Every claim asked for its kind through the kind-leading index, so the waiting rows were not scanned.
    assert claims, "the dispatcher made no claim"
    for statement, parameters in claims:
        plan = await _plan(engine, statement, parameters)
        assert INDEX in plan, plan
        scans = _index_scans(json.loads(plan)[0]["Plan"])
        assert any(s["Index Name"] == INDEX and "kind" in s["Index Cond"] for s in scans), plan

    async with engine.connect() as conn:
        waiting = (
            await conn.execute(
                select(outbox.c.status, outbox.c.attempts, func.count())
                .where(outbox.c.kind.in_([SLACK_NOTIFY, SLACK_UPDATE]))
                .group_by(outbox.c.status, outbox.c.attempts)
            )
        ).all()
        callback_status = (
            await conn.execute(select(outbox.c.status).where(outbox.c.kind == CALLBACK))
        ).scalar_one()
    # Untouched: all of them still pending and never attempted.
    assert [tuple(row) for row in waiting] == [("pending", 0, WAITING)]
    assert callback_status == "done"

    # A process with Slack configured (a replica, or this one restarted) still gets them, oldest first.
    async with engine.connect() as conn:
        taken = await claim_due(
            conn, kinds=[SLACK_NOTIFY, SLACK_UPDATE], limit=10, lease=dt.timedelta(seconds=60)
        )
        await conn.rollback()
    assert sorted(c.kind for c in taken) == [SLACK_NOTIFY] * 10 + [SLACK_UPDATE] * 10
    assert {c.dedupe_key for c in taken} <= {f"waiting:{i}" for i in range(40)}


async def test_a_row_in_flight_is_leased_for_the_configured_time(database_url: str) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def hold(_request: web.Request) -> web.Response:  # the agent answers only when told to
        arrived.set()
        await release.wait()
        return web.Response(text="ok")

    hook = web.Application()
    hook.router.add_post("/hook", hold)
    agent = TestServer(hook, host="127.0.0.1")
    await agent.start_server()
    container, server = await start_service(
        database_url, callback_allow_hosts=["127.0.0.1"], outbox_lease_seconds=900
    )
    try:
        async with ClientSession() as session:
            api = Api(session=session, base=str(server.make_url("")), key="", container=container)
            api.key = await api.add_agent("cb-bot", ["read_*"])
            body = offer(action="read_mail", callback_url=str(agent.make_url("/hook")))
            assert (await api.post("/v1/requests", body)).status == 201

            async def delivering() -> bool:
                return arrived.is_set()

            await eventually(delivering, what="the callback to reach the agent")
            async with container.engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(outbox.c.next_attempt_at, outbox.c.updated_at).where(outbox.c.kind == CALLBACK)
                    )
                ).one()
            release.set()
            await container.dispatcher.run_until_idle()
    finally:
        release.set()
        await stop_service(container, server)
        await agent.close()
    assert row.next_attempt_at - row.updated_at == dt.timedelta(seconds=900)


def test_the_lease_setting_is_read_from_its_variable_and_must_be_positive(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPROVALS_OUTBOX_LEASE_SECONDS", "2.5")
    assert make_settings(database_url).outbox_lease_seconds == 2.5
    for bad in ("0", "-1", "3601", "soon"):
        monkeypatch.setenv("APPROVALS_OUTBOX_LEASE_SECONDS", bad)
        with pytest.raises(ConfigError, match=r"^configuration error: APPROVALS_OUTBOX_LEASE_SECONDS: "):
            load_settings(database_url=database_url)
