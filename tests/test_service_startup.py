"""`approvals serve` and `approvals migrate` as real processes: refuse an unmigrated database, start when ready."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import APPROVALS, clean_environment, free_port, fresh_postgres, head_revision
from tests.eventually import eventually_sync


def wait_ready(port: int, proc: subprocess.Popen[str]) -> int:
    def ready() -> int | None:
        if proc.poll() is not None:
            raise AssertionError(
                f"serve exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                return int(resp.status)
        except OSError:
            return None

    return eventually_sync(ready, interval=0.1, what="serve to become ready")


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


def _embedded_env(tmp_path: Path, port: int) -> dict[str, str]:
    """No APPROVALS_DATABASE_URL: the embedded server, its data under tmp_path."""
    return clean_environment() | {
        "APPROVALS_PORT": str(port),
        "APPROVALS_POLICIES": "tests/data/policies.yml",
        "APPROVALS_EMBEDDED_DATABASE_DIR": str(tmp_path / "var" / "postgres"),
        "APPROVALS_CHECKPOINT_KEY_FILE": str(tmp_path / "var" / "checkpoint.key"),
    }


def _serve(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*APPROVALS, "serve"], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _postmaster_running(data: Path) -> bool:
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except ProcessLookupError:
        return False
    return True


def test_the_embedded_default_starts_migrates_and_stops_with_the_service(tmp_path: Path) -> None:
    port = free_port()
    env = _embedded_env(tmp_path, port)
    data = Path(env["APPROVALS_EMBEDDED_DATABASE_DIR"])
    proc = _serve(env)
    try:
        assert wait_ready(port, proc) == 200
        assert _postmaster_running(data)
        # The CLI joins the running server (and leaves it running when it exits).
        listed = subprocess.run(
            [*APPROVALS, "agents", "list", "--json"], env=env, capture_output=True, text=True, timeout=60
        )
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == []
        assert _postmaster_running(data)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert '"event": "database_migrated"' in out
    assert (data / "PG_VERSION").exists()
    assert not _postmaster_running(data)  # the last process using it stopped it


def test_the_embedded_server_comes_back_after_a_kill_9(tmp_path: Path) -> None:
    port = free_port()
    env = _embedded_env(tmp_path, port)
    data = Path(env["APPROVALS_EMBEDDED_DATABASE_DIR"])
    first = _serve(env)
    try:
        assert wait_ready(port, first) == 200
    finally:
        first.kill()  # SIGKILL: no clean-up runs, its pid stays in the server's user list
        first.communicate(timeout=30)
    second = _serve(env)
    try:
        assert wait_ready(port, second) == 200
    finally:
        second.terminate()
        out, _ = second.communicate(timeout=30)
    assert second.returncode == 0, out
    assert '"event": "embedded_database_stale_pids"' in out
    # Only the second start's own pid was left: its clean exit stopped the server.
    assert not _postmaster_running(data)


def test_a_broken_policy_file_stops_serve_naming_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "policies.yml"
    bad.write_text("default: deny\npolicies:\n  - action: x\n    decision: allow\n    colour: red\n")
    result = subprocess.run(
        [*APPROVALS, "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env("postgresql://postgres@127.0.0.1:1/unused", free_port(), APPROVALS_POLICIES=str(bad)),
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
        env=_env("postgresql://postgres@127.0.0.1:1/unused", free_port(), APPROVALS_POLICIES=str(policy)),
    )
    assert result.returncode == 2
    assert "policy 'pay'" in result.stderr
    assert "APPROVALS_OIDC_ISSUER" in result.stderr
