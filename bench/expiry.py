"""Expiry benchmark: expire 100,000 due requests and deliver their callbacks, each against a bare baseline.

Usage:

    .venv/bin/python bench/expiry.py [--requests 100000] [--steady-rate 1000] [--steady-seconds 10]
                                     [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
                                     [--scheduler-interval S] [--steady-without-callbacks]
                                     [--keep-slack-rows] [--profile] [--skip-steady] [--skip-throughput]
                                     [--skip-delivery] [--skip-verify]

What it does, in one run on one PostgreSQL server (the figures are printed as a table at the end):

1. **Expiry throughput.** Drops and recreates the database `bench_expiry`, migrates it, registers an agent
   and records the policy version, then seeds --requests pending requests that are all due (their
   `expires_at` a second in the past), each with a callback URL. Seeding is bulk `COPY`, not the create
   path (which would take minutes), but it writes what `create_request` writes: the request row as it
   stores it (policy, rule snapshot, payload hash) and the request's audit chain genesis, the
   `request_created` and `policy_evaluated` events hash-chained with `approvals.audit.events.event_hash`, and its
   `chain_heads` row. (Not the `slack_notify` outbox row: Slack is off here.) The same rows are copied
   into a plain table `bench_baseline_requests` (same columns, same indexes) in the same database.
   - baseline: a bare loop of `UPDATE ... FROM (SELECT ... ORDER BY expires_at LIMIT 500 FOR NO KEY
     UPDATE SKIP LOCKED)` transactions on that copy, through the same stack (SQLAlchemy async, psycopg 3),
     until nothing is due: the least any expiry sweep must do;
   - service: `app.scheduler.expire_requests_job`, the scheduler's own job (batches of 500 through
     `approvals.requests.use_cases.expire_due_requests`, set-based per batch: the conditional UPDATE … RETURNING,
     each `request_expired` event appended to its chain, the `slack_update` and `callback` outbox
     rows), on a real
     `Container` built by `app.bootstrap.build_container`, with outbox delivery held back so that only
     expiry is measured.
   Then `approvals.audit.events.verify_all` recomputes every chain (unless --skip-verify).
2. **Callback deliveries.** The expiry left one `callback` outbox row per request and one `slack_update`
   row. Slack is off here, so no handler would ever take the latter: they are marked done first, as they
   would be once delivered with Slack on (--keep-slack-rows leaves them pending, as a Slack-less
   deployment does forever: every claim then skips over them). A local receiver (this script with
   --receiver-port, in its own process: answers 200 to every POST and counts them) stands in for the
   agents.
   - baseline: a bare loop on a copy of the outbox (`bench_baseline_outbox`): lease 50 due `callback`
     rows with `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`, POST a small
     JSON body for each (32 at a time, as the service, on one keep-alive aiohttp session), mark them done
     in one UPDATE;
   - service: the real `OutboxDispatcher.run_until_idle()` with the real `CallbackDelivery` handler
     (batches of 50, 32 at a time: the batch's requests read back in two statements, Standard Webhooks
     signature, the SSRF check at every attempt with keep-alive connections pinned to the checked
     addresses, attempts recorded by group commit).
   The receiver's count is checked against the number of rows. --skip-delivery stops phase 1 after the
   expiry (and verification): what to run while working on the sweep.
3. **Expiry lateness** (unless --skip-steady). Recreates `bench_expiry_steady`, starts a real `approvals
   serve` on it (scheduler interval 1 s unless --scheduler-interval; callbacks on, delivered by the same
   process while it expires, unless --steady-without-callbacks), and seeds --steady-rate x
   --steady-seconds pending requests whose `expires_at` are spread evenly over --steady-seconds, starting
   a few seconds after the seeding commits. A watcher polls new `request_expired` events every 50 ms
   until every request has expired. Lateness = the event's time (`audit_events.created_at`, the database
   clock at the start of the sweep's batch) minus `expires_at`; "visible" lateness = when the watcher
   first saw the committed event minus `expires_at` (the batch's commit, plus up to 50 ms of polling).
   Slack is off, so the `slack_update` rows stay. --skip-throughput runs this phase alone.

Targets: >= 5,000 expiries/s, >= 1,000 deliveries/s, expiry lateness p99 <= 2 s.

It measures and never asserts: the exit status is 0 whatever the figures (non-zero only if it could not run
at all). With --profile the service's expiry and delivery phases run under cProfile and the top functions
are printed. The number of SQL statements each phase executed (counted with a SQLAlchemy event hook) is
printed with it: most of the time goes to round trips.

CPU is reported per item for this process (where the service code runs) and for PostgreSQL (the backends
connected to the bench database, from /proc): on a shared host these move far less than wall-clock rates,
so compare them before and after a change, in alternating runs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import datetime as dt
import json
import os
import pstats
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from _common import (
    PENDING_OFFER_POLICIES,
    approvals_cli,
    cpu_seconds,
    database_url,
    fmt,
    free_port,
    host_cpu_seconds,
    recreate_databases,
    report_host_busy,
)
from aiohttp import web
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.bootstrap import Container, build_container
from app.config import Settings
from app.database import build_engine
from app.delivery.callbacks import CALLBACK_CONCURRENCY
from app.dispatcher import OutboxDispatcher
from app.logs import configure_logging
from app.migrate import upgrade_to_head
from app.scheduler import expire_requests_job
from approvals.audit.events import GENESIS_HASH, canonical_json, canonical_text, event_hash, verify_all
from approvals.db import db_now
from approvals.identity.agents import add_agent
from approvals.identity.keys import new_id
from approvals.policies.policy_file import evaluate, load_policies
from approvals.policies.versions import ActivePolicies, record_policy_version
from approvals.requests.use_cases import NewRequest

HERE = Path(__file__).resolve().parent
EXPIRY_DB = "bench_expiry"
STEADY_DB = "bench_expiry_steady"
ACTION = "send_offer_letter"
BATCH = 500  # expire_requests_job's batch
OUTBOX_BATCH = 50  # app.dispatcher.BATCH
DELIVERY_CONCURRENCY = CALLBACK_CONCURRENCY  # callbacks in flight at once, as the service allows
TARGET_EXPIRIES = 5000.0
TARGET_DELIVERIES = 1000.0
TARGET_LATENESS_P99 = 2.0
POLL_SECONDS = 0.05

BASELINE_EXPIRE = text(
    """
    UPDATE bench_baseline_requests AS r
       SET status = 'expired', decided_by = 'system', decided_at = clock_timestamp(),
           reason = 'no decision before expiry'
      FROM (SELECT id FROM bench_baseline_requests
             WHERE status = 'pending' AND expires_at <= clock_timestamp()
             ORDER BY expires_at LIMIT :limit FOR NO KEY UPDATE SKIP LOCKED) AS due
     WHERE r.id = due.id
    RETURNING r.id
    """
)
BASELINE_CLAIM = text(
    """
    UPDATE bench_baseline_outbox
       SET attempts = attempts + 1, next_attempt_at = clock_timestamp() + interval '60 seconds',
           updated_at = clock_timestamp()
     WHERE id IN (SELECT id FROM bench_baseline_outbox
                   WHERE status = 'pending' AND next_attempt_at <= clock_timestamp() AND kind = 'callback'
                   ORDER BY next_attempt_at, id LIMIT :limit FOR UPDATE SKIP LOCKED)
    RETURNING id, request_id
    """
)
BASELINE_DONE = text(
    "UPDATE bench_baseline_outbox SET status = 'done', updated_at = clock_timestamp() WHERE id = ANY(:ids)"
)


# -- measuring ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One timed phase: how many things it did, how long it took, and what it cost."""

    name: str
    count: int = 0
    seconds: float = 0.0
    cpu: float | None = None  # this process's CPU seconds
    db_cpu: float | None = None  # CPU seconds of the PostgreSQL backends serving the bench database
    host_busy: float | None = None  # the host's busy CPU seconds (all processes)
    statements: int | None = None
    statement_seconds: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


class StatementCounter:
    """Counts the SQL statements an engine executes (executemany counts once), and the wall time spent
    in each kind of statement (round trip and server time: the process waits for them)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.count = 0
        self.seconds: dict[str, float] = {}
        self._started = 0.0
        event.listen(engine.sync_engine, "before_cursor_execute", self._seen)
        event.listen(engine.sync_engine, "after_cursor_execute", self._done)

    def _seen(self, *_: Any) -> None:
        self.count += 1
        self._started = time.perf_counter()

    def _done(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        label = statement_label(statement)
        self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - self._started


def statement_label(statement: str) -> str:
    """A statement's first words and the tables it names, enough to tell the sweep's statements apart."""
    words = statement.split()
    tables = [words[i + 1] for i, word in enumerate(words[:-1]) if word.upper() in ("FROM", "INTO", "UPDATE")]
    head = " ".join(words[:2])
    return f"{head[:30]} … {', '.join(dict.fromkeys(t for t in tables if t[0].isalpha()))}"[:90]


async def backend_cpu(server_url: str, database: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend connected to `database` (empty without /proc)."""
    async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as conn:
        rows = await (
            await conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [database]
            )
        ).fetchall()
    seconds = {int(pid): cpu_seconds(int(pid)) for (pid,) in rows}
    return {pid: value for pid, value in seconds.items() if value is not None}


async def timed(
    run: Run,
    work: Callable[[], Awaitable[int]],
    *,
    counter: StatementCounter | None = None,
    profile: Path | None = None,
    database: tuple[str, str] | None = None,
) -> Run:
    """Run `work` (returns how many things it did) and fill in `run`.

    With `database` (server URL, name), also the CPU its backends spent meanwhile: backends opened during
    the run count from their start; one that closed before the end is missed (pools keep theirs open).
    """
    before_db = await backend_cpu(*database) if database else {}
    before_cpu = resource.getrusage(resource.RUSAGE_SELF)
    before_host = host_cpu_seconds()
    before_statements = counter.count if counter else 0
    before_seconds = dict(counter.seconds) if counter else {}
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    try:
        run.count = await work()
    finally:
        if profiler:
            profiler.disable()
    run.seconds = time.perf_counter() - started
    after_cpu = resource.getrusage(resource.RUSAGE_SELF)
    after_host = host_cpu_seconds()
    run.cpu = (after_cpu.ru_utime + after_cpu.ru_stime) - (before_cpu.ru_utime + before_cpu.ru_stime)
    if before_host is not None and after_host is not None:
        run.host_busy = after_host - before_host
    if counter:
        run.statements = counter.count - before_statements
        run.statement_seconds = {
            label: spent - before_seconds.get(label, 0.0) for label, spent in counter.seconds.items()
        }
    if database:
        after_db = await backend_cpu(*database)
        if after_db:
            run.db_cpu = sum(value - before_db.get(pid, 0.0) for pid, value in after_db.items())
    if profiler and profile:
        profiler.dump_stats(profile)
    return run


def print_profile(path: Path, title: str, top: int = 25) -> None:
    print(f"\n--- cProfile: {title} (top {top} by own time; full stats in {path}) ---")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)


# -- seeding -----------------------------------------------------------------------------------------------

REQUEST_COLUMNS = (
    "id agent_id action title summary params payload_sha256 on_behalf_of links callback_url status "
    "policy_name policy_version_id policy_rule required_approvals created_at expires_at"
).split()
EVENT_COLUMNS = "chain_id seq kind actor data created_at prev_hash hash".split()


@dataclass
class Seeder:
    """Writes pending requests as `create_request` would (request row, audit genesis, chain head)."""

    agent_id: str
    agent_name: str
    policies: ActivePolicies
    callback_url: str | None
    generated_per_second: float = 0.0

    def rows(
        self, count: int, *, created_at: dt.datetime, expires_at: Callable[[int], dt.datetime]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]], list[str]]:
        started = time.perf_counter()
        evaluation = evaluate(self.policies.policy_set, ACTION)
        rule = evaluation.rule
        assert rule is not None and evaluation.decision == "require_approval"
        snapshot = canonical_text(self.policies.rule_snapshot(evaluation.rule_index))
        request_rows, event_rows, head_rows, ids = [], [], [], []
        actor = f"agent:{self.agent_name}"
        for i in range(count):
            new = NewRequest(
                action=ACTION,
                title=f"Offer letter {i}",
                summary="Seeded by bench/expiry.py",
                params={"candidate": f"C-{i}", "salary": 100000 + i},
                on_behalf_of="recruiter@example.com",
                links=[],
                callback_url=self.callback_url,
            )
            request_id = new_id("req_")
            due = expires_at(i)
            payload_sha256 = new.payload_sha256()
            request_rows.append(
                (
                    request_id,
                    self.agent_id,
                    ACTION,
                    new.title,
                    new.summary,
                    canonical_text(new.params),
                    payload_sha256,
                    new.on_behalf_of,
                    "[]",
                    new.callback_url,
                    "pending",
                    evaluation.policy_name,
                    self.policies.version,
                    snapshot,
                    rule.required_approvals,
                    created_at,
                    due,
                )
            )
            # The two events create_request appends to a new request's chain, hashed the same way.
            events = [
                (
                    "request_created",
                    actor,
                    {
                        "agent_id": self.agent_id,
                        "agent": self.agent_name,
                        "action": ACTION,
                        "on_behalf_of": new.on_behalf_of,
                        "payload_sha256": payload_sha256,
                        "callback_url": new.callback_url,
                        "expires_in_requested": None,
                        "expires_at": due.isoformat(),
                        "idempotency_key": None,
                    },
                ),
                (
                    "policy_evaluated",
                    "policy",
                    {
                        "inputs": {"action": ACTION, "agent": self.agent_name},
                        "policy": evaluation.policy_name,
                        "policy_version": self.policies.version,
                        "policy_sha256": self.policies.sha256,
                        "rule_index": evaluation.rule_index,
                        "decision": evaluation.decision,
                        "reason": evaluation.reason,
                    },
                ),
            ]
            prev_hash = GENESIS_HASH
            for seq, (kind, who, data) in enumerate(events, start=1):
                stored = json.loads(canonical_json(data))
                digest = event_hash(
                    chain_id=request_id,
                    seq=seq,
                    kind=kind,
                    actor=who,
                    data=stored,
                    created_at=created_at,
                    prev_hash=prev_hash,
                )
                event_rows.append(
                    (
                        request_id,
                        seq,
                        kind,
                        who,
                        canonical_json(stored).decode(),
                        created_at,
                        prev_hash,
                        digest,
                    )
                )
                prev_hash = digest
            head_rows.append((request_id, len(events), prev_hash))
            ids.append(request_id)
        self.generated_per_second = count / max(time.perf_counter() - started, 1e-9)
        return request_rows, event_rows, head_rows, ids

    async def copy(
        self,
        dsn: str,
        request_rows: list[tuple[Any, ...]],
        event_rows: list[tuple[Any, ...]],
        head_rows: list[tuple[Any, ...]],
    ) -> dt.datetime:
        """One transaction: a request is never visible without its chain. Returns the commit's time."""
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            async with conn.transaction():
                cur = conn.cursor()
                for table, columns, rows in (
                    ("requests", REQUEST_COLUMNS, request_rows),
                    ("audit_events", EVENT_COLUMNS, event_rows),
                    ("chain_heads", ["chain_id", "seq", "hash"], head_rows),
                ):
                    async with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                        for row in rows:
                            await copy.write_row(row)
            now = await (await conn.execute("SELECT clock_timestamp()")).fetchone()
            assert now is not None and isinstance(now[0], dt.datetime)
            return now[0]


async def prepare(engine: AsyncEngine, policies_file: Path, callback_url: str | None) -> Seeder:
    """A migrated database with a registered agent and the policy version recorded."""
    await upgrade_to_head(engine)
    async with engine.begin() as conn:
        agent = await add_agent(conn, name="bench-agent", owner="bench@example.com", actions=[ACTION])
        policies = await record_policy_version(
            conn, load_policies(policies_file), loaded_by="bench/expiry.py"
        )
    return Seeder(agent.id, "bench-agent", policies, callback_url)


async def plain(dsn: str, *statements: str) -> None:
    """Statements outside a transaction (VACUUM cannot run inside one)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            await conn.execute(statement)  # type: ignore[arg-type,unused-ignore]


# -- the receiver (a separate process) --------------------------------------------------------------------


def serve_receiver(port: int) -> None:
    """`--receiver-port`: answer 200 to every POST and count them (GET /count)."""
    received = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal received
        await request.read()
        received += 1
        return web.Response(text="ok")

    async def count(_: web.Request) -> web.Response:
        return web.json_response({"received": received})

    app = web.Application()
    app.router.add_get("/count", count)
    app.router.add_post("/{tail:.*}", hook)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


class ReceiverProcess:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "receiver.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--receiver-port", str(self.port)],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: self.received() is not None, what="the receiver", process=self.process)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def received(self) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/count", timeout=2) as response:
                return int(json.loads(response.read())["received"])
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def stop(self) -> None:
        stop_process(self.process)


def wait_until(
    probe: Callable[[], Any], *, what: str, process: subprocess.Popen[bytes], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.05)  # a polling interval


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- phase 1: expiry throughput ---------------------------------------------------------------------------


async def baseline_expire(engine: AsyncEngine) -> int:
    total = 0
    while True:
        async with engine.begin() as conn:
            done = len((await conn.execute(BASELINE_EXPIRE, {"limit": BATCH})).all())
        total += done
        if done == 0:
            return total


async def service_expire(container: Container) -> int:
    total = 0
    while done := await expire_requests_job(container):
        total += done
    return total


async def count_status(engine: AsyncEngine, table: str, status: str) -> int:
    async with engine.connect() as conn:
        query = text(f"SELECT count(*) FROM {table} WHERE status = :status")
        return int((await conn.execute(query, {"status": status})).scalar_one())


# -- phase 2: deliveries -----------------------------------------------------------------------------------


async def baseline_deliver(engine: AsyncEngine, url: str) -> int:
    total = 0
    limit = asyncio.Semaphore(DELIVERY_CONCURRENCY)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def post(request_id: str) -> None:
            body = json.dumps({"type": "request.expired", "data": {"id": request_id}})
            async with limit, session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"the receiver answered {r.status}")

        while True:
            async with engine.begin() as conn:
                claimed = (await conn.execute(BASELINE_CLAIM, {"limit": OUTBOX_BATCH})).all()
            if not claimed:
                return total
            await asyncio.gather(*(post(row.request_id) for row in claimed))
            async with engine.begin() as conn:
                await conn.execute(BASELINE_DONE, {"ids": [row.id for row in claimed]})
            total += len(claimed)


# -- phase 3: lateness under the real scheduler -----------------------------------------------------------


@dataclass
class Lateness:
    event: list[float] = field(default_factory=list)
    visible: list[float] = field(default_factory=list)
    seeded: int = 0
    margin: float = 0.0  # seconds between the seeding's commit and the first expires_at
    callbacks: int = 0


async def watch_expiries(engine: AsyncEngine, expected: int, result: Lateness, stall: float) -> None:
    """Poll new request_expired events until `expected` were seen (one sweep commits them in id order).

    Fills `result` as it goes, so a run cut short still reports what it saw; gives up when no request
    expired for `stall` seconds.
    """
    last_id = 0
    query = text(
        """
        SELECT e.id, EXTRACT(EPOCH FROM e.created_at - r.expires_at) AS event_late,
               EXTRACT(EPOCH FROM clock_timestamp() - r.expires_at) AS visible_late
          FROM audit_events e JOIN requests r ON r.id = e.chain_id
         WHERE e.kind = 'request_expired' AND e.id > :last
         ORDER BY e.id
        """
    )
    progress = time.monotonic()
    while len(result.event) < expected:
        if time.monotonic() - progress > stall:
            raise RuntimeError(
                f"only {len(result.event):,} of {expected:,} requests expired, then none for {stall:g} s"
            )
        async with engine.connect() as conn:
            rows = (await conn.execute(query, {"last": last_id})).all()
        if rows:
            progress = time.monotonic()
        for row in rows:
            result.event.append(float(row.event_late))
            result.visible.append(float(row.visible_late))
            last_id = max(last_id, int(row.id))
        await asyncio.sleep(POLL_SECONDS)  # a polling interval


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


# -- the run -----------------------------------------------------------------------------------------------


@dataclass
class Report:
    requests: int
    runs: dict[str, Run] = field(default_factory=dict)
    verified: str = "not run"
    steady: Lateness | None = None
    steady_rate: float = 0.0
    steady_seconds: float = 0.0
    steady_verified: str = "not run"
    notes: list[str] = field(default_factory=list)
    seed_rate: float = 0.0  # requests built and copied per second


def settings_for(url: str, workdir: Path) -> Settings:
    return Settings(
        database_url=url,
        policies=workdir / "policies.yml",
        callback_allow_hosts=["127.0.0.1"],
        auto_migrate=False,
        checkpoint_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        log_level="WARNING",
    )


async def throughput(
    args: argparse.Namespace, workdir: Path, receiver: ReceiverProcess, report: Report
) -> None:
    url = database_url(args.postgres, EXPIRY_DB)
    recreate_databases(args.postgres, [EXPIRY_DB])
    engine = build_engine(url)
    counter = StatementCounter(engine)
    container: Container | None = None
    delivering: OutboxDispatcher | None = None
    try:
        seeder = await prepare(engine, workdir / "policies.yml", receiver.url)
        async with engine.connect() as conn:
            now = await db_now(conn)
        n = args.requests
        print(f"seeding {n:,} due requests ...", flush=True)
        started = time.perf_counter()
        rows = seeder.rows(
            n,
            created_at=now - dt.timedelta(hours=24),
            expires_at=lambda i: now - dt.timedelta(seconds=1, microseconds=n - i),
        )
        await seeder.copy(url, *rows[:3])
        report.seed_rate = n / (time.perf_counter() - started)
        await plain(
            url,
            "CREATE TABLE bench_baseline_requests (LIKE requests INCLUDING DEFAULTS INCLUDING INDEXES)",
            "INSERT INTO bench_baseline_requests SELECT * FROM requests",
            "VACUUM ANALYZE requests",
            "VACUUM ANALYZE audit_events",
            "VACUUM ANALYZE chain_heads",
            "VACUUM ANALYZE bench_baseline_requests",
        )
        report.notes.append(
            f"seeding {n:,} requests (rows built at {seeder.generated_per_second:,.0f}/s, COPY, "
            "baseline copy, "
            f"VACUUM ANALYZE): {time.perf_counter() - started:.1f} s"
        )

        print("expiry: baseline ...", flush=True)
        measured = (args.postgres, EXPIRY_DB)
        base = await timed(
            Run("expiry baseline"), lambda: baseline_expire(engine), counter=counter, database=measured
        )
        report.runs["expiry baseline"] = base

        container = await build_container(settings_for(url, workdir))
        delivering = container.dispatcher
        container.dispatcher = OutboxDispatcher(engine)  # no handlers: committed() delivers nothing yet
        # The pool's own engine: its listeners see the sweeps' view (container.engine) and the dispatcher's.
        counter_service = StatementCounter(container.interactive)
        print("expiry: service ...", flush=True)
        profile = workdir / "expiry.prof" if args.profile else None
        svc = await timed(
            Run("expiry service"),
            lambda: service_expire(container),
            counter=counter_service,
            profile=profile,
            database=measured,
        )
        svc.note = f"{await count_status(engine, 'requests', 'expired'):,} expired in the database"
        report.runs["expiry service"] = svc

        if not args.skip_verify:
            print("verifying the audit chains ...", flush=True)
            started = time.perf_counter()
            async with engine.connect() as conn:
                verdict = await verify_all(conn)
            took = time.perf_counter() - started
            state = "OK" if verdict.ok else f"BROKEN at {verdict.first_break}"
            report.verified = f"{state}: {verdict.chains:,} chains, {verdict.events:,} events in {took:.1f} s"
        if args.skip_delivery:
            return

        if not args.keep_slack_rows:
            # Slack is off here, so nobody delivers the slack_update rows; with Slack on they would be
            # delivered (to Slack), not pile up in front of every claim. See --keep-slack-rows.
            await plain(url, "UPDATE outbox SET status = 'done' WHERE kind = 'slack_update'")
        await plain(
            url,
            "CREATE TABLE bench_baseline_outbox (LIKE outbox INCLUDING DEFAULTS INCLUDING INDEXES)",
            "INSERT INTO bench_baseline_outbox SELECT * FROM outbox",
            "VACUUM ANALYZE outbox",
            "VACUUM ANALYZE bench_baseline_outbox",
        )
        before = receiver.received() or 0
        print("deliveries: baseline ...", flush=True)
        report.runs["delivery baseline"] = await timed(
            Run("delivery baseline"), lambda: baseline_deliver(engine, receiver.url), counter=counter
        )
        after_baseline = receiver.received() or 0
        report.runs["delivery baseline"].note = f"receiver got {after_baseline - before:,}"

        print("deliveries: service ...", flush=True)
        profile = workdir / "delivery.prof" if args.profile else None
        svc = await timed(
            Run("delivery service"),
            delivering.run_until_idle,
            counter=counter_service,
            profile=profile,
        )
        got = (receiver.received() or 0) - after_baseline
        async with engine.connect() as conn:
            done = (
                await conn.execute(
                    text("SELECT count(*) FROM outbox WHERE kind = 'callback' AND status = 'done'")
                )
            ).scalar_one()
        svc.note = f"receiver got {got:,}; {done:,} callback rows done"
        report.runs["delivery service"] = svc
    finally:
        if container is not None:
            await container.dispatcher.close()
            if delivering is not None:
                await delivering.close()  # the real one, held aside during expiry: its HTTP sessions
            await container.dispose()
        await engine.dispose()


async def steady(args: argparse.Namespace, workdir: Path, receiver: ReceiverProcess, report: Report) -> None:
    url = database_url(args.postgres, STEADY_DB)
    recreate_databases(args.postgres, [STEADY_DB])
    engine = build_engine(url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPROVALS_", "SLACK_"))}
    env |= {
        "APPROVALS_DATABASE_URL": url,
        "APPROVALS_POLICIES": str(workdir / "policies.yml"),
        "APPROVALS_PORT": str(port),
        "APPROVALS_AUTO_MIGRATE": "true",
        "APPROVALS_LOG_LEVEL": "WARNING",
        "APPROVALS_CALLBACK_ALLOW_HOSTS": "127.0.0.1",
        "APPROVALS_CHECKPOINT_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    if args.scheduler_interval is not None:
        env["APPROVALS_SCHEDULER_INTERVAL_SECONDS"] = str(args.scheduler_interval)
    log = workdir / "serve-steady.log"
    with log.open("wb") as sink:
        serve = subprocess.Popen([approvals_cli(), "serve"], env=env, cwd=workdir, stdout=sink, stderr=sink)
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_until(ready, what="approvals serve", process=serve)
        callback = None if args.steady_without_callbacks else receiver.url
        seeder = await prepare(engine, workdir / "policies.yml", callback)
        count = int(args.steady_rate * args.steady_seconds)
        rate = args.steady_rate
        async with engine.connect() as conn:
            now = await db_now(conn)
        # Room to build and COPY the rows before the first comes due (at the rate measured in phase 1).
        lead = dt.timedelta(seconds=3 + 1.5 * count / (report.seed_rate or 5000.0))
        first = now + lead
        print(f"lateness: seeding {count:,} requests due over {args.steady_seconds:g} s ...", flush=True)
        before = receiver.received() or 0
        rows = seeder.rows(count, created_at=now, expires_at=lambda i: first + dt.timedelta(seconds=i / rate))
        committed = await seeder.copy(url, *rows[:3])
        result = Lateness(seeded=count, margin=(first - committed).total_seconds())
        report.steady, report.steady_rate, report.steady_seconds = result, rate, args.steady_seconds
        try:
            await watch_expiries(engine, count, result, stall=lead.total_seconds() + 60)
        finally:
            result.callbacks = (receiver.received() or 0) - before
        if serve.poll() is not None:
            raise RuntimeError(f"approvals serve died during the lateness run; see {log}")
        if not args.skip_verify:
            async with engine.connect() as conn:
                verdict = await verify_all(conn)
            state = "OK" if verdict.ok else f"BROKEN at {verdict.first_break}"
            report.steady_verified = f"{state}: {verdict.chains:,} chains, {verdict.events:,} events"
    finally:
        stop_process(serve)
        await engine.dispose()


def print_report(report: Report) -> None:
    cores = os.cpu_count() or 1
    print()
    print(f"Expiry and callback delivery on PostgreSQL, {report.requests:,} requests; {cores} CPUs shared")
    header = (
        f"{'phase':<10} {'run':<9} {'count':>9} {'seconds':>8} {'per s':>9} {'stmts/item':>10} "
        f"{'bench CPU':>9} {'host busy':>9}  note"
    )
    print(header)
    print("-" * len(header))
    for key, run in report.runs.items():
        phase, who = key.split()
        per_item = run.statements / run.count if run.statements is not None and run.count else None
        per_item_spec = ".3f" if per_item is not None and per_item < 0.1 else ".1f"
        cpu = run.cpu / run.seconds if run.cpu is not None and run.seconds else None
        busy = run.host_busy / run.seconds if run.host_busy is not None and run.seconds else None
        print(
            f"{phase:<10} {who:<9} {run.count:>9,} {run.seconds:>8.2f} {run.rate:>9,.0f} "
            f"{fmt(per_item, per_item_spec):>10} {fmt(None if cpu is None else cpu * 100, '.0f', '%'):>9} "
            f"{fmt(None if busy is None else busy * 100, '.0f', '%'):>9}  {run.note}"
        )
    print(
        "bench CPU: this process (the service code runs in it) as % of one core; host busy: every process, "
        f"% of one core ({cores * 100}% is all)."
    )
    for key, run in report.runs.items():
        if run.count and run.cpu is not None:
            db = "n/a" if run.db_cpu is None else f"{run.db_cpu / run.count * 1e6:,.0f} µs"
            print(f"CPU per item, {key}: this process {run.cpu / run.count * 1e6:,.0f} µs, PostgreSQL {db}")
    for phase in ("expiry", "delivery"):
        base, svc = report.runs.get(f"{phase} baseline"), report.runs.get(f"{phase} service")
        if base and svc and base.rate:
            print(f"{phase} ratio service/baseline: {svc.rate / base.rate:.3f}")
    for key, run in report.runs.items():
        spent = sorted(run.statement_seconds.items(), key=lambda item: -item[1])
        if run.count and spent:
            print(f"{key}: time in statements per item (executing, sending and waiting for the result):")
            for label, seconds in spent[:6]:
                if seconds:
                    print(f"  {seconds / run.count * 1e6:>8,.1f} µs  {label}")
    print(f"audit chains after expiry: {report.verified}")
    for note in report.notes:
        print(note)

    if report.steady is not None:
        s = report.steady
        print()
        print(
            f"Lateness under `approvals serve` (real scheduler): {s.seeded:,} requests due at "
            f"{report.steady_rate:,.0f}/s over {report.steady_seconds:g} s; seeding committed "
            f"{s.margin:.1f} s before the first was due"
        )
        for name, values in (("event time", s.event), ("visible", s.visible)):
            p50, p99, top = percentile(values, 0.5), percentile(values, 0.99), max(values, default=None)
            print(
                f"  lateness ({name:<10}): p50 {fmt(p50, '.2f')} s  p99 {fmt(p99, '.2f')} s  "
                f"max {fmt(top, '.2f')} s"
            )
        print(f"  expired: {len(s.event):,} of {s.seeded:,}; callbacks delivered meanwhile: {s.callbacks:,}")
        print(f"  audit chains: {report.steady_verified}")

    print()
    print("targets:")
    svc = report.runs.get("expiry service")
    if svc:
        verdict = "MET" if svc.rate >= TARGET_EXPIRIES else "MISSED"
        print(f"  expiries/s >= {TARGET_EXPIRIES:,.0f}: {svc.rate:,.0f}  {verdict}")
    dlv = report.runs.get("delivery service")
    if dlv:
        verdict = "MET" if dlv.rate >= TARGET_DELIVERIES else "MISSED"
        print(f"  deliveries/s >= {TARGET_DELIVERIES:,.0f}: {dlv.rate:,.0f}  {verdict}")
    if report.steady is not None:
        for name, values in (("event time", report.steady.event), ("visible", report.steady.visible)):
            p99 = percentile(values, 0.99)
            verdict = "MET" if p99 is not None and p99 <= TARGET_LATENESS_P99 else "MISSED"
            shown = fmt(p99, ".2f", " s")
            print(f"  expiry lateness p99 ({name}) <= {TARGET_LATENESS_P99:g} s: {shown}  {verdict}")


async def run(args: argparse.Namespace, workdir: Path, report: Report) -> None:
    receiver = ReceiverProcess(workdir)
    try:
        if not args.skip_throughput:
            await throughput(args, workdir, receiver, report)
        if not args.skip_steady:
            await steady(args, workdir, receiver, report)
    finally:
        receiver.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000, help="due requests to expire and call back")
    parser.add_argument("--steady-rate", type=float, default=1000.0, help="requests coming due per second")
    parser.add_argument("--steady-seconds", type=float, default=10.0, help="how long they keep coming due")
    parser.add_argument(
        "--scheduler-interval", type=float, default=None, help="APPROVALS_SCHEDULER_INTERVAL_SECONDS (1 s)"
    )
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="URL of any database on the server; the bench databases are made beside it",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the service's phases")
    parser.add_argument("--skip-steady", action="store_true", help="no lateness run")
    parser.add_argument("--skip-throughput", action="store_true", help="only the lateness run")
    parser.add_argument(
        "--steady-without-callbacks",
        action="store_true",
        help="lateness run with no callback URLs (the scheduler alone, no deliveries competing)",
    )
    parser.add_argument(
        "--skip-delivery", action="store_true", help="phase 1 without deliveries: the expiry sweep alone"
    )
    parser.add_argument("--skip-verify", action="store_true", help="do not recompute the audit chains")
    parser.add_argument(
        "--keep-slack-rows",
        action="store_true",
        help="leave the undeliverable slack_update rows pending during the delivery phase (Slack off)",
    )
    parser.add_argument("--receiver-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver_port:
        serve_receiver(args.receiver_port)
        return 0

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    configure_logging("WARNING", stream=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="bench-expiry-"))
    (workdir / "policies.yml").write_text(PENDING_OFFER_POLICIES)
    print(f"logs and profiles in {workdir}")
    report_host_busy()
    report = Report(requests=args.requests)
    try:
        asyncio.run(run(args, workdir, report))
    except (RuntimeError, psycopg.Error, OSError) as exc:
        print_report(report)  # what was measured before it stopped
        print(f"\nbench could not complete: {exc}", file=sys.stderr)
        return 1
    print_report(report)
    if args.profile:
        for name in ("expiry", "delivery"):
            path = workdir / f"{name}.prof"
            if path.exists():
                print_profile(path, f"service {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
