"""Clicks benchmark: signed Slack `block_actions` Approve clicks on PostgreSQL, ack latency and decisions/s.

Usage:

    .venv/bin/python bench/clicks.py [--duration 10] [--clickers 32] [--warmup 2]
                                     [--requests 24000] [--users 64] [--baseline-duration 5]
                                     [--postgres postgresql://postgres@127.0.0.1:5432/postgres]

What it does, in one run on one PostgreSQL server:

1. drops and recreates the database `bench_clicks`;
2. starts a fake Slack Web API (bench/_clicks_fake_slack.py: app.sandbox.slack_api.SandboxSlack in its own
   process, knowing --users approvers U0000001.. with emails) and `approvals serve` (auto-migrating,
   WARNING logs, Slack in HTTP mode against the fake, with a random signing secret, and a policy that
   makes `send_offer_letter` need one approval from any of those users in C0HIRING), as subprocesses
   on free ports, and polls until each answers;
3. registers an agent with `approvals agents add ... --json` and creates --requests pending requests
   through `POST /v1/requests` (32 at a time), then waits until the service has posted every card to
   the fake Slack (outbox empty), so that no card posting runs during the measurements;
4. runs the load generator (bench/_clicks_load.py, its own process: --clickers concurrent clients,
   each click built and signed just before it is sent) against `POST /slack/events` four times:
   three baselines of --baseline-duration seconds (a click with a bad signature, which Bolt rejects
   with 401; a signed click for an action_id no listener handles, which Bolt answers 404 by itself;
   a signed Approve whose value is no request id, which our listener acks at once with no database
   work), then the real thing for --duration seconds: each clicker takes the next pending request
   from a shared list and clicks Approve on it (a distinct request and action_ts per click, the user
   cycling through the approvers). The listener stores the click (one INSERT), acks, then decides
   (users.info, cached per user; one transaction recording the decision and the audit events).
5. prints a table: acks/s and ack latency p50/p99/max (time to the complete HTTP answer, for every
   answer in the window: a click Bolt answers 404 because the listener missed its 3 s ack deadline
   counts with its time), answers other than the expected status, and CPU used by the service,
   PostgreSQL, the fake Slack, the load generator and anything else on the host; the ratios of the
   Approve latencies to the baselines'; and decisions/s.

Decisions/s is counted from the database, not from acks: an ack only means the click is stored;
the decision comes after it, in the same process. The load generator reads
`SELECT count(*) FROM requests WHERE status = 'approved'` at the start and at the end of its own
measurement window (the same interval as the latencies), so decisions/s is approvals actually
committed per second while clicks arrive. In between it samples the service's sessions in
pg_stat_activity (open, running a query, idle inside a transaction, waiting for a lock), which tells
whether PostgreSQL or the service's own event loop is the one being waited for. After the run, the
bench waits for the stored clicks still undecided (the backlog) and reports how long that took, and
the click-to-decision lag (decisions.created_at - slack_clicks.created_at, both the database's clock)
p50/p99/max.

The host's CPU use in the second before start is printed too: other work on a small machine skews
every figure. It measures and never asserts: the exit status is 0 whatever the figures (non-zero
only if it could not run at all, e.g. PostgreSQL unreachable or a server that would not start). Both
subprocesses are always stopped, on error too. Their output goes to a temporary directory whose path
is printed; unexpected answers and a summary of the service's log are shown after the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from _common import (
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
SERVICE_DB = "bench_clicks"
CHANNEL = "C0HIRING"
TARGET_P99_MS = 100.0
READY_TIMEOUT = 60.0
CREATE_CONCURRENCY = 32
# A request body as tests/conftest.offer() makes it; on_behalf_of is nobody among the approvers.
OFFER = {
    "action": "send_offer_letter",
    "title": "Send offer letter to J. Doe",
    "summary": "Senior engineer, starts in January",
    "params": {"candidate": "J. Doe", "salary": 185000},
    "on_behalf_of": "recruiter@example.com",
    "links": ["https://ats.example.com/candidates/42"],
}
# (mode, label) in the order they run; the baselines first, while nothing else is going on.
SCENARIOS = [
    ("badsig", "bad signature (Bolt, 401)"),
    ("unknown", "unknown action_id (Bolt, 404)"),
    ("noop", "Approve, no request (ack, no DB)"),
    ("approve", "Approve click (store, ack, decide)"),
]


def user_ids(count: int) -> list[str]:
    """The same ids bench/_clicks_fake_slack.py knows."""
    return [f"U{n:07d}" for n in range(1, count + 1)]


def policies(users: list[str]) -> str:
    return (
        "default: deny\n"
        "policies:\n"
        "  - action: send_offer_letter\n"
        "    decision: require_approval\n"
        f"    approvers: {{users: [{', '.join(users)}]}}\n"
        "    required_approvals: 1\n"
        f"    channel: {CHANNEL}\n"
        "    expires_in: 24h\n"
    )


def postgres_cpu_seconds() -> dict[int, float]:
    """CPU seconds of every process named `postgres` on this host (all PostgreSQL backends), by pid."""
    used: dict[int, float] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue
        seconds = cpu_seconds(int(proc.name))
        if seconds is not None:
            used[int(proc.name)] = seconds
    return used


def postgres_cpu_used(before: dict[int, float], after: dict[int, float]) -> float | None:
    """PostgreSQL CPU seconds between two snapshots, over the processes alive at the second one (a
    backend that exited in between, another client's say, is lost: it counts under `other`)."""
    if not after:
        return None
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def cpu_snapshot(server_pid: int, fake_pid: int) -> dict[str, Any]:
    """CPU seconds so far: the service, all PostgreSQL processes, the fake Slack, finished children
    (the load generator, once waited for) and the whole host; `wall` is a monotonic clock reading."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "server": cpu_seconds(server_pid),
        "postgres": postgres_cpu_seconds(),
        "fake": cpu_seconds(fake_pid),
        "load": children.ru_utime + children.ru_stime,
        "host": host_cpu_seconds(),
        "wall": time.monotonic(),
    }


# -- subprocesses ---------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(no log)"

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with status {self.process.returncode}:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    name: str, argv: list[str], env: dict[str, str], workdir: Path, stdout: Path | None = None
) -> Process:
    """Start a subprocess; stderr (and stdout, unless given its own file) to `{name}.log`."""
    log = workdir / f"{name}.log"
    with log.open("wb") as sink:
        out = stdout.open("wb") if stdout is not None else sink
        try:
            process = subprocess.Popen(argv, env=env, cwd=workdir, stdout=out, stderr=sink)
        finally:
            if stdout is not None:
                out.close()
    return Process(name, process, log)


def wait_ready(server: Process, url: str, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.05)  # a polling interval, not a guess at how long startup takes
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f} s ({last}):\n{server.log_tail()}")


def start_fake_slack(workdir: Path, users: int, env: dict[str, str]) -> tuple[Process, str]:
    url_file = workdir / "fake-slack.url"
    argv = [sys.executable, str(HERE / "_clicks_fake_slack.py"), "--url-file", str(url_file)]
    fake = start("fake-slack", [*argv, "--users", str(users)], env, workdir, workdir / "fake-slack.out")
    deadline = time.monotonic() + READY_TIMEOUT
    while not url_file.exists():
        fake.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"fake Slack wrote no URL in {READY_TIMEOUT:.0f} s:\n{fake.log_tail()}")
        time.sleep(0.05)
    api_url = url_file.read_text().strip()
    wait_ready(fake, f"{api_url}auth.test")
    return fake, api_url


def register_agent(env: dict[str, str], workdir: Path) -> str:
    add = "agents add bench --owner o@example.com --actions send_offer_letter --json"
    done = subprocess.run(
        [approvals_cli(), *add.split()], env=env, cwd=workdir, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"`approvals agents add` failed ({done.returncode}): {done.stderr.strip()}")
    return str(json.loads(done.stdout)["api_key"])


# -- setup: pending requests with their cards -------------------------------------------------------


async def create_requests(base: str, token: str, count: int) -> list[str]:
    """`count` pending requests through the API, CREATE_CONCURRENCY at a time; their ids in order."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = json.dumps(OFFER).encode()
    ids: list[str] = []
    failures: Counter[str] = Counter()
    todo = iter(range(count))

    async def creator(session: aiohttp.ClientSession) -> None:
        for _ in todo:
            async with session.post(f"{base}/v1/requests", data=body, headers=headers) as response:
                answer = await response.json(content_type=None)
                if response.status == 201 and answer.get("status") == "pending":
                    ids.append(str(answer["id"]))
                else:
                    failures[f"{response.status} {str(answer)[:200]}"] += 1

    connector = aiohttp.TCPConnector(limit=CREATE_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(creator(session) for _ in range(CREATE_CONCURRENCY)))
    if failures:
        raise RuntimeError(f"creating requests failed: {dict(failures)}")
    return ids


def wait_for_cards(db_url: str, ids: list[str], service: Process, timeout: float) -> list[list[str]]:
    """Wait until the outbox is empty and every request has its card; [id, channel, ts] per request."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(db_url, autocommit=True) as conn:
        while True:
            service.check_alive()
            pending = conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()
            posted = conn.execute("SELECT count(DISTINCT request_id) FROM slack_messages").fetchone()
            if pending and posted and pending[0] == 0 and posted[0] >= len(ids):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"cards not posted after {timeout:.0f} s: outbox pending {pending}, posted {posted}"
                )
            time.sleep(0.2)
        failed = conn.execute("SELECT count(*) FROM outbox WHERE status <> 'done'").fetchone()
        if failed and failed[0]:
            raise RuntimeError(f"{failed[0]} outbox rows not delivered before the run")
        rows = conn.execute("SELECT request_id, channel, ts FROM slack_messages").fetchall()
    card = {str(r[0]): [str(r[1]), str(r[2])] for r in rows}
    return [[request_id, *card[request_id]] for request_id in ids]


# -- the runs ---------------------------------------------------------------------------------------


def run_load(
    mode: str,
    args: argparse.Namespace,
    *,
    url: str,
    secret: str,
    users: list[str],
    db_url: str,
    ids_file: Path,
    server: Process,
    fake: Process,
) -> dict[str, Any]:
    duration = args.duration if mode == "approve" else args.baseline_duration
    argv = [sys.executable, str(HERE / "_clicks_load.py"), "--url", url, "--secret", secret]
    argv += ["--mode", mode, "--users", ",".join(users), "--clients", str(args.clickers)]
    argv += ["--duration", str(duration), "--warmup", str(args.warmup)]
    if mode == "approve":
        argv += ["--ids-file", str(ids_file), "--database-url", db_url]
    before = cpu_snapshot(server.process.pid, fake.process.pid)
    done = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=duration + args.warmup + 120
    )
    after = cpu_snapshot(server.process.pid, fake.process.pid)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}):\n{done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    # Shares of one core over the whole load run (process start and warm-up included).
    wall = after["wall"] - before["wall"]
    for name in ("server", "fake", "load", "host"):
        start_value, end_value = before[name], after[name]
        used = None if start_value is None or end_value is None else (end_value - start_value) / wall
        result[f"{name}_cpu"] = used
    postgres = postgres_cpu_used(before["postgres"], after["postgres"])
    result["postgres_cpu"] = None if postgres is None else postgres / wall
    if result["host_cpu"] is not None:
        measured = [result[f"{n}_cpu"] for n in ("server", "postgres", "fake", "load")]
        result["other_cpu"] = max(0.0, result["host_cpu"] - sum(v or 0.0 for v in measured))
    else:
        result["other_cpu"] = None
    return result


def drain(db_url: str, service: Process, quiet_for: float = 15.0) -> dict[str, Any]:
    """Wait for stored clicks still undecided (the backlog when the load stopped): until there are none,
    or nothing moves for `quiet_for` seconds."""
    started = time.monotonic()
    last_change, last = started, None
    with psycopg.connect(db_url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM slack_clicks WHERE status = 'pending'").fetchone()
            undecided = int(row[0]) if row else 0
            now = time.monotonic()
            if undecided != last:
                last, last_change = undecided, now
            if undecided == 0 or now - last_change > quiet_for or service.process.poll() is not None:
                break
            time.sleep(0.05)
    return {"undecided": last, "seconds": last_change - started}


def database_summary(db_url: str) -> dict[str, Any]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        requests = dict(conn.execute("SELECT status, count(*) FROM requests GROUP BY status").fetchall())
        clicks = dict(conn.execute("SELECT status, count(*) FROM slack_clicks GROUP BY status").fetchall())
        refused = conn.execute(
            "SELECT data->>'reason', count(*) FROM audit_events WHERE kind = 'click_refused' GROUP BY 1"
        ).fetchall()
        retried = conn.execute("SELECT count(*) FROM slack_clicks WHERE attempts > 0").fetchone()
        lag = conn.execute(
            """
            SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY lag_ms),
                   percentile_disc(0.99) WITHIN GROUP (ORDER BY lag_ms),
                   max(lag_ms), count(*)
            FROM (SELECT extract(epoch FROM d.created_at - c.created_at) * 1000 AS lag_ms
                  FROM slack_clicks c JOIN decisions d ON d.request_id = c.request_id) AS lags
            """
        ).fetchone()
        undelivered = conn.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall()
    return {
        "requests": requests,
        "clicks": clicks,
        "refused": dict(refused),
        "retried_clicks": int(retried[0]) if retried else 0,
        "lag": lag,
        "outbox": dict(undelivered),
    }


# -- the report -------------------------------------------------------------------------------------


def unexpected(result: dict[str, Any]) -> int:
    return sum(n for status, n in result["statuses"].items() if status != str(result["expected"]))


def ratio(a: float | None, b: float | None) -> str:
    return fmt(a / b if a is not None and b else None, ".1f", "x")


def log_summary(text: str) -> Counter[str]:
    """Service log lines by kind: structlog JSON lines by level and event, other lines (Bolt's and
    APScheduler's plain logging) with every run of digits replaced by `#`, so repeats group."""
    seen: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = f"{record.get('level', '?')}: {record.get('event', '?')}"
        except (ValueError, AttributeError):
            key = re.sub(r"[0-9]+", "#", line.strip())
        seen[key[:150]] += 1
    return seen


def print_report(
    results: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    setup: dict[str, Any],
    drained: dict[str, Any],
    db: dict[str, Any],
) -> None:
    cores = os.cpu_count() or 1
    print()
    print(
        f"POST /slack/events on PostgreSQL, {args.clickers} clickers: {args.duration:g} s measured for the "
        f"Approve clicks, {args.baseline_duration:g} s per baseline, each after {args.warmup:g} s warm-up;\n"
        f"{cores} CPUs shared by PostgreSQL, the service, the fake Slack and the load generator"
    )
    header = (
        f"{'scenario':<36} {'expect':>6} {'acks/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'unexp':>5} {'srv CPU':>7} {'pg CPU':>6} {'fake':>5} {'load':>5} {'other':>5}"
    )
    print(header)
    print("-" * len(header))
    for mode, label in SCENARIOS:
        r = results[mode]
        print(
            f"{label:<36} {r['expected']:>6} {r['rps']:>7.1f} {fmt(r['p50_ms']):>7} {fmt(r['p99_ms']):>7} "
            f"{fmt(r['max_ms']):>7} {unexpected(r):>5} {pct(r['server_cpu']):>7} {pct(r['postgres_cpu']):>6} "
            f"{pct(r['fake_cpu']):>5} {pct(r['load_cpu']):>5} {pct(r['other_cpu']):>5}"
        )
    click = results["approve"]
    for mode, _label in SCENARIOS[:3]:
        base = results[mode]
        print(
            f"{'Approve / ' + mode:<36} {'':>6} {'':>7} {ratio(click['p50_ms'], base['p50_ms']):>7} "
            f"{ratio(click['p99_ms'], base['p99_ms']):>7}"
        )
    print(
        "latency: from sending a click to reading Bolt's whole answer, for every answer in the window, unexpected\n"
        "ones too (a 404 after Bolt's 3 s ack timeout counts with its time); acks/s: expected answers per second.\n"
        f"CPU columns: % of one core (the host has {cores}, so {cores * 100}% is all of it) over the whole "
        "load run, warm-up included;\npg = PostgreSQL processes alive at the end of the run; other = host busy "
        "minus the four named (other work on the host, kernel)."
    )

    print()
    window = click["window"]
    decided = click.get("decisions_per_s")
    print(
        f"decisions/s: {fmt(decided)} (requests that became approved during the {window:.1f} s window, "
        f"counted in the database: {click.get('approved_before')} -> {click.get('approved_after')})"
    )
    print(f"acks/s:      {click['rps']:.1f} (200s in the same window)")
    left = drained["undecided"]
    print(
        f"backlog:     {click.get('undecided_at_end')} stored clicks undecided when the window closed; "
        + (
            f"the last was decided {drained['seconds']:.1f} s after the load stopped"
            if left == 0
            else f"{left} STILL UNDECIDED {drained['seconds']:.0f} s after the load stopped"
        )
    )
    print(
        f"PostgreSQL:  the service's sessions in the window (sampled every 0.25 s): at most "
        f"{click.get('pg_sessions_max')} open (its pools: 10 for transactions and 10 in autocommit, the defaults), running a query "
        f"{fmt(click.get('pg_active_mean'))} on average ({click.get('pg_active_max')} at most), idle inside "
        f"a transaction {fmt(click.get('pg_idle_in_tx_mean'))} on average, waiting for a lock "
        f"{click.get('pg_lock_waits_max')} at most"
    )
    p50, p99, most, n = db["lag"] if db["lag"] else (None, None, None, 0)
    print(
        f"click -> decision (database clock, {n} clicks): p50 {fmt(p50, '.0f')} ms, "
        f"p99 {fmt(p99, '.0f')} ms, max {fmt(most, '.0f')} ms"
    )
    print(
        f"setup:       {setup['requests']} requests created in {setup['create_s']:.1f} s "
        f"({setup['requests'] / setup['create_s']:.0f}/s), cards posted {setup['cards_s']:.1f} s later; "
        f"{click['left']} left unclicked"
    )
    if click["exhausted"]:
        print("             the pending requests ran out before the window ended: raise --requests")

    print()
    print("targets:")
    p99 = click["p99_ms"]
    verdict = "MET" if p99 is not None and p99 < TARGET_P99_MS else "MISSED"
    print(
        f"  Approve click ack p99 < {TARGET_P99_MS:g} ms at {args.clickers} clickers: {fmt(p99, '.1f', ' ms')}  {verdict}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds of Approve clicks")
    parser.add_argument("--clickers", type=int, default=32, help="concurrent clickers")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run")
    parser.add_argument("--baseline-duration", type=float, default=5.0, help="measured seconds per baseline")
    parser.add_argument(
        "--requests", type=int, default=24000, help="pending requests to click (warm-up uses some too)"
    )
    parser.add_argument("--users", type=int, default=64, help="approvers U0000001.. the clicks cycle through")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="URL of any database on the server; the bench database is made beside it",
    )
    args = parser.parse_args()

    # SIGTERM becomes SystemExit, so the `finally` below still stops both subprocesses.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="bench-clicks-"))
    print(f"logs in {workdir}")
    users = user_ids(args.users)
    (workdir / "policies.yml").write_text(policies(users))
    secret = secrets.token_hex(16)
    db_url = database_url(args.postgres, SERVICE_DB)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPROVALS_", "SLACK_"))}
    env["PYTHONUNBUFFERED"] = "1"

    report_host_busy()

    processes: list[Process] = []
    service: Process | None = None
    try:
        recreate_databases(args.postgres, [SERVICE_DB])
        fake, api_url = start_fake_slack(workdir, args.users, env)
        processes.append(fake)
        port = free_port()
        service_env = {
            **env,
            "APPROVALS_DATABASE_URL": db_url,
            "APPROVALS_POLICIES": str(workdir / "policies.yml"),
            "APPROVALS_HOST": "127.0.0.1",
            "APPROVALS_PORT": str(port),
            "APPROVALS_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "APPROVALS_AUTO_MIGRATE": "true",
            "APPROVALS_LOG_LEVEL": "WARNING",
            "SLACK_BOT_TOKEN": "xoxb-bench",
            "SLACK_SIGNING_SECRET": secret,
            "SLACK_API_URL": api_url,
        }
        service = start("service", [approvals_cli(), "serve"], service_env, workdir)
        processes.append(service)
        base = f"http://127.0.0.1:{port}"
        wait_ready(service, f"{base}/readyz")
        token = register_agent(service_env, workdir)

        print(f"creating {args.requests} pending requests ...", flush=True)
        started = time.monotonic()
        ids = asyncio.run(create_requests(base, token, args.requests))
        created = time.monotonic()
        cards = wait_for_cards(db_url, ids, service, timeout=120 + args.requests / 20)
        setup = {
            "requests": len(ids),
            "create_s": created - started,
            "cards_s": time.monotonic() - created,
        }
        ids_file = workdir / "cards.json"
        ids_file.write_text(json.dumps(cards))

        results: dict[str, dict[str, Any]] = {}
        for mode, label in SCENARIOS:
            print(f"running {label} ...", flush=True)
            results[mode] = run_load(
                mode,
                args,
                url=f"{base}/slack/events",
                secret=secret,
                users=users,
                db_url=db_url,
                ids_file=ids_file,
                server=service,
                fake=fake,
            )
            service.check_alive()
        drained = drain(db_url, service)
        db = database_summary(db_url)

        for process in reversed(processes):
            process.stop()
        print_report(results, args, setup, drained, db)

        print()
        print(f"database: requests {db['requests']}, clicks {db['clicks']}, outbox {db['outbox']}")
        if db["refused"] or db["retried_clicks"]:
            print(f"  refused clicks by reason {db['refused']}, clicks retried {db['retried_clicks']}")
        fake_calls = (workdir / "fake-slack.out").read_text().strip()
        print(f"fake Slack Web API calls: {fake_calls or '(none reported)'}")
        for mode, label in SCENARIOS:
            r = results[mode]
            wrong = {k: n for k, n in r["statuses_all"].items() if k != str(r["expected"])}
            if wrong:
                print(
                    f"\n{label}: answers other than {r['expected']} in the whole run (warm-up included): "
                    f"{wrong}; in the window: {r['statuses']}"
                )
                for sample in r["samples"]:
                    print(f"  {sample}")
        lines = log_summary(service.log_text())
        print(f"\nservice log ({service.log}): {sum(lines.values())} lines")
        for line, n in lines.most_common(10):
            print(f"  {n:>6} x {line}")
    except (RuntimeError, psycopg.Error, subprocess.TimeoutExpired, aiohttp.ClientError, TimeoutError) as exc:
        print(f"\nbench could not complete: {exc}", file=sys.stderr)
        return 1
    finally:
        for process in reversed(processes):
            process.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
