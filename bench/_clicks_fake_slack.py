"""Fake Slack Web API for bench/clicks.py: app.sandbox.slack_api.SandboxSlack in its own process.

Usage (normally started by bench/clicks.py):

    .venv/bin/python bench/_clicks_fake_slack.py --url-file PATH [--users 64]

Knows users U0000001 .. U00000NN (users.info answers with name and email uNN@example.com), writes
its API base URL (`http://127.0.0.1:PORT/api/`) to --url-file once it listens, and serves until
SIGTERM or SIGINT. It does not keep every call as the tests' fake does: once a second the calls are
tallied per method and dropped, so memory stays flat over thousands of cards. On exit it prints
one JSON line on stdout, the calls per Web API method (`failed` counts queued faults: none here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.sandbox.slack_api import SandboxSlack  # noqa: E402  (needs the repository root on sys.path)


def user_ids(count: int) -> list[str]:
    """Approver ids as Slack spells them and as the policy validator accepts them (^[UW][A-Z0-9]{2,}$)."""
    return [f"U{n:07d}" for n in range(1, count + 1)]


def tally(fake: SandboxSlack, counts: Counter[str]) -> None:
    counts.update(call.method for call in fake.calls)
    counts.update("failed" for call in fake.calls if call.failed)
    fake.calls.clear()
    fake.responses.clear()
    fake._response_ids.clear()  # kept beside `responses`, cleared with it


async def serve(url_file: Path, users: int) -> None:
    fake = SandboxSlack()
    for n, user_id in enumerate(user_ids(users), start=1):
        fake.users[user_id] = {
            "name": f"approver{n}",
            "real_name": f"Approver {n}",
            "email": f"{user_id.lower()}@example.com",
        }
    await fake.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    partial = url_file.with_suffix(".tmp")
    partial.write_text(fake.api_url)
    partial.replace(url_file)  # appears whole or not at all
    counts: Counter[str] = Counter()
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
            tally(fake, counts)
    finally:
        await fake.stop()
        tally(fake, counts)
        print(json.dumps(dict(sorted(counts.items()))), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url-file", type=Path, required=True)
    parser.add_argument("--users", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(serve(args.url_file, args.users))


if __name__ == "__main__":
    main()
