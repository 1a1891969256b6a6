"""A throwaway PostgreSQL server of a test's own, to stop, crash and restart while the service runs on it.

The PostgreSQL server the test suite shares (port 5432) must never be restarted: other runs use it at the
same time. A test that needs the database to go away builds one of these instead: `initdb` into a fresh
temporary directory, a free port, listening on 127.0.0.1 only (its Unix socket in that directory), trust
authentication for the `postgres` role, and `pg_ctl` to start it, stop it (`fast`: sessions are terminated
cleanly; `immediate`: every process quits at once and the next start replays the WAL, as after a crash) and
restart it. `destroy()` stops it and removes the directory. Nothing is written outside that directory.

PostgreSQL refuses to run as root, so when the tests run as root every command runs as the `postgres` OS
user (subprocess's `user=`), which owns the directory; otherwise as the current user.

The binaries are found in $APPROVALS_TEST_PG_BINDIR, `pg_config --bindir`, /usr/lib/postgresql/*/bin
(newest first) or beside `pg_ctl` on PATH. `missing_tools()` says why none can be used.

`fsync = off`: only an operating-system crash could lose data with it, and none is simulated here (an
`immediate` stop kills PostgreSQL, not the kernel, whose page cache keeps every write). Commits stay
synchronous, so a commit the service saw succeed survives every stop this module makes.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BINDIR_ENV = "APPROVALS_TEST_PG_BINDIR"
SERVER_USER = "postgres"  # who runs the server when we are root
StopMode = Literal["smart", "fast", "immediate"]


def _has_tools(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres"))


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    candidates: list[Path] = []
    if explicit := os.environ.get(BINDIR_ENV):
        candidates.append(Path(explicit))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(done.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    if pg_ctl := shutil.which("pg_ctl"):
        candidates.append(Path(pg_ctl).resolve().parent)
    return next((path for path in candidates if _has_tools(path)), None)


def _server_user() -> str | None:
    """The OS user to run PostgreSQL as: `postgres` when we are root, else ourselves (None)."""
    return SERVER_USER if os.geteuid() == 0 else None


def missing_tools() -> str | None:
    """Why no throwaway cluster can be made here, or None when one can."""
    if find_bindir() is None:
        return f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; set {BINDIR_ENV}"
    user = _server_user()
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"running as root and there is no {user!r} OS user to run PostgreSQL as"
    return None


class ClusterError(RuntimeError):
    """A PostgreSQL tool failed; the message carries its output and the tail of the server log."""


@dataclass
class PgCluster:
    """One PostgreSQL server in `root`, listening on 127.0.0.1:`port`."""

    bindir: Path
    root: Path
    port: int
    user: str | None

    @classmethod
    def create(cls, port: int) -> PgCluster:
        """initdb a new cluster (not started yet) in a new temporary directory."""
        reason = missing_tools()
        if reason is not None:
            raise ClusterError(reason)
        bindir = find_bindir()
        assert bindir is not None
        user = _server_user()
        root = Path(tempfile.mkdtemp(prefix=f"approvals-pg-{port}-"))
        cluster = cls(bindir=bindir, root=root, port=port, user=user)
        try:
            if user is not None:
                entry = pwd.getpwnam(user)
                os.chown(root, entry.pw_uid, entry.pw_gid)
            cluster._run(
                "initdb",
                "--pgdata",
                str(cluster.data),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",
            )
            settings = {
                "port": str(port),
                "listen_addresses": "'127.0.0.1'",
                "unix_socket_directories": f"'{root}'",
                "max_connections": "60",
                "shared_buffers": "32MB",
                "fsync": "off",
            }
            with (cluster.data / "postgresql.conf").open("a") as conf:
                conf.write("\n# tests/pg_cluster.py\n")
                conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cluster

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / tool), *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}
        try:
            done = subprocess.run(
                argv,
                cwd=self.root,
                env=env,
                user=self.user,
                group=self.user,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{tool} {' '.join(args)} timed out:\n{self.log_tail()}") from exc
        allowed = (0, 3) if args[:1] == ("status",) else (0,)  # pg_ctl status: 3 means "not running"
        if done.returncode not in allowed:
            raise ClusterError(
                f"{tool} {' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}\n"
                f"{self.log_tail()}"
            )
        return done

    def _pg_ctl(self, action: str, *args: str) -> None:
        # -w: return once the server accepts connections (start) or is gone (stop).
        self._run("pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", *args)

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self, mode: StopMode = "fast") -> None:
        self._pg_ctl("stop", "-m", mode)

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop (`fast`: terminate sessions; `immediate`: crash) and start again; returns once it accepts."""
        self._pg_ctl("restart", "-m", mode)

    def processes(self) -> list[int]:
        """The postmaster's pid and its children's (backends, checkpointer, ...), from /proc."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the process ended meanwhile
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
        return [postmaster, *children]

    def freeze(self) -> list[int]:
        """SIGSTOP the whole server: it keeps its sockets open but answers nothing (a hung host)."""
        pids = self.processes()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    @staticmethod
    def thaw(pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def running(self) -> bool:
        """pg_ctl status: 0 running, 3 not running."""
        return self._run("pg_ctl", "status", "-D", str(self.data)).returncode == 0

    def destroy(self) -> None:
        """Stop the server if it runs (immediately: nothing in it is kept) and remove its directory."""
        try:
            if self.data.exists() and self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
