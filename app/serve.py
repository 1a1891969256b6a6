"""`approvals serve`: start the HTTP service and its scheduler, stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal

import structlog
from aiohttp import web

from app.bootstrap import build_container
from app.config import Settings
from app.slack.socket_mode import socket_mode
from app.tasks import drain_background_tasks
from app.web import build_app

log = structlog.get_logger("approvals")

# Young collections this many allocations apart (CPython's default is 700). Under load most objects
# (a request's, a click's) die within milliseconds; collected that often, many still lived and
# were promoted, which set off a full collection about every second: a pause of ~100 ms on this
# process's heap that every ack and response in flight waited out.
YOUNG_GC_THRESHOLD = 50_000


def tune_garbage_collection() -> None:
    """Once started: what exists now (modules, engines, the app) lives as long as the process, so
    full collections stop scanning it (gc.freeze), and young collections run less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)


async def serve(settings: Settings) -> None:
    """Run until a stop signal; startup errors propagate before the port is opened."""
    container = await build_container(settings)
    if container.slack is None:
        log.info("slack_disabled", reason="no SLACK_BOT_TOKEN set; cards are not posted")
    else:
        log.info(
            "slack_enabled",
            mode="socket" if settings.slack_app_token else "http",
            api_url=settings.slack_api_url,
        )
    app = build_app(container)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        tune_garbage_collection()
        log.info(
            "listening",
            url=f"http://{settings.host}:{settings.port}",
            database=container.engine.url.render_as_string(hide_password=True),
            policies=str(settings.policies),
            policy_version=container.policies.version,
        )
        async with contextlib.AsyncExitStack() as stack:
            if container.slack is not None and settings.slack_app_token is not None:
                await stack.enter_async_context(
                    socket_mode(container.slack.bolt, settings.slack_app_token.get_secret_value())
                )
            await stop.wait()
            log.info("stopping")
    finally:
        await runner.cleanup()
        await container.dispatcher.close()
        if container.slack is not None:
            container.slack.clicks.close()  # queued clicks stay in the inbox for the next start
        # Clicks being decided by the workers (and other work after a response): let them commit.
        await drain_background_tasks()
        await container.dispose()
