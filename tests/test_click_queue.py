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
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.sandbox.slack_api import TEAM_ID
from app.slack.clicks import DECIDING_AT_ONCE, ClickProcessor
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


def _processor(
    slack: SlackApi, *, after_commit: Callable[[str], None] | None = None, **limits: Any
) -> ClickProcessor:
    """A click processor of the test's own, with its own limits, on the service's pool and Slack."""
    assert slack.container.slack is not None
    return ClickProcessor(
        engine=slack.container.interactive,
        client=slack.container.slack.client,
        directory=slack.container.slack.directory,
        after_commit=after_commit or slack.container.committed,
        **limits,
    )


async def _store_approval(processor: ClickProcessor, request_id: str, n: int) -> int:
    """Store an Approve click by U01COO as the listener would, undecided; returns its id."""
    payload = {
        "choice": "approve",
        "user_id": "U01COO",
        "team_id": TEAM_ID,
        "action_ts": f"1700000400.{n:06d}",
        "channel_id": "C0HIRING",
        "message_ts": "1.000100",
    }
    click_id = await processor.accept(dedupe_key=f"test:{n}", request_id=request_id, payload=payload)
    assert click_id is not None
    return click_id


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


async def test_clicks_beyond_the_queue_wait_in_the_inbox_for_the_sweep(slack: SlackApi) -> None:
    processor = _processor(slack, max_waiting=2, stranded_after=dt.timedelta(0))
    ids = await _pending(slack, 6)
    async with slack.container.engine.connect() as blocker:
        await blocker.execute(text("SELECT id FROM requests FOR UPDATE"))
        for n, request_id in enumerate(ids):
            processor.submit(await _store_approval(processor, request_id, n))
        await blocker.rollback()
    # The two queued are decided; the four that did not fit are still stored, undecided: nothing
    # else queues them (the service's own processor never saw them, and no sweep runs here).
    async with slack.container.engine.connect() as conn:

        async def queued_ones_decided() -> bool:
            decided = await _count(conn, DECISIONS) == 2
            await conn.rollback()
            return decided

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
    processor.close()


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


async def test_a_click_submitted_as_the_workers_stop_still_gets_a_worker(any_slack: SlackApi) -> None:
    """A worker that found the queue empty gives its slot back as it stops, not a loop turn later."""
    first, second = await _pending(any_slack, 2)
    later: list[int] = []
    loop = asyncio.get_running_loop()

    def after_commit(request_id: str) -> None:
        any_slack.container.committed(request_id)
        if request_id == first:
            # Submitted on the next loop turn: by then the one worker has decided the first click,
            # found nothing more queued and stopped, and the task's done callbacks are still to run.
            loop.call_soon(processor.submit, later[0])

    processor = _processor(any_slack, after_commit=after_commit, deciding_at_once=1)
    first_click = await _store_approval(processor, first, 0)
    later.append(await _store_approval(processor, second, 1))
    processor.submit(first_click)

    # No sweep runs here: the second click is decided only if its submit found a free worker slot.
    assert (await any_slack.final(first))["status"] == "approved"
    assert (await any_slack.final(second))["status"] == "approved"
    processor.close()


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
