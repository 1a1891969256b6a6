"""Helpers shared by the benchmarks: ports, databases, the CLI, CPU accounting and table formatting.

Imported as `_common` by scripts run as `python bench/<name>.py` (their folder is first on sys.path).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

# send_offer_letter becomes a pending request waiting for one approver: what intake and expiry measure.
PENDING_OFFER_POLICIES = """\
default: deny
policies:
  - action: send_offer_letter
    decision: require_approval
    approvers: {users: [U01COO]}
    channel: C0HIRING
    expires_in: 24h
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def database_url(server_url: str, name: str) -> str:
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


def recreate_databases(server_url: str, names: list[str]) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def approvals_cli() -> str:
    beside = Path(sys.executable).parent / "approvals"
    found = str(beside) if beside.exists() else shutil.which("approvals")
    if found is None:
        raise SystemExit("cannot find the `approvals` command: install the project into this venv")
    return found


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process, from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_cpu_seconds() -> float | None:
    """Busy (not idle, not iowait) CPU seconds of the whole host since boot, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


def report_host_busy() -> None:
    """Print how busy the host was over one second before a run: other work skews every figure."""
    before = host_cpu_seconds()
    time.sleep(1.0)  # one second of host CPU accounting
    after = host_cpu_seconds()
    if before is not None and after is not None:
        busy = after - before
        note = "  (other work is running: figures will be noisy)" if busy > 0.2 else ""
        print(f"host CPU busy before start: {busy:.0%} of one core{note}")


def fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def pct(share: float | None) -> str:
    return fmt(None if share is None else share * 100, ".0f", "%")
