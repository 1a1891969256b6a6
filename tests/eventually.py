"""The one way a test waits for something that happens in the background: poll it until it holds.

Work the service does after it has answered (a click decided after Slack's ack, a card posted by the
dispatcher, a callback delivered, a replica becoming ready) is waited for with `eventually`, or
`eventually_sync` in a test that is not async. Never with a bare sleep: a sleep long enough for a loaded
2-core host is pure waste on a quiet one, and one short enough for a quiet host fails on a loaded one.
Sleeping to synchronise is not allowed in these tests; poll the condition instead.

The budget is a deadline, not a number of tries: a count of tries times a pause is a deadline only when
each try is instant, and on a busy host a try (a query, an HTTP request) can take longer than the pause.
The default deadline is generous (30 s) because it costs nothing when all is well: the poll returns as soon
as the condition holds, so only a test that is failing anyway waits it out. A test that checks that
something does NOT happen for a while is a different thing and does not use these helpers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

TIMEOUT = 30.0
INTERVAL = 0.05


def _failure(what: str, timeout: float, last: Any, tries: int) -> AssertionError:
    seen = f"last value seen {last!r}" if tries else "no check finished"
    return AssertionError(f"waited {timeout:g} s for {what}; {seen} ({tries} checks)")


async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    what: str,
) -> T:
    """Await `check()` every `interval` seconds until it returns something truthy, and return that.

    `what` names what is awaited ("the card to be posted"); after `timeout` seconds the poll fails with an
    AssertionError naming it and the last value `check` returned. A check still running at the deadline
    is cancelled. An exception from `check` is not retried: it ends the poll (raise one to fail at once,
    e.g. when the process being waited for has exited).
    """
    last: Any = None
    tries = 0
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            while True:
                last = await check()
                tries += 1
                if last:
                    return last
                await asyncio.sleep(interval)
    except TimeoutError:
        if not deadline.expired():
            raise  # the check's own time-out (a client's, say): not this deadline
        raise _failure(what, timeout, last, tries) from None


def eventually_sync(
    check: Callable[[], T],
    *,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    what: str,
) -> T:
    """`eventually` for a test that is not async: call `check()` until it returns something truthy.

    The deadline is checked between calls (a sync check cannot be interrupted): give a check that can
    block a time-out of its own.
    """
    deadline = time.monotonic() + timeout
    tries = 0
    while True:
        last = check()
        tries += 1
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _failure(what, timeout, last, tries)
        time.sleep(interval)
