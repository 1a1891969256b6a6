"""Crash safety (DESIGN sections 1, 2 and 5): SIGKILL a real `approvals serve` at the bad moment, restart it.

Each test runs `approvals serve` as a subprocess on PostgreSQL with APPROVALS_FAILPOINT naming the
moment to die (app/failpoints.py), drives it there, checks it died of SIGKILL (no cleanup ran), then
starts it again on the same database without the failpoint and polls until the promise holds: the card
posted exactly once, no second live card, the callback delivered again under the same webhook-id, the
acknowledged click decided. The fake Slack and the callback receiver live in this process on real ports,
so they see both lives of the service.

APPROVALS_OUTBOX_LEASE_SECONDS=1 lets the restarted service retake rows the dead one had leased after a
second instead of a minute; APPROVALS_SCHEDULER_INTERVAL_SECONDS=0.2 makes its sweeps quick.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.database import build_engine
from app.dispatcher import Settlement
from app.sandbox.slack_api import SandboxSlack
from approvals.delivery.outbox import CALLBACK, SLACK_POST, Claimed
from approvals.identity.agents import add_agent
from approvals.tables import delivery_attempts, outbox, requests, slack_clicks, slack_messages
from tests.conftest import ROOT, _clear_postgres, clean_environment, free_port, offer, stop_process
from tests.eventually import eventually
from tests.slack_helpers import SIGNING_SECRET, USERS, SlackApi, block_actions, signed_headers, slack_service

SERVE = [sys.executable, "-m", "app.cli.main", "serve"]
KILLED = -signal.SIGKILL


async def select_rows(engine: AsyncEngine, table: Any, *where: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list(await conn.execute(select(table).where(*where)))


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks, checked the way a receiver would."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return f"v1,{expected}" in headers["webhook-signature"].split(" ")


@dataclass
class Hook:
    """The agent's callback endpoint; with `hold_first` it keeps the first delivery waiting, unanswered."""

    hold_first: bool = False
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> Hook:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/hook"
        return self

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        if self.hold_first and len(self.received) == 1:
            # Mid-delivery: the service is killed while it waits for this answer.
            await asyncio.wait_for(self.release.wait(), 30)
        return web.Response(text="ok")


@dataclass
class Service:
    """One life of `approvals serve`; its output goes to files (an unread pipe would stall it)."""

    proc: subprocess.Popen[bytes]
    port: int
    stderr: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Crash:
    """What a crash test needs: the database, a fake Slack, and the service's lives."""

    database_url: str
    engine: AsyncEngine
    logs: Path
    session: aiohttp.ClientSession
    fake: SandboxSlack | None = None
    services: list[Service] = field(default_factory=list)

    async def slack(self) -> SandboxSlack:
        # wall_clock: the service asks conversations.history for messages since a moment.
        self.fake = await SandboxSlack(wall_clock=True).start()
        self.fake.users.update(USERS)
        self.fake.usergroups["S0FINANCE"] = ["U07FIN", "U02CFO"]
        return self.fake

    async def agent(self, actions: list[str]) -> tuple[str, str]:
        """A registered agent: its API key and webhook secret."""
        async with self.engine.begin() as conn:
            new = await add_agent(conn, name="crash-bot", owner="crash@example.com", actions=actions)
        return new.api_key, new.webhook_secret

    async def start(self, failpoint: str | None = None) -> Service:
        port = free_port()
        env = clean_environment()
        env |= {
            "APPROVALS_DATABASE_URL": self.database_url,
            "APPROVALS_PORT": str(port),
            "APPROVALS_POLICIES": str(ROOT / "tests" / "data" / "policies.yml"),
            "APPROVALS_AUTO_MIGRATE": "false",
            "APPROVALS_SCHEDULER_INTERVAL_SECONDS": "0.2",
            "APPROVALS_OUTBOX_LEASE_SECONDS": "1",
            "APPROVALS_CALLBACK_ALLOW_HOSTS": "127.0.0.1",
        }
        if self.fake is not None:
            env |= {
                "SLACK_BOT_TOKEN": "xoxb-crash",
                "SLACK_SIGNING_SECRET": SIGNING_SECRET,
                "SLACK_API_URL": self.fake.api_url,
            }
        if failpoint is not None:
            env["APPROVALS_FAILPOINT"] = failpoint
        life = len(self.services) + 1
        stderr = self.logs / f"serve-{life}.err"
        with (self.logs / f"serve-{life}.out").open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(SERVE, cwd=ROOT, env=env, stdout=out, stderr=err)
        service = Service(proc, port, stderr)
        self.services.append(service)
        await self._ready(service)
        return service

    async def _ready(self, service: Service) -> None:
        async def ready() -> bool:
            if service.proc.poll() is not None:
                raise AssertionError(
                    f"serve exited with {service.proc.returncode}: {service.stderr.read_text()}"
                )
            try:
                async with self.session.get(service.base + "/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, what="serve to become ready")

    async def died_at(self, service: Service, failpoint: str) -> None:
        """The service died of SIGKILL, at that failpoint."""

        async def exited() -> bool:
            return service.proc.poll() is not None

        await eventually(exited, what=f"serve to die at failpoint {failpoint}")
        assert service.proc.returncode == KILLED, service.stderr.read_text()
        assert f"failpoint {failpoint}" in service.stderr.read_text().splitlines()

    async def kill(self, service: Service) -> None:
        service.proc.kill()  # SIGKILL

        async def exited() -> bool:
            return service.proc.poll() is not None

        await eventually(exited, what="serve to exit after SIGKILL")
        assert service.proc.returncode == KILLED

    async def create(self, service: Service, key: str, body: dict[str, Any]) -> str:
        async with self.session.post(
            service.base + "/v1/requests", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            assert resp.status == 201, await resp.text()
            return str((await resp.json())["id"])

    async def view(self, service: Service, key: str, request_id: str) -> dict[str, Any]:
        async with self.session.get(
            f"{service.base}/v1/requests/{request_id}", headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())

    async def rows(self, table: Any, *where: Any) -> list[Any]:
        return await select_rows(self.engine, table, *where)

    async def outbox_rows(self, request_id: str, kind: str) -> list[Any]:
        return await self.rows(outbox, outbox.c.request_id == request_id, outbox.c.kind == kind)

    async def all_done(self, request_id: str, kind: str) -> bool:
        rows = await self.outbox_rows(request_id, kind)
        return bool(rows) and all(row.status == "done" for row in rows)

    async def stop(self) -> None:
        for service in self.services:
            await stop_process(service.proc)
        if self.fake is not None:
            await self.fake.stop()
        await self.engine.dispose()


@pytest.fixture
async def crash(postgres_database: str, tmp_path: Path) -> AsyncIterator[Crash]:
    _clear_postgres(postgres_database)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15), trust_env=False) as session:
        harness = Crash(postgres_database, build_engine(postgres_database), tmp_path, session)
        try:
            yield harness
        finally:
            await harness.stop()


# -- (a) the request is committed, the card is not posted yet -------------------------------------------


async def test_a_card_not_yet_posted_when_the_process_dies_is_posted_exactly_once(crash: Crash) -> None:
    fake = await crash.slack()
    key, _ = await crash.agent(["send_offer_letter"])
    first = await crash.start(failpoint="before_slack_post")
    request_id = await crash.create(first, key, offer())
    await crash.died_at(first, "before_slack_post")
    assert fake.calls_to("chat.postMessage") == []
    [row] = await crash.outbox_rows(request_id, SLACK_POST)
    assert (row.status, row.attempts) == ("pending", 1)  # leased by the dead process, never settled

    await crash.start()
    await eventually(lambda: crash.all_done(request_id, SLACK_POST), what="the card to be posted")
    [post] = fake.succeeded("chat.postMessage")
    assert post.params["channel"] == "C0HIRING"
    assert post.params["metadata"] == {
        "event_type": "approval_card",
        "event_payload": {"request_id": request_id, "destination": "C0HIRING"},
    }
    [card] = fake.messages_in("C0HIRING")
    [message] = await crash.rows(slack_messages, slack_messages.c.request_id == request_id)
    assert (message.channel, message.ts) == ("C0HIRING", card["ts"])
    # The second attempt looked for a card the first one might have posted, found none, and posted.
    [lookup] = fake.calls_to("conversations.history")
    assert (lookup.params["channel"], lookup.params["include_all_metadata"]) == ("C0HIRING", "1")


# -- (b) Slack accepted the post, the outbox row is not settled ------------------------------------------


@pytest.mark.parametrize(
    ("action", "channels"),
    [
        ("send_offer_letter", {"C0HIRING": "C0HIRING"}),
        ("refund_customer", {"U07FIN": "D07FIN", "U02CFO": "D02CFO"}),
    ],
    ids=["channel", "direct-messages"],
)
async def test_a_card_posted_just_before_the_process_died_is_not_posted_again(
    crash: Crash, action: str, channels: dict[str, str]
) -> None:
    fake = await crash.slack()
    key, _ = await crash.agent([action])
    first = await crash.start(failpoint="after_slack_post")
    request_id = await crash.create(first, key, offer(action=action))
    await crash.died_at(first, "after_slack_post")
    posted_before = len(fake.succeeded("chat.postMessage"))
    assert posted_before >= 1  # Slack has a live card...
    assert await crash.rows(slack_messages, slack_messages.c.request_id == request_id) == []  # ...we don't

    await crash.start()
    await eventually(lambda: crash.all_done(request_id, SLACK_POST), what="the posts to be settled")
    assert len(fake.succeeded("chat.postMessage")) == len(channels)
    messages = await crash.rows(slack_messages, slack_messages.c.request_id == request_id)
    assert {m.destination: m.channel for m in messages} == channels
    for m in messages:
        [card] = fake.messages_in(m.channel)  # one live card per destination, and it is the one we track
        assert m.ts == card["ts"]
        assert card["metadata"]["event_payload"] == {"request_id": request_id, "destination": m.destination}


# -- (c) the process dies in the middle of a callback -------------------------------------------------


@pytest.mark.parametrize("moment", ["awaiting-the-answer", "after_callback"])
async def test_a_callback_cut_off_by_the_crash_is_delivered_again_with_the_same_webhook_id(
    crash: Crash, moment: str
) -> None:
    hook = await Hook(hold_first=moment == "awaiting-the-answer").start()
    try:
        key, secret = await crash.agent(["read_*"])
        failpoint = moment if moment == "after_callback" else None
        first = await crash.start(failpoint=failpoint)
        request_id = await crash.create(first, key, offer(action="read_mail", callback_url=hook.url))

        async def first_delivery() -> bool:
            return len(hook.received) >= 1

        await eventually(first_delivery, what="a callback to arrive")
        if failpoint is None:
            await crash.kill(first)  # while the receiver has not answered yet
            hook.release.set()
        else:
            await crash.died_at(first, failpoint)  # the receiver answered 200; nobody recorded it
        [row] = await crash.outbox_rows(request_id, CALLBACK)
        assert (row.status, row.attempts) == ("pending", 1)

        second = await crash.start()

        async def second_delivery() -> bool:
            return len(hook.received) >= 2

        await eventually(second_delivery, what="the callback to be delivered again")
        await eventually(lambda: crash.all_done(request_id, CALLBACK), what="the callback to be settled")
    finally:
        await hook.stop()
    assert len(hook.received) == 2
    (headers1, body1), (headers2, body2) = hook.received
    assert headers1["webhook-id"] == headers2["webhook-id"]
    assert verify(secret, headers1, body1)
    assert verify(secret, headers2, body2)
    assert [json.loads(b)["data"]["id"] for b in (body1, body2)] == [request_id, request_id]
    assert json.loads(body2)["type"] == "request.approved"
    attempts = await crash.rows(delivery_attempts, delivery_attempts.c.request_id == request_id)
    # The cut-off attempt is not lost from the record: it shows as interrupted, then the delivery.
    assert [(a.kind, a.attempt, a.result) for a in attempts] == [
        (CALLBACK, 1, "interrupted"),
        (CALLBACK, 2, "delivered"),
    ]
    view = await crash.view(second, key, request_id)
    assert [a["result"] for a in view["deliveries"]] == ["interrupted", "delivered"]


# -- (d) the click is acknowledged to Slack, not decided yet ---------------------------------------------


async def test_an_acknowledged_click_is_decided_after_the_process_dies(crash: Crash) -> None:
    fake = await crash.slack()
    key, _ = await crash.agent(["send_offer_letter"])
    first = await crash.start(failpoint="after_click_ack")
    request_id = await crash.create(first, key, offer())
    [post] = await fake.wait_for_calls("chat.postMessage", 1, timeout=30)
    await eventually(lambda: crash.all_done(request_id, SLACK_POST), what="the card to be recorded")
    [card] = fake.messages_in("C0HIRING")
    body = urlencode(
        {
            "payload": json.dumps(
                block_actions(request_id, "approve_request", user="U01COO", message_ts=card["ts"])
            )
        }
    )
    try:
        async with crash.session.post(
            first.base + "/slack/events", data=body, headers=signed_headers(body)
        ) as resp:
            assert resp.status == 200
    except aiohttp.ClientError:
        pass  # the kill may beat the ack's bytes onto the wire; the click was stored before ack() either way
    await crash.died_at(first, "after_click_ack")
    [click] = await crash.rows(slack_clicks, slack_clicks.c.request_id == request_id)
    assert click.status == "pending"
    [pending] = await crash.rows(requests, requests.c.id == request_id)
    assert pending.status == "pending"

    second = await crash.start()

    async def decided() -> bool:
        [row] = await crash.rows(requests, requests.c.id == request_id)
        return bool(row.status != "pending")

    await eventually(decided, what="the stranded click to be decided")
    view = await crash.view(second, key, request_id)
    assert (view["status"], view["decided_by"]) == ("approved", "human")
    [decision] = view["decisions"]
    assert (decision["approver"]["id"], decision["decision"]) == ("U01COO", "approve")
    [click] = await crash.rows(slack_clicks, slack_clicks.c.request_id == request_id)
    assert click.status == "done"
    # ...and the live card shows it.
    [update] = await fake.wait_for_calls("chat.update", 1, timeout=30)
    assert (update.params["channel"], update.params["ts"]) == (post.params["channel"], card["ts"])


# -- the look-up before a repeated post, when Slack cannot answer it --------------------------------------


@pytest.fixture
async def slack(database_url: str) -> AsyncIterator[SlackApi]:
    async for api in slack_service(database_url):
        yield api


async def _repeat_post(slack: SlackApi, destination: str) -> Settlement:
    """A second attempt at posting a pending request's card to `destination` (none is recorded there)."""
    created = await (await slack.post("/v1/requests", offer())).json()
    assert slack.fake is not None and slack.container.slack is not None
    await slack.fake.wait_for_calls("chat.postMessage", 1)
    await slack.container.dispatcher.run_until_idle()
    [row] = await select_rows(
        slack.container.engine, outbox, outbox.c.request_id == created["id"], outbox.c.kind == SLACK_POST
    )
    item = Claimed(row.id, SLACK_POST, created["id"], row.dedupe_key, {"destination": destination}, 2)
    return await slack.container.slack.delivery.post(item)


async def test_without_the_history_scopes_a_repeated_post_still_posts(slack: SlackApi) -> None:
    assert slack.fake is not None
    slack.fake.fail("conversations.history", error="missing_scope")
    outcome = await _repeat_post(slack, "C0ELSEWHERE")
    assert outcome.result == "delivered"
    assert [c.params["channel"] for c in slack.fake.succeeded("chat.postMessage")] == [
        "C0HIRING",
        "C0ELSEWHERE",
    ]
    assert len(slack.fake.calls_to("conversations.history")) == 1


async def test_when_slack_is_busy_a_repeated_post_waits_instead_of_risking_a_second_card(
    slack: SlackApi,
) -> None:
    assert slack.fake is not None
    slack.fake.fail("conversations.history", status=429, retry_after=7)
    outcome = await _repeat_post(slack, "C0ELSEWHERE")
    assert (outcome.result, outcome.retry_in, outcome.status_code) == ("retry", 7.0, 429)
    assert len(slack.fake.succeeded("chat.postMessage")) == 1
