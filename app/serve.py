"""`approvals serve`: start the HTTP service and its scheduler, stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from app.bootstrap import build_container
from app.config import Settings
from app.web import build_app

log = structlog.get_logger("approvals")


async def serve(settings: Settings) -> None:
    """Run until a stop signal; startup errors propagate before the port is opened."""
    container = await build_container(settings)
    if not settings.slack_enabled:
        log.info("slack_disabled", reason="no SLACK_BOT_TOKEN set; cards are not posted")
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
        log.info(
            "listening",
            url=f"http://{settings.host}:{settings.port}",
            database=container.engine.url.render_as_string(hide_password=True),
            policies=str(settings.policies),
            policy_version=container.policies.version,
        )
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
        await container.engine.dispose()
