"""Database outage (issue 4, item 7): PostgreSQL restarted, then crashed and held down, under live traffic.

The promise: the service recovers by itself, `/readyz` reports the outage while it lasts, and no request,
click or callback is lost.

A real `approvals serve` subprocess runs on a PostgreSQL server of the test's own (tests/pg_cluster.py;
the shared server must never be restarted), with Slack in HTTP mode against the fake Slack and callbacks to
a local receiver, both in this process on real ports. Traffic never pauses while the database goes away:

- agents create requests, each under its own Idempotency-Key; an agent that gets 503 `database_unavailable`
  sends the same body with the same key again, as a real agent does, until it gets a 201. Every third
  request is allowed by policy at once, every third expires after 2 s (the scheduler's sweep), every third
  waits for a person; every one has a callback URL;
- an approver clicks Approve on the card of each request that waits for a person (staying a few cards
  behind, so that there is always one to click when the database goes away). A click Slack did not get a
  200 acknowledgement for is clicked again (a new `action_ts`), as a person would after Slack showed them
  an error.

Mid-traffic the database is restarted (`pg_ctl restart -m fast`: every session is cut) and, once the
service has served again, crashed (`pg_ctl stop -m immediate`) and held down until `/readyz` answers 503,
agents and the approver have been refused and the expiry, outbox and stranded-click sweeps have each
failed at least once; then it is started again (WAL replay) and
`/readyz` must come back to 200 on its own. Traffic goes on after; then it stops and, once everything
settled, the test checks that every request an agent got a 201 for exists exactly once and ended exactly
once in the state its kind implies, every acknowledged click was decided, every request has its card
once and a delivered callback under one webhook-id, no outbox row is left or failed, agents were only
ever answered 201 or 503 (never a 500, never silence), the process never died, and `approvals audit
verify` passes.

APPROVALS_OUTBOX_LEASE_SECONDS=2: a delivery made while the database vanished cannot be recorded, so its
row comes due again when its lease ends (60 s by default); the short lease keeps the test short. The
receiver may therefore see a callback twice, under one webhook-id (receivers deduplicate on it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.database import build_engine
from app.migrate import upgrade_to_head
from app.sandbox.slack_api import TEAM_ID, SandboxSlack
from approvals.identity.agents import add_agent
from approvals.tables import audit_events, decisions, outbox, requests, slack_clicks, slack_messages
from tests.conftest import (
    FINAL_KINDS,
    REQUIRE_POSTGRES,
    TEST_CHECKPOINT_KEY,
    TEST_POLICIES,
    clean_environment,
    stop_process,
)
from tests.eventually import eventually
from tests.pg_cluster import ClusterError, PgCluster, missing_tools
from tests.receiver import Receiver
from tests.slack_helpers import SIGNING_SECRET, USERS, block_actions, signed_headers
from tests.test_crash_safety import ROOT, SERVE
from tests.test_service_startup import free_port

APPROVER = "U01COO"
CHANNEL = "C0HIRING"
# Kinds of request, by index modulo 3: what each must end as.
ALLOWED, EXPIRING, HUMAN = 0, 1, 2
EXPECTED = {ALLOWED: ("approved", "policy"), EXPIRING: ("expired", "system"), HUMAN: ("approved", "human")}
AGENTS = 2
# Load pacing (not synchronisation): each agent makes about 10 requests a second, the approver clicks at
# most 20 times a second, and a refused call is tried again after 0.1 s (Retry-After says 1 s; shorter
# keeps the test short).
AGENT_PACE = 0.1
CLICK_PACE = 0.05
RETRY_PAUSE = 0.1
# Requests created in each phase before the next step, so every step happens under real traffic.
PER_PHASE = 20
BACKLOG = 3
# The sweeps that must have failed (and so be shown to come back) while the database was down.
SWEEPS = {"expire_requests", "dispatch_outbox", "stranded_clicks"}


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    """A PostgreSQL server of this test's own, running; removed after."""
    reason = missing_tools()
    if reason is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"APPROVALS_TEST_REQUIRE_POSTGRES=1 but no throwaway cluster can be made: {reason}")
        pytest.skip(reason)
    for attempt in range(3):  # another process may take the free port before PostgreSQL binds it
        server = PgCluster.create(free_port())
        try:
            server.start()
            break
        except ClusterError:
            server.destroy()
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        server.destroy()


@dataclass
class Traffic:
    """What the agents and the approver did, and what they were told."""

    created: dict[str, int] = field(default_factory=dict)  # request id -> kind
    keys: dict[str, str] = field(default_factory=dict)  # request id -> Idempotency-Key
    answers: Counter[str] = field(default_factory=Counter)  # "201", "503 database_unavailable", ...
    acked: dict[str, str] = field(default_factory=dict)  # request id -> action_ts of the acked click
    click_answers: Counter[str] = field(default_factory=Counter)
    refused_during_outage: Counter[str] = field(default_factory=Counter)  # "agent", "approver"
    outage: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def human_requests(self) -> list[str]:
        return [request_id for request_id, kind in self.created.items() if kind == HUMAN]


@dataclass
class Outage:
    """The service, its database, and the Slack and agent ends it talks to."""

    cluster: PgCluster
    engine: AsyncEngine
    fake: SandboxSlack
    receiver: Receiver
    session: aiohttp.ClientSession
    logs: Path
    key: str = ""
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    traffic: Traffic = field(default_factory=Traffic)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = clean_environment()
        return env | {
            "APPROVALS_DATABASE_URL": self.cluster.url(),
            "APPROVALS_CHECKPOINT_KEY": TEST_CHECKPOINT_KEY,
        }

    async def start_service(self) -> None:
        policies = self.logs / "policies.yml"
        policies.write_text(TEST_POLICIES)
        self.port = free_port()
        env = self.env() | {
            "APPROVALS_PORT": str(self.port),
            "APPROVALS_POLICIES": str(policies),
            "APPROVALS_AUTO_MIGRATE": "false",
            "APPROVALS_SCHEDULER_INTERVAL_SECONDS": "0.2",
            "APPROVALS_OUTBOX_LEASE_SECONDS": "2",
            "APPROVALS_CHECKPOINT_INTERVAL_SECONDS": "1",
            "APPROVALS_CALLBACK_ALLOW_HOSTS": "127.0.0.1",
            "SLACK_BOT_TOKEN": "xoxb-outage",
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": self.fake.api_url,
        }
        with (self.logs / "serve.log").open("wb") as out:
            self.proc = subprocess.Popen(SERVE, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        await eventually(lambda: self.ready(200), what="serve to become ready")

    def service_log(self) -> str:
        return (self.logs / "serve.log").read_text(errors="replace")

    async def ready(self, status: int) -> bool:
        """True when /readyz answers `status` (200 ready, 503 unavailable)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.service_log()[-3000:]}")
        try:
            async with self.session.get(self.base + "/readyz") as resp:
                body = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False
        if resp.status == 503:
            assert body["database"] in ("unreachable", "not answering"), body
        return resp.status == status

    # -- the traffic --------------------------------------------------------------------------------

    async def agent(self, number: int, counter: Iterator[int]) -> None:
        """Create requests until told to stop; each is retried with its own key until it gets a 201."""
        traffic = self.traffic
        while not traffic.stop.is_set():
            index = next(counter)
            kind = index % 3
            body: dict[str, Any] = {
                "action": "read_mail" if kind == ALLOWED else "send_offer_letter",
                "title": f"Request {index}",
                "summary": "during a database outage",
                "params": {"index": index},
                "on_behalf_of": "recruiter@example.com",
                "links": [],
                "callback_url": self.receiver.url(f"/hook/{index}"),
            }
            if kind == EXPIRING:
                body["expires_in"] = 2
            key = f"outage-{number}-{index}"
            request_id = await self.create(body, key)
            traffic.created[request_id] = kind
            traffic.keys[request_id] = key
            await asyncio.sleep(AGENT_PACE)

    async def create(self, body: dict[str, Any], key: str) -> str:
        headers = {"Authorization": f"Bearer {self.key}", "Idempotency-Key": key}
        traffic = self.traffic
        while True:
            try:
                async with self.session.post(self.base + "/v1/requests", json=body, headers=headers) as resp:
                    answer = await resp.json()
                    if resp.status == 201:
                        traffic.answers["201"] += 1
                        return str(answer["id"])
                    label = f"{resp.status} {answer.get('error', {}).get('code')}"
                    if resp.status == 503:
                        assert resp.headers.get("Retry-After") == "1"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                label = f"no answer ({type(exc).__name__})"
            traffic.answers[label] += 1
            if traffic.outage:
                traffic.refused_during_outage["agent"] += 1
            await asyncio.sleep(RETRY_PAUSE)

    async def approver(self) -> None:
        """Click Approve on every human request's card until each click was acknowledged.

        While all is well the approver stays BACKLOG cards behind, so that there is always a card to
        click when the database goes away; during the outage and at the end they click everything.
        """
        traffic = self.traffic
        while not (traffic.stop.is_set() and len(traffic.acked) == len(traffic.human_requests())):
            cards = {
                card["metadata"]["event_payload"]["request_id"]: card["ts"]
                for card in self.fake.messages_in(CHANNEL)
                if "metadata" in card
            }
            todo = [r for r in traffic.human_requests() if r not in traffic.acked and r in cards]
            keep = 0 if traffic.outage or traffic.stop.is_set() else BACKLOG
            for request_id in todo[: max(len(todo) - keep, 0)][:1]:
                await self.click(request_id, cards[request_id])
            await asyncio.sleep(CLICK_PACE)

    async def click(self, request_id: str, ts: str) -> None:
        action_ts = f"{int(time.time())}.{next(ACTION_TS):06d}"
        payload = block_actions(
            request_id, "approve_request", user=APPROVER, channel=CHANNEL, message_ts=ts, action_ts=action_ts
        )
        body = urlencode({"payload": json.dumps(payload)})
        try:
            async with self.session.post(
                self.base + "/slack/events", data=body, headers=signed_headers(body)
            ) as resp:
                status = str(resp.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            status = f"no answer ({type(exc).__name__})"
        self.traffic.click_answers[status] += 1
        if status == "200":
            self.traffic.acked[request_id] = action_ts
        elif self.traffic.outage:
            self.traffic.refused_during_outage["approver"] += 1

    async def created_more(self, count: int) -> None:
        """Wait until the agents got `count` more 201s than now."""
        target = len(self.traffic.created) + count

        async def enough() -> bool:
            for task in self.tasks:  # an agent or the approver that failed says why, not a timeout
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise AssertionError(f"traffic failed: {task.exception()!r}") from task.exception()
            return len(self.traffic.created) >= target

        await eventually(enough, what=f"{count} more requests to be created")

    async def scalar(self, query: Any) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).scalar_one()


ACTION_TS = itertools.count(1)


def failed_jobs(log: str) -> set[str]:
    """The scheduler jobs that logged `job_failed` in these JSON log lines."""
    failed = set()
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a traceback's continuation line
        if isinstance(entry, dict) and entry.get("event") == "job_failed":
            failed.add(str(entry.get("job")))
    return failed


@pytest.fixture
async def outage(cluster: PgCluster, tmp_path: Path) -> AsyncIterator[Outage]:
    engine = build_engine(cluster.url())
    await upgrade_to_head(engine)
    async with engine.begin() as conn:
        agent = await add_agent(
            conn, name="outage-bot", owner="ops@example.com", actions=["send_offer_letter", "read_*"]
        )
    fake = await SandboxSlack(wall_clock=True).start()  # wall clock: a repeated post looks for its card
    fake.users.update(USERS)
    receiver = await Receiver().start()
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        harness = Outage(cluster, engine, fake, receiver, session, tmp_path, key=agent.api_key)
        try:
            yield harness
        finally:
            harness.traffic.stop.set()
            if harness.proc is not None:
                await stop_process(harness.proc)
            await receiver.stop()
            await fake.stop()
            await engine.dispose()


async def test_the_service_rides_out_a_database_restart_and_crash_losing_nothing(outage: Outage) -> None:
    await outage.start_service()
    traffic = outage.traffic
    counter = itertools.count()
    tasks = outage.tasks
    tasks += [asyncio.create_task(outage.agent(n, counter)) for n in range(AGENTS)]
    tasks.append(asyncio.create_task(outage.approver()))
    try:
        await outage.created_more(PER_PHASE)

        # 1. A restart: every session is cut, the server is back within a fraction of a second.
        await asyncio.to_thread(outage.cluster.restart, "fast")
        await outage.created_more(PER_PHASE)

        # 2. A crash, held: /readyz must say so; agents, the approver and every sweep meet it.
        traffic.outage = True
        log_mark = len(outage.service_log())
        await asyncio.to_thread(outage.cluster.stop, "immediate")
        went_down = time.monotonic()
        await eventually(lambda: outage.ready(503), what="/readyz to report the outage")

        def failed_sweeps() -> set[str]:
            return failed_jobs(outage.service_log()[log_mark:])

        async def everyone_refused() -> bool:
            refused = traffic.refused_during_outage
            return failed_sweeps() >= SWEEPS and refused["agent"] >= 3 and refused["approver"] >= 2

        try:
            await eventually(everyone_refused, what="traffic and sweeps to meet the outage")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}: refused {traffic.refused_during_outage}, {failed_sweeps()}"
            ) from None
        assert await outage.ready(503)  # still down, and /readyz still says so
        await asyncio.to_thread(outage.cluster.start)  # crash recovery: the WAL is replayed
        back_up = time.monotonic()
        await eventually(lambda: outage.ready(200), what="the service to recover")
        down_for, ready_after = back_up - went_down, time.monotonic() - back_up
        traffic.outage = False
        await outage.created_more(PER_PHASE)
        # The agents finish what they started; the approver clicks what is left.
        traffic.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    finally:
        traffic.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # Everything settles on its own: every request final, every delivery made.
    async def settled() -> bool:
        pending = await outage.scalar(
            select(func.count()).select_from(requests).where(requests.c.status == "pending")
        )
        undelivered = await outage.scalar(
            select(func.count()).select_from(outbox).where(outbox.c.status == "pending")
        )
        return bool(pending == 0 and undelivered == 0)

    await eventually(settled, what="every request and delivery to settle", timeout=60)
    created = traffic.created

    async def called_back() -> bool:
        ids = {json.loads(hit.body)["data"]["id"] for hit in outage.receiver.received}
        return ids >= set(created)

    await eventually(called_back, what="a callback for every request")

    # Agents were told 201 or 503 database_unavailable (and retried with the same key), never a 500 or
    # silence; Slack got the ack or Bolt's 500 when the click could not be stored before it.
    assert set(traffic.answers) == {"201", "503 database_unavailable"}, traffic.answers
    # (404 is Bolt's answer when an ack misses Slack's 3 s on a loaded machine: not acked, clicked again.)
    assert {"200", "500"} <= set(traffic.click_answers) <= {"200", "500", "404"}, traffic.click_answers

    async with outage.engine.connect() as conn:
        rows = {row.id: row for row in await conn.execute(select(requests))}
        finals = Counter(
            row.chain_id
            for row in await conn.execute(
                select(audit_events.c.chain_id).where(audit_events.c.kind.in_(FINAL_KINDS))
            )
        )
        human = {
            (row.request_id, row.approver_id, row.decision) for row in await conn.execute(select(decisions))
        }
        clicks = {row.dedupe_key: row.status for row in await conn.execute(select(slack_clicks))}
        cards = Counter(row.request_id for row in await conn.execute(select(slack_messages.c.request_id)))
        failed = await conn.scalar(select(func.count()).select_from(outbox).where(outbox.c.status != "done"))

    # Every request an agent got a 201 for exists, once (retries with the key created nothing more).
    assert set(rows) == set(created)
    assert len(set(traffic.keys.values())) == len(created)
    for request_id, kind in created.items():
        assert (rows[request_id].status, rows[request_id].decided_by) == EXPECTED[kind], request_id
        assert finals[request_id] == 1, request_id  # exactly one final state
    # Every acknowledged click was decided: stored, processed, and the request approved by that person.
    assert set(traffic.acked) == set(traffic.human_requests())
    for request_id, action_ts in traffic.acked.items():
        assert clicks[f"action:{TEAM_ID}:{APPROVER}:{action_ts}"] == "done"
        assert (request_id, APPROVER, "approve") in human
    assert set(clicks.values()) == {"done"}
    # One card per request that waited for a person, never a second one in Slack.
    waiting = {r for r, kind in created.items() if kind != ALLOWED}
    assert set(cards) == waiting and set(cards.values()) == {1}
    assert len(outage.fake.messages_in(CHANNEL)) == len(waiting)
    # Every callback delivered, one webhook-id per request, and it says how the request ended.
    assert failed == 0
    by_request: dict[str, set[str]] = {}
    for hit in outage.receiver.received:
        event = json.loads(hit.body)
        by_request.setdefault(event["data"]["id"], set()).add(hit.headers["webhook-id"])
        assert event["type"] == f"request.{rows[event['data']['id']].status}"
    assert set(by_request) == set(created)
    assert {len(ids) for ids in by_request.values()} == {1}

    # The process never died and never answered 500; the audit chains and checkpoints verify.
    assert outage.proc is not None and outage.proc.poll() is None
    log = outage.service_log()
    assert '"unhandled_error"' not in log
    verify = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli.main", "audit", "verify", "--json"],
        cwd=ROOT,
        env=outage.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["ok"] and report["chains"] >= len(created)
    print(
        f"\n{len(created)} requests, {len(traffic.acked)} clicks acked, answers {dict(traffic.answers)}, "
        f"clicks {dict(traffic.click_answers)}, database down {down_for:.1f} s, "
        f"/readyz 200 again {ready_after:.2f} s after it was back, "
        f"{len(outage.receiver.received)} callbacks received"
    )


async def test_readyz_reports_a_database_that_hangs_instead_of_refusing(outage: Outage) -> None:
    """A frozen server keeps its connections open and answers nothing: the probe must not hang with it."""
    await outage.start_service()
    frozen = await asyncio.to_thread(outage.cluster.freeze)
    try:
        answers = []
        for _ in range(2):  # the second probe finds the first still waiting, and says so too
            async with outage.session.get(outage.base + "/readyz") as resp:
                answers.append((resp.status, (await resp.json())["database"]))
    finally:
        outage.cluster.thaw(frozen)
    assert answers == [(503, "not answering")] * 2
    await eventually(lambda: outage.ready(200), what="the service to recover after the thaw")
