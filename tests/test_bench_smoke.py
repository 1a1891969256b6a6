"""Every benchmark still runs from start to end, at a tiny size (its figures mean nothing here: the point is
that a change to the service cannot silently break the benches that measure it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, postgres_server_url

TINY = {
    "intake": ["--duration", "1", "--warmup", "0.5", "--clients", "2", "--rounds", "1"],
    "expiry": ["--requests", "300", "--skip-steady"],
    "clicks": [
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--baseline-duration",
        "1",
        "--requests",
        "60",
        "--clickers",
        "4",
    ],
    "audit": [
        "--requests",
        "300",
        "--days",
        "2",
        "--samples",
        "2",
        "--export-chains",
        "50",
        "--hash-sample",
        "1000",
    ],
}
# A line each bench prints once it has measured its service against its baseline.
FINISHED = {"intake": "ratio", "expiry": "targets:", "clicks": "Approve", "audit": "export ("}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("bench", sorted(TINY))
def test_the_bench_runs_to_the_end_at_a_tiny_size(bench: str) -> None:
    result = subprocess.run(
        [sys.executable, f"bench/{bench}.py", *TINY[bench], "--postgres", postgres_server_url()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert FINISHED[bench] in result.stdout, result.stdout[-3000:]
    assert "Traceback" not in result.stderr
