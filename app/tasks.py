"""Shutdown help: let work that outlives its HTTP response (Bolt listeners after ack) finish first."""

from __future__ import annotations

import asyncio


async def drain_background_tasks(seconds: float = 10.0) -> int:
    """Wait for every other task to finish (at most `seconds`), then cancel stragglers; returns how many ran on."""
    current = asyncio.current_task()
    pending = {task for task in asyncio.all_tasks() if task is not current and not task.done()}
    if not pending:
        return 0
    _done, still_running = await asyncio.wait(pending, timeout=seconds)
    for task in still_running:
        task.cancel()
    if still_running:
        await asyncio.wait(still_running, timeout=1.0)
    return len(pending)
