"""Socket Mode: Slack delivers over a websocket we open; a watchdog reopens one that went silent.

Socket Mode connections are known to stall after reconnects (python-slack-sdk #1701), so the
watchdog checks the connection regularly and reconnects instead of trusting it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp

log = structlog.get_logger("approvals.slack")
WATCHDOG_SECONDS = 30.0
PING_SECONDS = 10.0


@contextlib.asynccontextmanager
async def socket_mode(
    bolt: AsyncApp,
    app_token: str,
    *,
    check_every: float = WATCHDOG_SECONDS,
    ping_interval: float = PING_SECONDS,
) -> AsyncIterator[None]:
    """Connect for the lifetime of the block, reconnecting whenever the socket is found dead.

    A socket that stays open but goes silent (no pong for a few `ping_interval`s) counts as dead.
    """
    handler = AsyncSocketModeHandler(bolt, app_token, ping_interval=ping_interval)
    await handler.connect_async()  # type: ignore[no-untyped-call]
    log.info("slack_socket_mode_connected")

    async def watchdog() -> None:
        while True:
            await asyncio.sleep(check_every)
            try:
                alive = await handler.client.is_connected()
            except Exception:
                alive = False
            if not alive:
                log.warning("slack_socket_mode_reconnecting")
                try:
                    await handler.client.connect_to_new_endpoint(force=True)
                except Exception:
                    log.exception("slack_socket_mode_reconnect_failed")

    task = asyncio.get_running_loop().create_task(watchdog())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await handler.close_async()  # type: ignore[no-untyped-call]
