"""Load generator for bench/intake.py: N concurrent clients POST one JSON body for D seconds.

Runs in its own process so that neither server shares an event loop (or a CPU budget inside one
process) with the client. After a warm-up, only requests that *complete* inside the measurement
window are counted; requests still in flight when it closes are finished but not counted.

Usage (normally started by bench/intake.py):

    .venv/bin/python bench/_load.py --url http://127.0.0.1:PORT/v1/requests \
        [--token KEY] [--clients 32] [--duration 10] [--warmup 2]

Prints one JSON object on stdout: count (201s in the window), rps, p50_ms, p99_ms, max_ms,
statuses (every status seen in the window, and "error" for transport errors), samples (the first
few non-201 bodies or exceptions) and client_cpu (this process's CPU seconds / window seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections import Counter

import aiohttp

BODY = {
    "action": "send_offer_letter",
    "title": "Offer for J. Doe",
    "summary": "Senior engineer offer, approved by the hiring committee on Monday.",
    "params": {"candidate": "J. Doe", "salary": 185000},
    "on_behalf_of": "recruiter@example.com",
    "links": ["https://ats.example.com/c/42"],
}
MAX_SAMPLES = 5


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


async def run(url: str, token: str | None, clients: int, duration: float, warmup: float) -> dict[str, object]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    payload = json.dumps(BODY).encode()
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    samples: list[str] = []

    loop_start = time.perf_counter()
    window_start = loop_start + warmup
    window_end = window_start + duration

    async def worker(session: aiohttp.ClientSession) -> None:
        while (started := time.perf_counter()) < window_end:
            status: str
            detail = ""
            try:
                async with session.post(url, data=payload, headers=headers) as response:
                    text = await response.text()
                    status = str(response.status)
                    if response.status != 201:
                        detail = f"{response.status}: {text[:300]}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = "error"
                detail = f"{type(exc).__name__}: {exc}"
            finished = time.perf_counter()
            if not window_start <= finished < window_end:
                continue
            statuses[status] += 1
            if status == "201":
                latencies.append(finished - started)
            elif len(samples) < MAX_SAMPLES:
                samples.append(detail)

    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu_marks: list[float] = []

        async def mark_window() -> None:
            for moment in (window_start, window_end):
                await asyncio.sleep(max(0.0, moment - time.perf_counter()))
                cpu_marks.append(time.process_time())

        marker = asyncio.create_task(mark_window())
        await asyncio.gather(*(worker(session) for _ in range(clients)))
        await marker
        cpu_used = cpu_marks[1] - cpu_marks[0]

    latencies.sort()
    ms = [v * 1000 for v in latencies]
    return {
        "clients": clients,
        "duration": duration,
        "count": len(latencies),
        "rps": len(latencies) / duration,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1] if ms else None,
        "statuses": dict(statuses),
        "samples": samples,
        "client_cpu": cpu_used / duration,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.token, args.clients, args.duration, args.warmup))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
