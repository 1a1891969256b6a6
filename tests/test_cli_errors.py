"""A database that cannot be reached or used is one line naming it and what to do, exit 2, on every
command; `--debug` shows the traceback; `--version` answers."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import (
    APPROVALS,
    ROOT,
    TEST_CHECKPOINT_KEY,
    clean_environment,
    free_port,
    postgres_server_url,
)


def run(
    *args: str, database_url: str, port: int | None = None, key_file: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = clean_environment() | {
        "APPROVALS_DATABASE_URL": database_url,
        "APPROVALS_POLICIES": str(ROOT / "tests" / "data" / "policies.yml"),
        "APPROVALS_PORT": str(port or free_port()),
        "APPROVALS_CHECKPOINT_KEY": TEST_CHECKPOINT_KEY,
    }
    if key_file is not None:
        del env["APPROVALS_CHECKPOINT_KEY"]
        env["APPROVALS_CHECKPOINT_KEY_FILE"] = key_file
    return subprocess.run([*APPROVALS, *args], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # JSON log lines aside
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["serve"], ["migrate"], ["audit", "verify"], ["agents", "list"]])
def test_nothing_listening_is_one_line_on_every_command(command: list[str]) -> None:
    line = one_line(run(*command, database_url="postgresql://approvals:s3cret@127.0.0.1:1/approvals"))
    assert line.startswith("error: cannot use the database approvals at 127.0.0.1:1: nothing is listening")
    assert "APPROVALS_DATABASE_URL" in line
    assert "s3cret" not in line


def test_a_missing_database_and_an_unknown_host_say_so() -> None:
    missing = make_url(postgres_server_url()).set(database="approvals_no_such_database")
    line = one_line(run("agents", "list", database_url=missing.render_as_string(hide_password=False)))
    assert 'the database "approvals_no_such_database" does not exist' in line
    assert "createdb approvals_no_such_database" in line
    line = one_line(run("migrate", database_url="postgresql://postgres@no-such-host.invalid/approvals"))
    assert "the host name is unknown" in line


def test_debug_shows_the_traceback_and_version_answers(tmp_path: Path) -> None:
    result = run("--debug", "agents", "list", database_url="postgresql://postgres@127.0.0.1:1/approvals")
    assert result.returncode != 0 and "Traceback" in result.stderr
    version = subprocess.run([*APPROVALS, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("approvals 0.")


def test_a_key_file_that_cannot_be_created_is_one_line_naming_the_setting() -> None:
    result = run("serve", database_url="postgresql://postgres@127.0.0.1:1/approvals", key_file="/proc/no/key")
    line = one_line(result)
    assert line.startswith("error: APPROVALS_CHECKPOINT_KEY_FILE (/proc/no/key): cannot read or create it")


def test_a_port_in_use_is_one_line_naming_it(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(run("serve", database_url=database_url, port=port))
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert "APPROVALS_PORT" in line
