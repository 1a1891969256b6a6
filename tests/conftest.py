"""Test fixtures: real PostgreSQL databases built by Alembic, and the real HTTP app.

The server is the one at APPROVALS_TEST_POSTGRES_URL (default: 127.0.0.1:5432) when it answers;
otherwise, unless CI requires that one (APPROVALS_TEST_REQUIRE_POSTGRES=1), the embedded server the
product itself runs, started once for every worker of the run in a directory of the system's temp dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import ClientResponse, ClientSession
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from app.bootstrap import build_container
from app.config import Settings
from app.container import Container
from app.database import build_engine
from app.embedded_postgres import embedded_database_url
from app.migrate import upgrade_to_head
from app.tasks import drain_background_tasks
from app.web import build_app
from approvals.identity.agents import add_agent
from approvals.policies.policy_file import parse_policies
from approvals.tables import audit_events
from tests.receiver import Receiver

SYSTEM_POSTGRES_URL = os.environ.get(
    "APPROVALS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("APPROVALS_TEST_REQUIRE_POSTGRES") == "1"
EMBEDDED_TEST_SERVER = Path(tempfile.gettempdir()) / "approvals-test-postgres" / "data"
ROOT = Path(__file__).resolve().parent.parent
# The real CLI, as a subprocess runs it.
APPROVALS = [sys.executable, "-m", "app.cli.main"]

TEST_CHECKPOINT_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # bytes 0..31: a test-only key
TEST_POLICIES = """
default: deny
policies:
  - action: send_offer_letter
    decision: require_approval
    approvers: {users: [U01COO, U02CFO]}
    channel: C0HIRING
    expires_in: 1h
    redact: [params.salary]
  - action: refund_customer
    decision: require_approval
    approvers: {users: [U01COO, U02CFO, U03CEO]}
    required_approvals: 2
    dm_approvers: true
    expires_in: 4h
  - action: approve_invoice
    decision: require_approval
    approvers: {usergroups: [S0FINANCE]}
    channel: C0FIN
    expires_in: 1h
  - action: read_*
    decision: allow
  - action: delete_*
    decision: deny
  - action: sign_contract
    decision: require_approval
    approvers: {users: [U01COO, U02CFO]}
    required_approvals: 2
    channel: C0LEGAL
    expires_in: 1h
    remind_at: [25%, 50%]
    escalate_to: {users: [U03CEO]}
"""


@functools.cache
def postgres_server_url() -> str:
    """The server the tests use (its `postgres` database): the system's, else the embedded one."""
    try:
        with psycopg.connect(_plain(SYSTEM_POSTGRES_URL), connect_timeout=3):
            return SYSTEM_POSTGRES_URL
    except psycopg.Error:
        if REQUIRE_POSTGRES:
            pytest.fail(
                f"PostgreSQL is required (APPROVALS_TEST_REQUIRE_POSTGRES=1) but {SYSTEM_POSTGRES_URL} does not answer"
            )
    embedded = embedded_database_url(EMBEDDED_TEST_SERVER)
    return make_url(embedded).set(database="postgres").render_as_string(hide_password=False)


def _plain(url: str) -> str:
    """A URL for psycopg itself (no SQLAlchemy driver name)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _admin_dsn() -> str:
    return _plain(postgres_server_url())


@pytest.fixture(scope="session")
def worker_name(request: pytest.FixtureRequest) -> str:
    """Unique per worker and per test run, so two runs on one server never share a database."""
    worker = str(getattr(request.config, "workerinput", {}).get("workerid", "main"))
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))[:8]
    return f"{worker}_{run}"


@contextlib.contextmanager
def fresh_postgres(name: str) -> Iterator[str]:
    """An empty database of that name (dropped first, dropped again after); yields its URL."""
    with psycopg.connect(_admin_dsn(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_server_url()).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_admin_dsn(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_database(worker_name: str) -> Iterator[str]:
    """A database of this worker's own on the PostgreSQL server, built by Alembic."""
    with fresh_postgres(f"approvals_test_{worker_name}") as url:
        engine = build_engine(url)

        async def migrate() -> None:
            await upgrade_to_head(engine)
            await engine.dispose()

        asyncio.run(migrate())
        yield url


def _clear_postgres(url: str) -> None:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
            )
        ]
        # Replica mode switches off the append-only trigger, which only a superuser may do.
        conn.execute("SET session_replication_role = replica")
        conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")


@pytest.fixture
def database_url(postgres_database: str) -> str:
    """This worker's migrated database, emptied."""
    _clear_postgres(postgres_database)
    return postgres_database


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "policies": Path("tests/data/policies.yml"),
        "callback_allow_hosts": [],
        "auto_migrate": False,
        "checkpoint_key": TEST_CHECKPOINT_KEY,
        # Tests share the working directory: a witness file is only written where a test asks for one.
        "checkpoint_witness_file": "off",
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Api:
    """An HTTP client for the running service, with an agent's key."""

    session: ClientSession
    base: str
    key: str
    container: Container
    webhook_secrets: dict[str, str] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return self.base + path

    def headers(self, key: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}", **extra}

    async def post(self, path: str, body: Any = None, *, key: str | None = None, **kw: Any) -> ClientResponse:
        headers = self.headers(key, **kw.pop("headers", {}))
        return await self.session.post(self.url(path), json=body, headers=headers, **kw)

    async def get(self, path: str, *, key: str | None = None, **kw: Any) -> ClientResponse:
        return await self.session.get(self.url(path), headers=self.headers(key), **kw)

    async def add_agent(self, name: str, actions: list[str]) -> str:
        async with self.container.engine.begin() as conn:
            new = await add_agent(conn, name=name, owner=f"{name}@example.com", actions=actions)
        self.webhook_secrets[name] = new.webhook_secret
        return new.api_key


async def start_service(database_url: str, **overrides: Any) -> tuple[Container, TestServer]:
    run_scheduler = overrides.pop("run_scheduler", False)
    policies_text = overrides.pop("policies_text", TEST_POLICIES)
    port = overrides.pop("server_port", None)
    settings = make_settings(database_url, **overrides)
    container = await build_container(settings, loaded=parse_policies(policies_text, "test-policies.yml"))
    server = TestServer(build_app(container, run_scheduler=run_scheduler), port=port)
    try:
        await server.start_server()
    except BaseException:
        await container.dispose()
        raise
    return container, server


async def stop_service(container: Container, server: TestServer) -> None:
    """Stop as `serve` does: HTTP first, then the dispatcher, then work still running, then the pool."""
    await server.close()
    await container.dispatcher.close()
    await drain_background_tasks()
    await container.dispose()


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    """The service over real HTTP on a local port, with one registered agent."""
    container, server = await start_service(database_url)
    async with ClientSession() as session:
        client = Api(session=session, base=str(server.make_url("")), key="", container=container)
        client.key = await client.add_agent(
            "hiring-bot", ["send_offer_letter", "refund_customer", "read_*", "delete_*"]
        )
        yield client
    await stop_service(container, server)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real local HTTP endpoint that records the callbacks it is sent."""
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
async def cb_api(database_url: str) -> AsyncIterator[Api]:
    """The service (Slack off) allowed to call back to 127.0.0.1, with one agent, cb-bot."""
    container, server = await start_service(database_url, callback_allow_hosts=["127.0.0.1"])
    async with ClientSession() as session:
        api = Api(session=session, base=str(server.make_url("")), key="", container=container)
        api.key = await api.add_agent("cb-bot", ["send_offer_letter", "read_*"])
        yield api
    await stop_service(container, server)


def offer(**overrides: Any) -> dict[str, Any]:
    """A valid request body for the send_offer_letter action."""
    body: dict[str, Any] = {
        "action": "send_offer_letter",
        "title": "Send offer letter to J. Doe",
        "summary": "Senior engineer, starts in January",
        "params": {"candidate": "J. Doe", "salary": 185000},
        "on_behalf_of": "recruiter@example.com",
        "links": ["https://ats.example.com/candidates/42"],
    }
    body.update(overrides)
    return body


def head_revision() -> str:
    """The schema revision this code needs."""
    from alembic.script import ScriptDirectory

    from app.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def run_cli(
    database_url: str, *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, without blocking the event loop the service under test runs on
    (a blocking run would stall the service while the CLI waits for a lock the service holds)."""
    env = {
        **os.environ,
        "APPROVALS_DATABASE_URL": database_url,
        "APPROVALS_AUTO_MIGRATE": "false",
        "APPROVALS_CHECKPOINT_KEY": TEST_CHECKPOINT_KEY,
        "APPROVALS_CHECKPOINT_WITNESS_FILE": "off",
        **(extra_env or {}),
    }
    env.pop("APPROVALS_RETENTION_DAYS", None)  # the default, 400 days
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return subprocess.CompletedProcess(list(args), proc.returncode or 0, out.decode(), err.decode())


FINAL_KINDS = ("request_approved", "request_rejected", "request_expired", "request_cancelled")


async def final_events_per_chain(conn: AsyncConnection) -> dict[str, int]:
    """How many final-state events each chain holds (exactly one is right for a request that ended)."""
    rows = await conn.execute(
        select(audit_events.c.chain_id, func.count())
        .where(audit_events.c.kind.in_(FINAL_KINDS))
        .group_by(audit_events.c.chain_id)
    )
    return {chain_id: int(count) for chain_id, count in rows}


# Proxy settings would send a subprocess's local traffic elsewhere; the developer's own APPROVALS_ and
# SLACK_ settings would change what a test starts.
PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def free_port() -> int:
    """A TCP port nothing listens on now (for a service a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_environment() -> dict[str, str]:
    """This process's environment for an `approvals serve` subprocess: no proxies, no settings of ours
    but one: no witness file (tests share the working directory, where the default one would be)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in PROXY_VARIABLES and not k.startswith(("APPROVALS_", "SLACK_"))
    }
    return env | {"APPROVALS_CHECKPOINT_WITNESS_FILE": "off"}


async def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a service we started (SIGTERM, up to 20 s for a clean shutdown), then kill it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        await asyncio.to_thread(proc.wait, 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.wait, 5)
