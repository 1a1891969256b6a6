"""`approvals serve`: start the HTTP service and its scheduler, stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog
from aiohttp import web

from app.bootstrap import build_container
from app.config import Settings
from app.slack.socket_mode import socket_mode
from app.tasks import drain_background_tasks
from app.web import build_app

log = structlog.get_logger("approvals")


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
        # Clicks acknowledged to Slack are being decided in listener tasks: let them commit.
        await drain_background_tasks()
        await container.engine.dispose()
