"""`approvals serve --sandbox` as a newcomer runs it: a real subprocess on a free port, with the example
policies.yml (MFA required for offer letters), the embedded PostgreSQL server in a directory of its own,
and its stdout kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import APPROVALS, ROOT, clean_environment, free_port


@dataclass
class SandboxService:
    base: str
    proc: subprocess.Popen[str]
    output: Path
    env: dict[str, str]

    @property
    def sandbox(self) -> str:
        return self.base + "/sandbox"

    def stdout(self) -> str:
        return self.output.read_text()

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=10) as response:
            return json.loads(response.read())

    def post_json(self, path: str, body: dict[str, Any], **headers: str) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", **headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def state(self, user: str = "U01COO") -> dict[str, Any]:
        return dict(self.get_json(f"/sandbox/state?user={user}"))

    def wait_for_state(self, check: Any, user: str = "U01COO", timeout: float = 15) -> dict[str, Any]:
        """Poll the page's state until `check(state)` is true (the page itself waits on its events)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(user)
            if check(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"the sandbox state never matched: {json.dumps(state)[:2000]}")
            time.sleep(0.1)


def start_sandbox(*args: str, env: dict[str, str] | None = None) -> SandboxService:
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-"))
    port = free_port()
    environment = clean_environment() | {
        # As `make run` does: the embedded server (here with its data in this run's directory).
        "APPROVALS_EMBEDDED_DATABASE_DIR": str(workdir / "postgres"),
        "APPROVALS_PORT": str(port),
        "APPROVALS_POLICIES": str(ROOT / "policies.yml"),
        "APPROVALS_CHECKPOINT_KEY_FILE": str(workdir / "checkpoint.key"),
        **(env or {}),
    }
    output = workdir / "stdout.log"
    with output.open("w") as sink:
        proc = subprocess.Popen(
            [*APPROVALS, "serve", "--sandbox", *args],
            env=environment,
            text=True,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    service = SandboxService(f"http://127.0.0.1:{port}", proc, output, environment)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"serve --sandbox exited with {proc.returncode}: {service.stdout()}")
        try:
            with urllib.request.urlopen(service.base + "/readyz", timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                stop_sandbox(service)
                raise AssertionError(f"serve --sandbox did not become ready: {service.stdout()}") from None
            time.sleep(0.1)
    return service


def stop_sandbox(service: SandboxService) -> int:
    if service.proc.poll() is None:
        service.proc.send_signal(signal.SIGTERM)
        try:
            service.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.proc.kill()
            service.proc.wait()
    return service.proc.returncode


def running_sandbox() -> Iterator[SandboxService]:
    """For a fixture: one sandbox service, stopped (and checked to stop cleanly) at the end."""
    service = start_sandbox()
    try:
        yield service
    finally:
        code = stop_sandbox(service)
    assert code == 0, service.stdout()[-3000:]


def run_approvals(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`approvals ARGS` in a subprocess with exactly `env` (conftest.run_cli is the async one, for a
    database the service under test is using)."""
    return subprocess.run(
        [*APPROVALS, *args], env=env, capture_output=True, text=True, timeout=60, cwd=os.fspath(ROOT)
    )
