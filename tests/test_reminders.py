"""Reminders and escalation: each reminder once, only to approvers who have not acted; escalation adds people."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic import command
from sqlalchemy import select, update

from app.migrate import alembic_config
from app.scheduler import reminders_job
from approvals.requests.reminders import (
    reminder_due,
    reminder_targets,
    schedule_missing_reminders,
    send_due_reminders,
)
from approvals.tables import audit_events, requests
from tests.conftest import offer
from tests.eventually import eventually
from tests.slack_helpers import SlackApi, block_actions, slack_service


@pytest.fixture
async def slack(database_url: str) -> AsyncIterator[SlackApi]:
    async for api in slack_service(database_url):
        yield api


async def _age(slack: SlackApi, request_id: str, fraction: float) -> None:
    """Move the request's clock: it was created `fraction` of its lifetime ago."""
    async with slack.container.engine.begin() as conn:
        row = (await conn.execute(select(requests).where(requests.c.id == request_id))).one()
        lifetime = row.expires_at - row.created_at
        shift = lifetime * fraction + dt.timedelta(seconds=1)
        reminder = None if row.next_reminder_at is None else row.next_reminder_at - shift
        await conn.execute(
            update(requests)
            .where(requests.c.id == request_id)
            .values(
                created_at=row.created_at - shift,
                expires_at=row.expires_at - shift,
                next_reminder_at=reminder,
            )
        )


async def _kinds(slack: SlackApi, request_id: str) -> list[str]:
    async with slack.container.engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(audit_events.c.kind)
                    .where(audit_events.c.chain_id == request_id)
                    .order_by(audit_events.c.seq)
                )
            ).scalars()
        )


def _dms(slack: SlackApi) -> list[tuple[str, str]]:
    assert slack.fake is not None
    return [
        (c.params["channel"], c.params.get("text", ""))
        for c in slack.fake.calls_to("chat.postMessage")
        if c.params["channel"].startswith("U")
    ]


async def test_reminders_go_once_to_approvers_who_have_not_acted(slack: SlackApi) -> None:
    created = await (await slack.post("/v1/requests", offer(action="sign_contract"))).json()
    assert slack.fake is not None
    await slack.fake.wait_for_calls("chat.postMessage", 1)  # the card in C0LEGAL
    await slack.slack(block_actions(created["id"], "approve_request", user="U01COO", channel="C0LEGAL"))

    async def decided() -> dict[str, Any] | None:
        view = await (await slack.get(f"/v1/requests/{created['id']}")).json()
        return view if view["decisions"] else None

    view = await eventually(decided, what="the click to be recorded as a decision")
    assert len(view["decisions"]) == 1
    await slack.container.dispatcher.run_until_idle()
    await _age(slack, created["id"], 0.30)  # past the 25% point only
    assert await reminders_job(slack.container) == 1
    assert await reminders_job(slack.container) == 0  # the same reminder is never queued twice
    await slack.container.dispatcher.run_until_idle()
    dms = _dms(slack)
    assert [user for user, _ in dms] == ["U02CFO"]  # U01COO already approved
    assert "Reminder (1 of 2)" in dms[0][1]
    assert (await _kinds(slack, created["id"])).count("reminder_sent") == 1


async def test_whom_a_reminder_is_for_follows_the_decisions(slack: SlackApi) -> None:
    created = await (await slack.post("/v1/requests", offer(action="sign_contract"))).json()
    request_id = created["id"]
    rule_people = ["U01COO", "U02CFO", "U01COO"]  # as a directory might list them, one twice

    async def reminders() -> tuple[list[str], list[str]]:
        async with slack.container.engine.connect() as conn:
            targets = await reminder_targets(conn, request_id)
            due = [user for user in ("U01COO", "U02CFO") if await reminder_due(conn, request_id, user)]
        return targets.of(rule_people), due

    async with slack.container.engine.connect() as conn:
        targets = await reminder_targets(conn, request_id)
        first = await reminder_due(conn, request_id, "U01COO")
    assert (targets.users, targets.usergroups) == (("U01COO", "U02CFO"), ())
    assert first is not None and first.title == created["title"]
    assert await reminders() == (["U01COO", "U02CFO"], ["U01COO", "U02CFO"])

    await slack.slack(block_actions(request_id, "approve_request", user="U01COO", channel="C0LEGAL"))

    async def acted() -> tuple[list[str], list[str]] | None:
        found = await reminders()
        return found if found[0] == ["U02CFO"] else None

    # One who acted is reminded no more, whether the reminder is being fanned out or about to be sent.
    assert await eventually(acted, what="U01COO's approval to count") == (["U02CFO"], ["U02CFO"])

    await slack.slack(block_actions(request_id, "approve_request", user="U02CFO", channel="C0LEGAL"))
    assert (await slack.final(request_id))["status"] == "approved"
    assert await reminders() == ([], [])  # decided: nobody is reminded


async def test_the_last_reminder_escalates_and_the_added_approver_can_decide(slack: SlackApi) -> None:
    created = await (await slack.post("/v1/requests", offer(action="sign_contract"))).json()
    assert slack.fake is not None
    await slack.fake.wait_for_calls("chat.postMessage", 1)
    # Before escalation the CEO is not an approver.
    await slack.slack(block_actions(created["id"], "approve_request", user="U03CEO", channel="C0LEGAL"))
    await slack.fake.wait_for_calls("chat.postEphemeral", 1)
    await slack.container.dispatcher.run_until_idle()  # the card's delivery has settled
    await _age(slack, created["id"], 0.55)  # past both points
    assert await reminders_job(slack.container) == 2
    await slack.container.dispatcher.run_until_idle()
    kinds = await _kinds(slack, created["id"])
    assert kinds.count("reminder_sent") == 2
    assert kinds.count("escalated") == 1
    dms = _dms(slack)
    assert "U03CEO" in {user for user, _ in dms}  # told: a card of their own
    ceo_card = [
        c
        for c in slack.fake.calls_to("chat.postMessage")
        if c.params["channel"] == "U03CEO" and c.params.get("blocks")
    ]
    assert ceo_card and created["id"] in json.dumps(ceo_card[0].params["blocks"])
    await slack.slack(block_actions(created["id"], "approve_request", user="U03CEO", channel="D03CEO"))
    await slack.slack(block_actions(created["id"], "approve_request", user="U01COO", channel="C0LEGAL"))
    view = await slack.final(created["id"])
    assert view["status"] == "approved"
    assert {d["approver"]["id"] for d in view["decisions"]} == {"U01COO", "U03CEO"}


async def test_a_due_reminder_is_sent_however_many_older_requests_are_pending(slack: SlackApi) -> None:
    """The sweep reads requests whose next reminder is due, not the oldest pending ones: requests
    without reminders (or not yet due) ahead of it in age never hold a due one back."""
    older = [(await (await slack.post("/v1/requests", offer())).json())["id"] for _ in range(3)]
    created = await (await slack.post("/v1/requests", offer(action="sign_contract"))).json()
    await _age(slack, created["id"], 0.30)
    for request_id in older:  # older still, with no reminders
        await _age(slack, request_id, 0.9)
    async with slack.container.engine.begin() as conn:
        assert await send_due_reminders(conn, limit=2) == 1
    async with slack.container.engine.begin() as conn:
        assert await send_due_reminders(conn, limit=2) == 0  # moved on to its next point
        row = (await conn.execute(select(requests).where(requests.c.id == created["id"]))).one()
    assert row.next_reminder_at == row.created_at + (row.expires_at - row.created_at) * 0.5
    assert (await _kinds(slack, created["id"])).count("reminder_sent") == 1
    await _age(slack, created["id"], 0.25)  # now past its second (last) point too
    async with slack.container.engine.begin() as conn:
        assert await send_due_reminders(conn, limit=2) == 1  # the last reminder (it escalates)
        row = (await conn.execute(select(requests).where(requests.c.id == created["id"]))).one()
    assert row.next_reminder_at is None


async def test_the_migration_makes_pending_requests_with_reminders_due(slack: SlackApi) -> None:
    """0009 adds next_reminder_at; pending requests whose rule has reminders are due at once, so the
    sweep sends what is owed and moves each on; the others have none."""
    reminded = (await (await slack.post("/v1/requests", offer(action="sign_contract"))).json())["id"]
    plain = (await (await slack.post("/v1/requests", offer())).json())["id"]

    def migrate(sync_conn: Any, revision: str, downgrade: bool) -> None:
        config = alembic_config()
        config.attributes["connection"] = sync_conn
        (command.downgrade if downgrade else command.upgrade)(config, revision)

    async with slack.container.engine.begin() as conn:
        await conn.run_sync(migrate, "0008", True)
    await slack.container.engine.dispose()  # connections that knew the old columns
    async with slack.container.engine.begin() as conn:
        await conn.run_sync(migrate, "head", False)
        rows = {
            r.id: r for r in await conn.execute(select(requests).where(requests.c.id.in_([reminded, plain])))
        }
    assert rows[reminded].next_reminder_at == rows[reminded].created_at
    assert rows[plain].next_reminder_at is None
    async with slack.container.engine.begin() as conn:
        assert await send_due_reminders(conn) == 0  # its first point (25%) is still ahead
        row = (await conn.execute(select(requests).where(requests.c.id == reminded))).one()
    assert row.next_reminder_at == row.created_at + (row.expires_at - row.created_at) * 0.25


async def test_requests_written_without_a_next_reminder_are_scheduled_at_start(slack: SlackApi) -> None:
    """An older replica still serving after the migration writes no next_reminder_at; a process of
    this version starting makes such requests due, and only those whose rule has reminders."""
    reminded = (await (await slack.post("/v1/requests", offer(action="sign_contract"))).json())["id"]
    plain = (await (await slack.post("/v1/requests", offer())).json())["id"]
    async with slack.container.engine.begin() as conn:
        await conn.execute(update(requests).values(next_reminder_at=None))
        assert await schedule_missing_reminders(conn) == 1
        rows = {
            r.id: r for r in await conn.execute(select(requests).where(requests.c.id.in_([reminded, plain])))
        }
    assert rows[reminded].next_reminder_at == rows[reminded].created_at
    assert rows[plain].next_reminder_at is None
