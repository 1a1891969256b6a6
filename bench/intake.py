"""Intake benchmark: `POST /v1/requests` on PostgreSQL against a bare aiohttp + one-INSERT baseline.

Usage:

    .venv/bin/python bench/intake.py [--duration 10] [--clients 32,8] [--warmup 2]
                                     [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
                                     [--baseline-pool-size 10] [--baseline-max-overflow 0]
                                     [--rounds 3] [--set APPROVALS_NAME=VALUE ...]

What it does, in one run on one PostgreSQL server:

1. drops and recreates two databases, `bench_intake` and `bench_baseline`;
2. starts `approvals serve` (auto-migrating, WARNING logs, a policy that makes `send_offer_letter`
   a pending request needing approval) and the baseline (bench/_baseline.py: parse the JSON body,
   one INSERT into a simple table, answer 201; a fixed pool of 10 connections by default, as the
   service's default pool; `--set` passes the service other settings) as
   subprocesses on free ports, and polls `/readyz` on each until it answers 200;
3. registers an agent with `approvals agents add ... --json` and takes its API key;
4. for each client count, runs the load generator (bench/_load.py, its own process: N concurrent
   aiohttp clients for D seconds after a warm-up) against the baseline, then against the service,
   --rounds times in turn (this host's speed drifts from minute to minute: alternating runs let
   the drift fall on both sides alike);
5. prints a table (per round: 201s per second, p50/p99/max latency, non-201 responses, PostgreSQL
   connections opened during the run, and CPU used by the server under test, PostgreSQL, the load
   generator and anything else on the host, as shares of one core) with the service/baseline
   ratios and their median over the rounds, and whether the targets were met by the medians:
   throughput ratio >= 0.5 at 32 clients, service p99 < 50 ms at 8 clients.

The host's CPU use in the second before start is printed too: other work on a small machine
(a test suite, say) skews every figure, and the `other` column shows how much it took per run.

It measures and never asserts: the exit status is 0 whatever the figures (non-zero only if it
could not run at all, e.g. PostgreSQL unreachable or a server that would not start). Both servers
are always stopped, on error too. Server output goes to a temporary directory whose path is
printed; the tail of the service's log is shown when it answered anything but 201.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from _common import (
    PENDING_OFFER_POLICIES,
    approvals_cli,
    cpu_seconds,
    database_url,
    fmt,
    free_port,
    host_cpu_seconds,
    pct,
    recreate_databases,
    report_host_busy,
)

HERE = Path(__file__).resolve().parent
SERVICE_DB = "bench_intake"
BASELINE_DB = "bench_baseline"
TARGET_RATIO_AT = 32
TARGET_RATIO = 0.5
TARGET_P99_AT = 8
TARGET_P99_MS = 50.0
READY_TIMEOUT = 60.0


def sessions_opened(admin_url: str, database: str) -> int | None:
    """Connections ever made to `database` (pg_stat_database.sessions, PostgreSQL 14+)."""
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT sessions FROM pg_stat_database WHERE datname = %s", [database]
            ).fetchone()
    except psycopg.Error:
        return None
    return None if row is None else int(row[0])


def postgres_cpu_seconds() -> float | None:
    """CPU seconds of every process named `postgres` on this host (all PostgreSQL backends)."""
    total, seen = 0.0, False
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue
        used = cpu_seconds(int(proc.name))
        if used is not None:
            total, seen = total + used, True
    return total if seen else None


def cpu_snapshot(server_pid: int) -> dict[str, float | None]:
    """CPU seconds so far: the server, all PostgreSQL processes, finished children (the load
    generator, once waited for) and the whole host; `wall` is a monotonic clock reading."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "server": cpu_seconds(server_pid),
        "postgres": postgres_cpu_seconds(),
        "load": children.ru_utime + children.ru_stime,
        "host": host_cpu_seconds(),
        "wall": time.monotonic(),
    }


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    database: str
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.process.returncode} before it was ready:\n"
                    f"{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.05)  # a polling interval, not a guess at how long startup takes
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s ({last}):\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(name: str, argv: list[str], env: dict[str, str], port: int, database: str, workdir: Path) -> Server:
    log = workdir / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, env=env, cwd=workdir, stdout=sink, stderr=subprocess.STDOUT)
    return Server(name, process, port, database, log)


def register_agent(env: dict[str, str], workdir: Path) -> str:
    add = "agents add bench-agent --owner bench@example.com --actions send_offer_letter --json"
    done = subprocess.run(
        [approvals_cli(), *add.split()], env=env, cwd=workdir, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"`approvals agents add` failed ({done.returncode}): {done.stderr.strip()}")
    return str(json.loads(done.stdout)["api_key"])


def run_load(
    server: Server, admin_url: str, token: str | None, clients: int, duration: float, warmup: float
) -> dict[str, Any]:
    options = f"--url {server.base}/v1/requests --clients {clients} --duration {duration} --warmup {warmup}"
    argv = [sys.executable, str(HERE / "_load.py"), *options.split()]
    if token:
        argv += ["--token", token]
    sessions_before = sessions_opened(admin_url, server.database)
    before = cpu_snapshot(server.process.pid)
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=duration + warmup + 120)
    after = cpu_snapshot(server.process.pid)
    sessions_after = sessions_opened(admin_url, server.database)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}):\n{done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["new_connections"] = (
        sessions_after - sessions_before
        if sessions_before is not None and sessions_after is not None
        else None
    )
    # Shares of one core over the whole load run (process start and warm-up included).
    wall = after["wall"] - before["wall"]
    for name in ("server", "postgres", "load", "host"):
        start_value, end_value = before[name], after[name]
        used = None if start_value is None or end_value is None else (end_value - start_value) / wall
        result[f"{name}_cpu"] = used
    if result["host_cpu"] is not None:
        measured = [result[f"{n}_cpu"] for n in ("server", "postgres", "load")]
        result["other_cpu"] = max(0.0, result["host_cpu"] - sum(v or 0.0 for v in measured))
    else:
        result["other_cpu"] = None
    return result


def non_201(result: dict[str, Any]) -> int:
    return sum(n for status, n in result["statuses"].items() if status != "201")


def ratio_of(pair: dict[str, dict[str, Any]]) -> float | None:
    base = pair["baseline"]["rps"]
    return pair["service"]["rps"] / base if base else None


def median_ratio(pairs: list[dict[str, dict[str, Any]]]) -> float | None:
    ratios = sorted(r for r in (ratio_of(pair) for pair in pairs) if r is not None)
    return statistics.median(ratios) if ratios else None


def median_of(pairs: list[dict[str, dict[str, Any]]], name: str, key: str) -> float | None:
    values = [pair[name][key] for pair in pairs if pair[name][key] is not None]
    return statistics.median(values) if values else None


def print_report(results: dict[int, list[dict[str, dict[str, Any]]]], duration: float, warmup: float) -> None:
    cores = os.cpu_count() or 1
    print()
    print(
        f"POST /v1/requests on PostgreSQL: {duration:g} s measured after {warmup:g} s warm-up per run; "
        f"{cores} CPUs shared by PostgreSQL, both servers and the load generator"
    )
    header = (
        f"{'clients':>7} {'round':>5}  {'server':<9} {'201/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'non-201':>7} {'new conns':>9} {'srv CPU':>8} {'pg CPU':>7} {'load CPU':>8} {'other':>6}"
    )
    print(header)
    print("-" * len(header))
    for clients, pairs in results.items():
        for number, pair in enumerate(pairs, start=1):
            for name in ("baseline", "service"):
                r = pair[name]
                print(
                    f"{clients:>7} {number:>5}  {name:<9} {r['rps']:>8.1f} {fmt(r['p50_ms']):>8} "
                    f"{fmt(r['p99_ms']):>8} {fmt(r['max_ms']):>8} {non_201(r):>7} "
                    f"{fmt(r['new_connections'], 'd'):>9} {pct(r['server_cpu']):>8} "
                    f"{pct(r['postgres_cpu']):>7} {pct(r['load_cpu']):>8} {pct(r['other_cpu']):>6}"
                )
            base, svc = pair["baseline"], pair["service"]
            p99_ratio = svc["p99_ms"] / base["p99_ms"] if svc["p99_ms"] and base["p99_ms"] else None
            print(
                f"{clients:>7} {number:>5}  {'ratio':<9} {fmt(ratio_of(pair), '.2f'):>8} {'':>8} "
                f"{fmt(p99_ratio, '.1f', 'x'):>8}   (service/baseline)"
            )
        if len(pairs) > 1:
            print(
                f"{clients:>7} {'all':>5}  {'median':<9} {fmt(median_ratio(pairs), '.2f'):>8} "
                f"{'':>8} {fmt(median_of(pairs, 'service', 'p99_ms')):>8}   (ratio; service p99)"
            )
    print(
        "new conns: PostgreSQL connections the server opened during the run (pool churn).\n"
        f"CPU columns: % of one core (the host has {cores}, so {cores * 100}% is all of it) over the whole "
        "load run, warm-up included:\nthe server under test, PostgreSQL (live processes only: backends that "
        "exited during the run, see new conns, count\nunder other), the load generator, and other = host "
        "busy minus those three (other work on the host, kernel)."
    )

    print()
    print("targets (medians over the rounds):")
    if TARGET_RATIO_AT in results:
        ratio = median_ratio(results[TARGET_RATIO_AT]) or 0.0
        verdict = "MET" if ratio >= TARGET_RATIO else "MISSED"
        print(f"  throughput ratio at {TARGET_RATIO_AT} clients >= {TARGET_RATIO}: {ratio:.2f}  {verdict}")
    else:
        print(f"  throughput ratio at {TARGET_RATIO_AT} clients >= {TARGET_RATIO}: not measured")
    if TARGET_P99_AT in results:
        p99 = median_of(results[TARGET_P99_AT], "service", "p99_ms")
        verdict = "MET" if p99 is not None and p99 < TARGET_P99_MS else "MISSED"
        shown = fmt(p99, ".1f", " ms")
        print(f"  service p99 at {TARGET_P99_AT} clients < {TARGET_P99_MS:g} ms: {shown}  {verdict}")
    else:
        print(f"  service p99 at {TARGET_P99_AT} clients < {TARGET_P99_MS:g} ms: not measured")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run")
    parser.add_argument("--clients", default="32,8", help="comma-separated concurrency levels")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="URL of any database on the server; the bench databases are made beside it",
    )
    parser.add_argument("--baseline-pool-size", type=int, default=10, help="the service's pool_size is 10")
    parser.add_argument(
        "--baseline-max-overflow",
        type=int,
        default=0,
        help="0: a fixed pool; 20 gives the baseline the service's pool settings, churn included",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="baseline and service runs alternate this many times per level; the median ratio counts",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="APPROVALS_NAME=VALUE",
        help="a setting for the service (repeatable), e.g. APPROVALS_DATABASE_POOL_SIZE=20",
    )
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    if any(not name.startswith("APPROVALS_") for name in settings):
        parser.error("--set takes APPROVALS_NAME=VALUE")
    levels = [int(part) for part in args.clients.split(",") if part.strip()]

    # SIGTERM becomes SystemExit, so the `finally` below still stops both servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    print(f"server logs in {workdir}")
    (workdir / "policies.yml").write_text(PENDING_OFFER_POLICIES)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPROVALS_", "SLACK_"))}
    env.update(
        APPROVALS_DATABASE_URL=database_url(args.postgres, SERVICE_DB),
        APPROVALS_POLICIES=str(workdir / "policies.yml"),
        APPROVALS_HOST="127.0.0.1",
        APPROVALS_AUTO_MIGRATE="true",
        APPROVALS_LOG_LEVEL="WARNING",
    )
    report_host_busy()
    servers: list[Server] = []
    try:
        recreate_databases(args.postgres, [SERVICE_DB, BASELINE_DB])
        service_port, baseline_port = free_port(), free_port()
        service_env = {
            **env,
            "APPROVALS_PORT": str(service_port),
            "APPROVALS_PUBLIC_URL": f"http://127.0.0.1:{service_port}",
            **settings,
        }
        baseline_db = database_url(args.postgres, BASELINE_DB)
        baseline_argv = [sys.executable, str(HERE / "_baseline.py"), "--port", str(baseline_port)]
        baseline_argv += ["--database-url", baseline_db, "--pool-size", str(args.baseline_pool_size)]
        baseline_argv += ["--max-overflow", str(args.baseline_max_overflow)]
        baseline = start("baseline", baseline_argv, env, baseline_port, BASELINE_DB, workdir)
        servers.append(baseline)
        service = start("service", [approvals_cli(), "serve"], service_env, service_port, SERVICE_DB, workdir)
        servers.append(service)
        baseline.wait_ready()
        service.wait_ready()
        token = register_agent(service_env, workdir)

        # Runs alternate, so that a host whose speed drifts (a shared VM) weighs on both sides alike.
        results: dict[int, list[dict[str, dict[str, Any]]]] = {}
        for clients in levels:
            for round_number in range(1, args.rounds + 1):
                pair: dict[str, dict[str, Any]] = {}
                for name, server, key in (("baseline", baseline, None), ("service", service, token)):
                    print(f"running {name} at {clients} clients, round {round_number} ...", flush=True)
                    pair[name] = run_load(server, args.postgres, key, clients, args.duration, args.warmup)
                    if server.process.poll() is not None:
                        raise RuntimeError(f"{name} died during the run:\n{server.log_tail()}")
                results.setdefault(clients, []).append(pair)

        print_report(results, args.duration, args.warmup)
        failures = [
            (c, n, r) for c, pairs in results.items() for pair in pairs for n, r in pair.items() if non_201(r)
        ]
        for clients, name, r in failures:
            print(f"\n{name} at {clients} clients answered non-201: {r['statuses']}")
            for sample in r["samples"]:
                print(f"  {sample}")
        if any(name == "service" for _, name, _ in failures):
            print(f"\nservice log tail:\n{service.log_tail()}")
    except (RuntimeError, psycopg.Error, subprocess.TimeoutExpired) as exc:
        print(f"\nbench could not complete: {exc}", file=sys.stderr)
        return 1
    finally:
        for server in reversed(servers):
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
