"""`approvals serve` and `approvals migrate` as real processes: refuse an unmigrated database, start when ready."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import fresh_postgres, head_revision

APPROVALS = [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[str], timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"serve exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                return int(resp.status)
        except OSError:
            time.sleep(0.1)
    raise AssertionError("serve did not become ready")


@pytest.fixture
def empty_postgres(worker_name: str) -> Iterator[str]:
    with fresh_postgres(f"approvals_empty_{worker_name}") as url:
        yield url


def _env(database_url: str, port: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "APPROVALS_DATABASE_URL": database_url,
        "APPROVALS_PORT": str(port),
        "APPROVALS_POLICIES": "tests/data/policies.yml",
        **extra,
    }


def test_serve_refuses_an_unmigrated_postgres_and_names_the_command(empty_postgres: str) -> None:
    result = subprocess.run(
        [*APPROVALS, "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(empty_postgres, free_port()),
    )
    assert result.returncode == 2
    assert "run `approvals migrate`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_migrate_then_serve_starts_and_is_ready(empty_postgres: str) -> None:
    migrated = subprocess.run(
        [*APPROVALS, "migrate"], capture_output=True, text=True, timeout=60, env=_env(empty_postgres, 8080)
    )
    assert migrated.returncode == 0, migrated.stderr
    assert f"database at {head_revision()}" in migrated.stdout
    port = free_port()
    proc = subprocess.Popen(
        [*APPROVALS, "serve"],
        env=_env(empty_postgres, port),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_ready(port, proc) == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert '"event": "slack_disabled"' in out
    assert '"event": "stopping"' in out


def test_the_embedded_default_migrates_itself_on_first_start(tmp_path: Path) -> None:
    port = free_port()
    database = tmp_path / "var" / "approvals.db"
    proc = subprocess.Popen(
        [*APPROVALS, "serve"],
        env=_env(f"sqlite:///{database}", port),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_ready(port, proc) == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert database.exists()
    assert '"event": "database_migrated"' in out


def test_a_broken_policy_file_stops_serve_naming_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "policies.yml"
    bad.write_text("default: deny\npolicies:\n  - action: x\n    decision: allow\n    colour: red\n")
    result = subprocess.run(
        [*APPROVALS, "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(f"sqlite:///{tmp_path}/a.db", free_port(), APPROVALS_POLICIES=str(bad)),
    )
    assert result.returncode == 2
    assert f"{bad}:5: policies[0].colour" in result.stderr
    assert "Traceback" not in result.stderr


def test_mfa_without_an_identity_provider_stops_serve_naming_the_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policies.yml"
    policy.write_text(
        "default: deny\npolicies:\n  - action: pay\n    decision: require_approval\n"
        "    approvers: {users: [U1AA]}\n    channel: C1AA\n    mfa: {required: true}\n"
    )
    result = subprocess.run(
        [*APPROVALS, "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(f"sqlite:///{tmp_path}/a.db", free_port(), APPROVALS_POLICIES=str(policy)),
    )
    assert result.returncode == 2
    assert "policy 'pay'" in result.stderr
    assert "APPROVALS_OIDC_ISSUER" in result.stderr
