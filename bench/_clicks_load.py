"""Load generator for bench/clicks.py: N concurrent clickers POST signed block_actions to /slack/events.

Runs in its own process so that the service never shares an event loop (or a CPU budget inside one
process) with the clickers. Each click is built and signed just before it is sent (Slack's v0
scheme: HMAC-SHA256 of `v0:{timestamp}:{body}`, as tests/slack_helpers.signed_headers does), in the
shape of tests/slack_helpers.block_actions; the latency is the time from sending the request to
having read the whole response (Bolt's ack). After a warm-up, only clicks that *complete* inside the
measurement window are counted.

Modes:

  approve   Approve (action_id approve_request) on a distinct pending request per click, taken from
            --ids-file; each click has its own action_ts, the user cycles through --users. The
            listener stores the click (one INSERT), acks, then decides. Expects 200.
  noop      Approve with a button value that is not a request id: the same listener acks at once,
            with no database work. Expects 200.
  unknown   A valid signed block_actions for an action_id no listener handles: Bolt answers by
            itself (404 "unhandled request"). Expects 404.
  badsig    An Approve click signed with the wrong secret: Bolt rejects it. Expects 401.

In approve mode the run ends early when the ids run out (the window is cut there), and the process
counts decisions from the database itself: `SELECT count(*) FROM requests WHERE status = 'approved'`
at the window's start and end, so decisions/s covers the same interval as the latencies; in between
it samples pg_stat_activity (the service's pool has its default 10 connections).

Usage (normally started by bench/clicks.py):

    .venv/bin/python bench/_clicks_load.py --url http://127.0.0.1:PORT/slack/events --secret S \
        --mode approve --ids-file IDS.json --database-url postgresql://... --users U0000001,U0000002 \
        [--clients 32] [--duration 10] [--warmup 2]

Prints one JSON object on stdout: count (expected answers in the window), window (seconds),
rps, p50_ms, p99_ms, max_ms (of every answer in the window, unexpected ones included), statuses (in the window; "error" for transport errors), statuses_all,
sent and acked_total (whole run, warm-up included), samples (the first few unexpected answers),
client_cpu, exhausted, and in approve mode approved_before, approved_after, decisions_per_s,
undecided_at_end (clicks stored but not decided when the window closed) and the service's PostgreSQL
sessions sampled every 0.25 s in the window: pg_sessions_max, pg_active_max, pg_active_mean (running
a query), pg_idle_in_tx_mean (inside a transaction, waiting for the service to send the next
statement) and pg_lock_waits_max (waiting for a row or table lock).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import json
import math
import time
from collections import Counter
from typing import Any
from urllib.parse import urlencode

import aiohttp
import psycopg

TEAM_ID = "T0TEAM"  # app/sandbox/slack_api.TEAM_ID
APPROVE = "approve_request"  # app/slack/ids.ActionId.APPROVE
UNKNOWN = "bench_unknown_action"
EXPECTED = {"approve": 200, "noop": 200, "unknown": 404, "badsig": 401}
MAX_SAMPLES = 5
APPROVED = "SELECT count(*) FROM requests WHERE status = 'approved'"
UNDECIDED = "SELECT count(*) FROM slack_clicks WHERE status = 'pending'"
# The service's sessions on its database (this one excepted): all, running a query, in a transaction but
# waiting for the service (its event loop) to send the next statement, waiting for a lock.
SESSIONS = """
    SELECT count(*), count(*) FILTER (WHERE state = 'active'),
           count(*) FILTER (WHERE state = 'idle in transaction'), count(*) FILTER (WHERE wait_event_type = 'Lock')
    FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
"""
SAMPLE_EVERY = 0.25


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def block_actions(
    value: str, action_id: str, *, user: str, channel: str, message_ts: str, action_ts: str
) -> dict[str, Any]:
    """One button click, in the shape of tests/slack_helpers.block_actions (Slack's documented one)."""
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM_ID},
        "api_app_id": "A0APP",
        "token": "legacy-verification-token",
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
        },
        "trigger_id": "1337.42.abcdef",
        "team": {"id": TEAM_ID, "domain": "example"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel, "name": "hiring"},
        "message": {
            "type": "message",
            "ts": message_ts,
            "blocks": [{"type": "header", "block_id": "h", "text": {"type": "plain_text", "text": "Offer"}}],
        },
        "state": {"values": {}},
        "response_url": "http://127.0.0.1:9/none",
        "actions": [
            {
                "action_id": action_id,
                "block_id": "decide",
                "value": value,
                "type": "button",
                "action_ts": action_ts,
            }
        ],
    }


def signed(body: str, secret: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    digest = hmac.new(secret, f"v0:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


async def scalar(conn: psycopg.AsyncConnection[Any], query: str) -> int:
    row = await (await conn.execute(query)).fetchone()
    return 0 if row is None else int(row[0])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    mode: str = args.mode
    expected = EXPECTED[mode]
    secret = (args.secret if mode != "badsig" else "not-" + args.secret).encode()
    users = [u for u in args.users.split(",") if u]
    # (request id, channel, message ts) per click; the list is shared: each id is clicked once.
    cards: list[list[str]] = []
    if mode == "approve":
        with open(args.ids_file) as f:
            cards = json.load(f)
        cards.reverse()  # pop() from the end takes them in creation order
    numbers = itertools.count(1)
    second = int(time.time())  # action_ts = "{second}.{n:06d}": distinct for every click of the run

    finished_at: list[float] = []
    latencies: list[float] = []
    statuses: list[str] = []
    samples: list[str] = []
    sent = 0
    acked = 0
    exhausted_at: float | None = None
    exhausted = asyncio.Event()

    loop_start = time.perf_counter()
    window_start = loop_start + args.warmup
    window_end = window_start + args.duration

    def next_click() -> tuple[str, str, str] | None:
        nonlocal exhausted_at
        if mode != "approve":
            return ("bench-not-a-request-id" if mode == "noop" else "req_" + "0" * 24, "C0HIRING", "1.000100")
        if not cards:
            if exhausted_at is None:
                exhausted_at = time.perf_counter()
                exhausted.set()
            return None
        request_id, channel, ts = cards.pop()
        return request_id, channel, ts

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent, acked
        while time.perf_counter() < window_end:
            click = next_click()
            if click is None:
                return
            value, channel, message_ts = click
            n = next(numbers)
            payload = block_actions(
                value,
                UNKNOWN if mode == "unknown" else APPROVE,
                user=users[n % len(users)],
                channel=channel,
                message_ts=message_ts,
                action_ts=f"{second}.{n:06d}",
            )
            body = urlencode({"payload": json.dumps(payload)})
            headers = signed(body, secret)
            detail = ""
            started = time.perf_counter()
            try:
                async with session.post(args.url, data=body, headers=headers) as response:
                    text = await response.text()
                    status = str(response.status)
                    if response.status != expected:
                        detail = f"{response.status}: {text[:300]}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = "error"
                detail = f"{type(exc).__name__}: {exc}"
            finished = time.perf_counter()
            sent += 1
            if status == str(expected):
                acked += 1
            finished_at.append(finished)
            latencies.append(finished - started)
            statuses.append(status)
            if detail and len(samples) < MAX_SAMPLES:
                samples.append(detail)

    counts: dict[str, tuple[float, int]] = {}
    sessions: list[tuple[int, ...]] = []

    async def count_decisions() -> None:
        """Approved requests at the window's start and at its end (or when the ids ran out), and the
        service's PostgreSQL sessions in between, every SAMPLE_EVERY seconds."""
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        async with await psycopg.AsyncConnection.connect(args.database_url, autocommit=True) as conn:
            counts["before"] = (time.perf_counter(), await scalar(conn, APPROVED))
            while not exhausted.is_set() and time.perf_counter() < window_end:
                row = await (await conn.execute(SESSIONS)).fetchone()
                if row is not None:
                    sessions.append(tuple(int(v) for v in row))
                wait = min(SAMPLE_EVERY, max(0.0, window_end - time.perf_counter()))
                try:
                    await asyncio.wait_for(exhausted.wait(), timeout=wait)
                except TimeoutError:
                    pass
            counts["after"] = (time.perf_counter(), await scalar(conn, APPROVED))
            counts["undecided"] = (time.perf_counter(), await scalar(conn, UNDECIDED))

    cpu_marks: dict[str, float] = {}

    async def mark_cpu() -> None:
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        cpu_marks["start"] = time.process_time()

    connector = aiohttp.TCPConnector(limit=args.clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        side = [asyncio.create_task(mark_cpu())]
        if mode == "approve":
            side.append(asyncio.create_task(count_decisions()))
        await asyncio.gather(*(worker(session) for _ in range(args.clients)))
        await asyncio.gather(*side)
    end = min(window_end, exhausted_at) if exhausted_at is not None else window_end
    window = max(end - window_start, 1e-9)
    cpu_used = time.process_time() - cpu_marks["start"] if "start" in cpu_marks else None

    in_window = [i for i, t in enumerate(finished_at) if window_start <= t < end]
    window_statuses = Counter(statuses[i] for i in in_window)
    # Every answer counts in the percentiles, unexpected ones too: a click Bolt answered 404 after its
    # 3 s ack timeout is a click whose ack took that long (and failed), not one to leave out.
    ms = sorted(latencies[i] * 1000 for i in in_window)
    count = window_statuses[str(expected)]
    result: dict[str, Any] = {
        "mode": mode,
        "clients": args.clients,
        "window": window,
        "count": count,
        "rps": count / window,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1] if ms else None,
        "expected": expected,
        "statuses": dict(window_statuses),
        "statuses_all": dict(Counter(statuses)),
        "sent": sent,
        "acked_total": acked,
        "samples": samples,
        "client_cpu": None if cpu_used is None else cpu_used / window,
        "exhausted": exhausted_at is not None and exhausted_at < window_end,
        "left": len(cards),
    }
    if "before" in counts and "after" in counts:
        (t0, before), (t1, after) = counts["before"], counts["after"]
        result |= {
            "approved_before": before,
            "approved_after": after,
            "decisions_per_s": (after - before) / max(t1 - t0, 1e-9),
            "undecided_at_end": counts["undecided"][1],
            "pg_sessions_max": max((s[0] for s in sessions), default=None),
            "pg_active_max": max((s[1] for s in sessions), default=None),
            "pg_active_mean": sum(s[1] for s in sessions) / len(sessions) if sessions else None,
            "pg_idle_in_tx_mean": sum(s[2] for s in sessions) / len(sessions) if sessions else None,
            "pg_lock_waits_max": max((s[3] for s in sessions), default=None),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--mode", choices=sorted(EXPECTED), default="approve")
    parser.add_argument("--ids-file", help="JSON list of [request_id, channel, message_ts] (approve)")
    parser.add_argument("--database-url", help="psycopg URL of the service's database (approve)")
    parser.add_argument("--users", required=True, help="comma-separated clicker user ids")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    if args.mode == "approve" and not (args.ids_file and args.database_url):
        parser.error("--mode approve needs --ids-file and --database-url")
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
