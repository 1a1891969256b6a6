"""The README's "Try the API" block works when pasted: run as written, in bash, on a free port and an
embedded database of its own (the only substitutions), with `make run` starting the service."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import ROOT, clean_environment, free_port

README = ROOT / "README.md"


def try_the_api_block() -> str:
    text = README.read_text()
    section = text.split("## Try the API", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "the README's Try the API section has no sh block"
    return match.group(1)


def test_the_readme_starts_with_the_two_commands_and_the_walkthrough() -> None:
    text = README.read_text()
    first = text[: text.index("## Try the API")]
    assert (
        "![" in first and "docs/sandbox-card.png" in first and (ROOT / "docs" / "sandbox-card.png").exists()
    )
    assert re.search(r"^make run\b", first, re.M) and re.search(r"^make test\b", first, re.M)
    steps = re.findall(r"^(\d)\. ", first.split("## See it work", 1)[1], re.M)
    assert steps == ["1", "2", "3", "4", "5"]
    makefile = (ROOT / "Makefile").read_text()
    assert "approvals serve --sandbox=auto" in makefile  # what `make run` does, as the README says


def test_the_try_the_api_commands_work_as_pasted() -> None:
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="readme-"))
    block = try_the_api_block()
    assert "localhost:8080" in block and "make run" in block
    script = (
        block.replace("localhost:8080", f"localhost:{port}")
        .replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        .replace("approvals.log", str(workdir / "approvals.log"))
        # The long-poll waits for someone to decide; nobody will here.
        .replace("?wait=30", "?wait=1")
        # The environment is the suite's: never let a stale stamp reinstall it under the other workers.
        .replace("make run", "make -o .venv/.installed run")
    )
    env = clean_environment() | {
        "APPROVALS_PORT": str(port),
        "APPROVALS_EMBEDDED_DATABASE_DIR": str(workdir / "postgres"),
        "APPROVALS_CHECKPOINT_KEY_FILE": str(workdir / "checkpoint.key"),
    }
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # `make run &` and its service are in this group, stopped below
    )
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, err + (workdir / "approvals.log").read_text()[-3000:]
    lines = out.strip().splitlines()
    assert re.fullmatch(rf"decide req_[0-9a-f]{{24}} at http://127.0.0.1:{port}/sandbox", lines[-2])
    request = json.loads(lines[-1])
    assert request["status"] == "pending" and request["action"] == "send_offer_letter"
    assert request["params"]["salary"] == 185000
    assert "Sandbox (open in a browser)" in (workdir / "approvals.log").read_text()
