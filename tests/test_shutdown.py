"""Shutdown is quiet: a sweep cancelled mid-run by SIGTERM is not an error and logs no traceback.

A real `approvals serve` runs on PostgreSQL while the test holds a lock on the outbox table, so the
scheduler's outbox sweep is stuck in its claim query (seen in pg_stat_activity) when SIGTERM arrives.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import ROOT, _clear_postgres, clean_environment, stop_process
from tests.eventually import eventually
from tests.test_service_startup import free_port


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
async def database(postgres_database: str) -> AsyncIterator[str]:
    _clear_postgres(postgres_database)
    yield postgres_database


def _serve(database_url: str, logs: Path) -> tuple[subprocess.Popen[bytes], int, Path, Path]:
    port = free_port()
    env = clean_environment()
    env |= {
        "APPROVALS_DATABASE_URL": database_url,
        "APPROVALS_PORT": str(port),
        "APPROVALS_POLICIES": str(ROOT / "tests" / "data" / "policies.yml"),
        "APPROVALS_AUTO_MIGRATE": "false",
        "APPROVALS_SCHEDULER_INTERVAL_SECONDS": "0.2",
    }
    out, err = logs / "serve.out", logs / "serve.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli.main", "serve"], cwd=ROOT, env=env, stdout=stdout, stderr=stderr
        )
    return proc, port, out, err


async def test_sigterm_while_a_sweep_waits_on_the_database_stops_cleanly_without_a_traceback(
    database: str, tmp_path: Path
) -> None:
    proc, port, out, err = _serve(database, tmp_path)
    blocker = await psycopg.AsyncConnection.connect(_dsn(database))
    try:
        async with aiohttp.ClientSession(trust_env=False) as session:

            async def ready() -> bool:
                assert proc.poll() is None, err.read_text()
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, what="serve to become ready")

        # The outbox sweep's next claim waits behind this lock: a job cancelled mid-run at shutdown.
        await blocker.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")

        async def sweep_waiting() -> bool:
            async with await psycopg.AsyncConnection.connect(_dsn(database), autocommit=True) as probe:
                cursor = await probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE '%FROM outbox%'"
                )
                row = await cursor.fetchone()
                return row is not None and row[0] > 0

        await eventually(sweep_waiting, what="the outbox sweep to wait on the lock")
        proc.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(proc.wait, 30)
    finally:
        await blocker.rollback()
        await blocker.close()
        await stop_process(proc)

    stdout, stderr = out.read_text(), err.read_text()
    assert returncode == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    names = [e.get("event") for e in events]
    # The sweep was running when the stop came, and it said so once, as information, not as an error.
    # (Another sweep running at that moment, such as the expiry every 0.2 s, says the same of itself.)
    cancelled = [(e.get("job"), e.get("level")) for e in events if e.get("event") == "job_cancelled"]
    assert ("dispatch_outbox", "info") in cancelled, stdout
    assert {level for _job, level in cancelled} == {"info"}, stdout
    assert len(cancelled) == len({job for job, _level in cancelled}), stdout
    assert "stopping" in names
    assert not [e for e in events if e.get("level") in ("error", "critical", "exception")], stdout
    assert "Traceback" not in stdout + stderr
    assert "CancelledError" not in stdout + stderr


async def test_a_sweep_that_fails_is_still_logged_with_its_traceback_and_a_cancelled_one_is_not() -> None:
    from structlog.testing import capture_logs

    from app.scheduler import guarded

    started = asyncio.Event()

    async def stuck(_container: object) -> int:
        started.set()
        await asyncio.Event().wait()  # never set: only cancellation ends it
        return 0

    async def broken(_container: object) -> int:
        raise RuntimeError("database on fire")

    with capture_logs() as logs:
        task = asyncio.get_running_loop().create_task(guarded("stuck", stuck, None)())  # type: ignore[arg-type]
        await started.wait()
        task.cancel()
        await task  # ends normally: the cancellation was the sweep's end, not a failure
        await guarded("broken", broken, None)()  # type: ignore[arg-type]

    assert [(e["event"], e["job"], e["log_level"]) for e in logs] == [
        ("job_cancelled", "stuck", "info"),
        ("job_failed", "broken", "error"),
    ]
    assert logs[1]["exc_info"] is True
