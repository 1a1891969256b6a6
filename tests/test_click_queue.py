"""Clicks waiting to be decided: a backlog is a queue of ids worked by a few workers, not a suspended
listener per click, and what does not fit waits in the inbox for the stranded-click sweep.

The decisions are held back by a real row lock on every request (another PostgreSQL session), so
the clicks are acknowledged and stored while none can be decided yet.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

import app.slack.clicks as clicks_module
from app.slack.clicks import DECIDING_AT_ONCE
from tests.conftest import offer
from tests.eventually import eventually
from tests.slack_helpers import SlackApi, block_actions, slack_service


@pytest.fixture
async def slack(database_url: str) -> AsyncIterator[SlackApi]:
    async for api in slack_service(database_url):
        yield api


async def _pending(slack: SlackApi, count: int) -> list[str]:
    ids = [(await (await slack.post("/v1/requests", offer())).json())["id"] for _ in range(count)]
    assert slack.fake is not None
    await slack.fake.wait_for_calls("chat.postMessage", count)
    return ids


async def _click_all(slack: SlackApi, ids: list[str]) -> None:
    clicks = [
        block_actions(request_id, "approve_request", user="U01COO", action_ts=f"1700000300.{n:06d}")
        for n, request_id in enumerate(ids)
    ]
    answers = await asyncio.gather(*(slack.slack(click) for click in clicks))
    assert [a.status for a in answers] == [200] * len(ids)


UNDECIDED = "SELECT count(*) FROM slack_clicks WHERE status = 'pending'"
DECISIONS = "SELECT count(*) FROM decisions"


async def _count(conn: AsyncConnection, query: str) -> int:
    return int((await conn.execute(text(query))).scalar_one())


def _working_tasks() -> int:
    """Tasks but aiohttp's per-connection ones (which stay for keep-alive, idle)."""
    return sum(1 for t in asyncio.all_tasks() if t.get_coro().__qualname__ != "RequestHandler.start")


async def _tasks_settle(expected: int) -> None:
    """Wait until no more than `expected` tasks are working."""

    async def settled() -> bool:
        return _working_tasks() <= expected

    await eventually(settled, what=f"no more than {expected} working tasks")


async def test_a_backlog_waits_as_ids_for_a_few_workers_and_each_click_is_decided_once(
    slack: SlackApi,
) -> None:
    ids = await _pending(slack, 12)
    await slack.container.dispatcher.run_until_idle()
    before = _working_tasks()
    async with slack.container.engine.connect() as blocker:
        await blocker.execute(text("SELECT id FROM requests FOR UPDATE"))  # every decision waits on this
        await _click_all(slack, ids)  # acknowledged: stored, not decided
        # Only the workers are left waiting, however many clicks are.
        await _tasks_settle(before + DECIDING_AT_ONCE)
        for request_id in ids:
            assert (await (await slack.get(f"/v1/requests/{request_id}")).json())["status"] == "pending"
        await blocker.rollback()
    for request_id in ids:
        assert (await slack.final(request_id))["status"] == "approved"
    async with slack.container.engine.connect() as conn:
        decided = await _count(conn, DECISIONS)
        pending = await _count(conn, UNDECIDED)
    assert (decided, pending) == (len(ids), 0)


async def test_clicks_beyond_the_queue_wait_in_the_inbox_for_the_sweep(
    slack: SlackApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clicks_module, "MAX_WAITING", 2)
    monkeypatch.setattr(clicks_module, "STRANDED_AFTER", dt.timedelta(0))
    assert slack.container.slack is not None
    processor = slack.container.slack.clicks
    ids = await _pending(slack, 6)
    async with slack.container.engine.connect() as blocker:
        await blocker.execute(text("SELECT id FROM requests FOR UPDATE"))
        await _click_all(slack, ids)
        await blocker.rollback()
    # The two queued are decided; the four that did not fit are still stored, undecided.
    async with slack.container.engine.connect() as conn:

        async def queued_ones_decided() -> bool:
            return await _count(conn, DECISIONS) == 2 and not processor._queued

        await eventually(queued_ones_decided, what="the two queued clicks to be decided")
        decided = await _count(conn, DECISIONS)
        pending = await _count(conn, UNDECIDED)
    assert (decided, pending) == (2, 4)

    # The sweep queues them (two at a time fit) until every one is decided.
    async def swept() -> bool:
        await processor.process_stranded()
        async with slack.container.engine.connect() as conn:
            return await _count(conn, UNDECIDED) == 0

    await eventually(swept, what="the sweep to decide every stored click")
    for request_id in ids:
        assert (await slack.final(request_id))["status"] == "approved"


def test_serve_freezes_what_exists_at_start_and_collects_young_objects_less_often() -> None:
    probe = (
        "import gc; from app.serve import YOUNG_GC_THRESHOLD, tune_garbage_collection; "
        "assert gc.get_freeze_count() == 0; tune_garbage_collection(); "
        "print(gc.get_threshold()[0] == YOUNG_GC_THRESHOLD, gc.get_freeze_count() > 1000)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True"]


@pytest.fixture
async def any_slack(database_url: str) -> AsyncIterator[SlackApi]:
    async for api in slack_service(database_url):
        yield api


async def test_a_click_submitted_as_the_workers_stop_still_gets_a_worker(
    any_slack: SlackApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers that found the queue empty give their slot back as they stop, not a loop turn later."""
    assert any_slack.container.slack is not None
    processor = any_slack.container.slack.clicks
    decided: list[int] = []

    async def decide_at_once(click_id: int) -> None:  # the decision itself is not what is tested here
        decided.append(click_id)

    monkeypatch.setattr(processor, "process", decide_at_once)
    for click_id in range(1, DECIDING_AT_ONCE + 1):
        processor.submit(click_id)
    await asyncio.sleep(0)  # every worker runs, drains the queue and stops, in this one loop turn
    processor.submit(99)

    async def late_click_decided() -> bool:
        return 99 in decided

    await eventually(late_click_decided, what="the click submitted as the workers stopped to be decided")
    assert decided == [*range(1, DECIDING_AT_ONCE + 1), 99]


async def test_a_click_for_a_request_that_does_not_exist_leaves_the_inbox(any_slack: SlackApi) -> None:
    missing = "req_" + "0" * 24  # the shape of an id, but no such request
    answer = await any_slack.slack(block_actions(missing, "approve_request", user="U01COO"))
    assert answer.status == 200
    async with any_slack.container.engine.connect() as conn:

        async def click_done() -> str | None:
            status = (await conn.execute(text("SELECT status FROM slack_clicks"))).scalar()
            await conn.rollback()
            return status if status == "done" else None

        status = await eventually(click_done, what="the click for a missing request to leave the inbox")
        decided = await _count(conn, DECISIONS)
    assert (status, decided) == ("done", 0)
