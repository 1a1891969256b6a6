"""Helpers shared by the benchmarks: ports, databases, the CLI, CPU accounting and table formatting.

Imported as `_common` by scripts run as `python bench/<name>.py` (their folder is first on sys.path).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import psycopg
from psycopg import sql


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


def fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def pct(share: float | None) -> str:
    return fmt(None if share is None else share * 100, ".0f", "%")
