"""Progress on stderr for `audit verify`, `audit report` and `audit export`, and their last lines.

A person running a command on a terminal sees a progress bar naming what was just done; a log or a
pipe gets none of it, only the one-line summary every run ends with. The CLI runs for real in a
subprocess, its stderr a pseudo-terminal (os.openpty) or a pipe, against the service's database.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from approvals.audit.verification import VERIFY_STEPS, verify_audit_log
from tests.conftest import TEST_CHECKPOINT_KEY, Api, offer, run_cli

VERIFY_SUMMARY = re.compile(
    r"verified (\d+) chains?, (\d+) events?, (\d+) checkpoints?, (\d+) request rows? and (\d+) witness(?:es)? "
    r"in \d+\.\d s: (OK|FAILED)(?:, (\d+) warnings?)?"
)


def _read_terminal(fd: int) -> str:
    """Everything written to a pseudo-terminal until its last writer closes it."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every process holding the terminal's other end has closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


async def run_cli_on_terminal(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI as a person runs it: stderr a terminal (its text, \\r and all, is `stderr`), stdout a pipe."""
    env = {
        **os.environ,
        "APPROVALS_DATABASE_URL": database_url,
        "APPROVALS_AUTO_MIGRATE": "false",
        "APPROVALS_CHECKPOINT_KEY": TEST_CHECKPOINT_KEY,
        "APPROVALS_CHECKPOINT_WITNESS_FILE": "off",
    }
    env.pop("APPROVALS_RETENTION_DAYS", None)
    controller, terminal = os.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli.main",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=terminal,
        )
    finally:
        os.close(terminal)  # the child holds its own copy: the last close ends the reads below
    try:
        # Read while the command runs, so that it never waits on a full terminal buffer.
        reading = asyncio.create_task(asyncio.to_thread(_read_terminal, controller))
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        shown = await asyncio.wait_for(reading, 30)
    finally:
        os.close(controller)
    return subprocess.CompletedProcess(list(args), proc.returncode or 0, out.decode(), shown)


async def _seed(api: Api) -> None:
    for action in ("send_offer_letter", "read_calendar"):
        resp = await api.post("/v1/requests", offer(action=action))
        assert resp.status == 201, await resp.text()


def _last_line(stream: str) -> str:
    return stream.replace("\r\n", "\n").rstrip("\n").rsplit("\n", 1)[-1]


async def test_verify_shows_progress_on_a_terminal(api: Api, database_url: str) -> None:
    await _seed(api)
    result = await run_cli_on_terminal(database_url, "audit", "verify")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: ")  # the verdict itself is on stdout, as ever
    shown = result.stderr
    assert "verifying" in shown
    for step in (*VERIFY_STEPS, "witnesses"):
        assert f"{step}:" in shown
    assert "4/4" in shown  # the log's three checks and the witnesses
    summary = VERIFY_SUMMARY.fullmatch(_last_line(shown).strip())
    assert summary is not None, shown
    assert summary.group(6) == "OK"


async def test_verify_on_a_pipe_ends_with_its_summary_alone(api: Api, database_url: str) -> None:
    await _seed(api)
    result = await run_cli(database_url, "audit", "verify", "--json")
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)  # stdout still holds nothing but the JSON
    assert "verifying" not in result.stderr and "\r" not in result.stderr
    summary = VERIFY_SUMMARY.fullmatch(_last_line(result.stderr))
    assert summary is not None, result.stderr
    chains, events, checkpoints, rows, witnesses, status, warnings = summary.groups()
    assert (int(chains), int(events), int(checkpoints), int(rows)) == (
        verdict["chains"],
        verdict["events"],
        verdict["checkpoints"],
        verdict["requests"],
    )
    assert (int(witnesses), status) == (len(verdict["witnesses"]), "OK")
    # No checkpoint yet: a finding that warns without failing, counted in the summary.
    assert [f["code"] for f in verdict["findings"]] == ["no_checkpoint"] and warnings == "1"


async def test_a_broken_log_says_failed_in_the_summary(api: Api, database_url: str) -> None:
    await _seed(api)
    async with api.container.engine.begin() as conn:
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1"))
    result = await run_cli(database_url, "audit", "verify")
    assert result.returncode == 1
    assert result.stdout.startswith("BROKEN: chain ")
    summary = VERIFY_SUMMARY.fullmatch(_last_line(result.stderr))
    assert summary is not None and summary.group(6) == "FAILED", result.stderr


async def test_report_shows_progress_on_a_terminal_only(api: Api, database_url: str, tmp_path: Path) -> None:
    await _seed(api)
    args = ("audit", "report", "--from", "2000-01-01", "--to", "2100-01-01")
    on_terminal = await run_cli_on_terminal(database_url, *args, "--out", str(tmp_path / "a.html"))
    assert on_terminal.returncode == 0, on_terminal.stderr
    for step in (
        "reporting",
        "counts",
        "weekly figures",
        "verification",
        "sample chains",
        "page rendered",
        "9/9",
    ):
        assert step in on_terminal.stderr, on_terminal.stderr
    piped = await run_cli(database_url, *args, "--out", str(tmp_path / "b.html"))
    assert piped.returncode == 0, piped.stderr
    assert "reporting" not in piped.stderr and "sample chains" not in piped.stderr
    # The file carries the report: the summary is stdout's one line, with how long it took.
    for run, out in ((on_terminal, tmp_path / "a.html"), (piped, tmp_path / "b.html")):
        assert re.fullmatch(
            rf"report written to {re.escape(str(out))} in \d+\.\d s: 2 requests, 2 sample chains; "
            r"verification OK: \d+ chains, \d+ events and 0 checkpoints verified\n",
            run.stdout,
        ), run.stdout
        assert out.stat().st_size > 0


async def test_export_shows_progress_on_a_terminal_only(api: Api, database_url: str) -> None:
    await _seed(api)
    on_terminal = await run_cli_on_terminal(database_url, "audit", "export")
    assert on_terminal.returncode == 0, on_terminal.stderr
    assert "exporting" in on_terminal.stderr and "100%" in on_terminal.stderr
    assert len(on_terminal.stdout.splitlines()) == 2  # the chains themselves, untouched by the bar
    piped = await run_cli(database_url, "audit", "export")
    assert piped.returncode == 0, piped.stderr
    assert "exporting" not in piped.stderr
    assert piped.stderr.splitlines()[0] == "population: 2 chains"
    assert re.fullmatch(r"exported 2 chains as jsonl to stdout in \d+\.\d s", _last_line(piped.stderr))
    assert re.fullmatch(
        r"exported 2 chains as jsonl to stdout in \d+\.\d s", _last_line(on_terminal.stderr).strip()
    )


async def test_verification_tells_its_caller_each_step_as_it_is_done(api: Api) -> None:
    await _seed(api)
    heard: list[str] = []
    verdict = await verify_audit_log(
        api.container.engine, verify=api.container.checkpoint_key.verify, progress=heard.append
    )
    assert verdict.ok
    assert sorted(heard) == sorted(
        [
            f"hash chains: {verdict.chains.chains} chains, {verdict.chains.events} events",
            f"signed checkpoints: {verdict.checkpoints} checkpoints",
            f"request rows: {verdict.requests} requests",
        ]
    )
    assert sorted(line.split(":")[0] for line in heard) == sorted(VERIFY_STEPS)
