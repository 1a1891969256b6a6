"""`approvals serve`: start the HTTP service and its scheduler, stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys

import structlog
from aiohttp import web

from app.bootstrap import StartupError, build_container
from app.config import Settings
from app.container import Container
from app.sandbox import mode as sandbox_mode
from app.sandbox import routes as sandbox_routes
from app.sandbox.mode import Sandbox, SandboxChoice
from app.slack.socket_mode import socket_mode
from app.tasks import drain_background_tasks
from app.web import build_app
from approvals.errors import DomainError

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


async def serve(settings: Settings, *, sandbox: SandboxChoice = "off", sandbox_remote: bool = False) -> None:
    """Run until a stop signal; startup errors propagate before the port is opened.

    `sandbox` (`on`, or `auto`: when neither Slack nor an IdP is configured) also serves the local Slack
    sandbox and dev IdP, and points the service at them (app/sandbox/mode.py).
    """
    local: Sandbox | None = None
    if sandbox_mode.wanted(sandbox, settings):
        try:
            settings, local = sandbox_mode.prepare(settings, allow_remote=sandbox_remote)
        except sandbox_mode.SandboxRefused as exc:
            raise StartupError(str(exc)) from None
    container = await build_container(settings)
    if local is not None:
        log.warning("sandbox_mode", url=local.url, note=sandbox_mode.NOT_SLACK)
    elif container.slack is None:
        log.info("slack_disabled", reason="no SLACK_BOT_TOKEN set; cards are not posted")
    else:
        log.info("slack_enabled", mode=_slack_mode(settings), api_url=settings.slack_api_url)
    app = build_app(container)
    if local is not None:
        sandbox_routes.register(app, local)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror} (APPROVALS_HOST, APPROVALS_PORT)"
            ) from None
        if local is not None:
            # Only once this process holds the port: a second `make run` that cannot listen must not
            # rotate away the key of the demo agent the first one is using.
            try:
                await local.demo.register(container.engine)
            except DomainError as exc:
                raise StartupError(f"the sandbox's demo agent cannot be used: {exc.message}") from None
        tune_garbage_collection()
        log.info(
            "listening",
            url=f"http://{settings.host}:{settings.port}",
            database=container.engine.url.render_as_string(hide_password=True),
            policies=str(settings.policies),
            policy_version=container.policies.version,
            # What this replica is wired to, in one line an operator can compare across replicas.
            slack="sandbox" if local is not None else _slack_mode(settings),
            mfa_issuer=settings.oidc_issuer if container.oidc is not None else None,
            embedded_database=settings.database_url is None,
        )
        print_banner(settings, container, local)
        async with contextlib.AsyncExitStack() as stack:
            if container.slack is not None and settings.slack_app_token is not None:
                await stack.enter_async_context(
                    socket_mode(container.slack.bolt, settings.slack_app_token.get_secret_value())
                )
            await stop.wait()
            log.info("stopping")
    finally:
        await runner.cleanup()
        if local is not None:
            await local.close()
        await container.dispatcher.close()
        if container.slack is not None:
            container.slack.clicks.close()  # queued clicks stay in the inbox for the next start
        # Clicks being decided by the workers (and other work after a response): let them commit.
        await drain_background_tasks()
        await container.dispose()


def _slack_mode(settings: Settings) -> str:
    if not settings.slack_enabled:
        return "off"
    return "socket" if settings.slack_app_token else "http"


def print_banner(settings: Settings, container: Container, sandbox: Sandbox | None) -> None:
    """The first screen: where to go, where the data is, what to try next (once, for a person)."""
    base = settings.public_url.rstrip("/")
    database = (
        f"embedded PostgreSQL server, its data in {settings.embedded_database_dir}/"
        if settings.database_url is None
        else container.engine.url.render_as_string(hide_password=True)
    )
    lines = ["", "  Approvals is running."]
    if sandbox is not None:
        lines += [
            "  Sandbox mode: Slack and the sign-in are local stand-ins, not the real ones.",
            "",
            f"  Sandbox (open in a browser):  {sandbox.url}",
        ]
    lines += [
        f"  API:                          {base}/v1/requests  (OpenAPI: {base}/openapi.json)",
        f"  Health:                       {base}/healthz, {base}/readyz",
        f"  Data:                         {database}",
        f"  Keys:                         {settings.checkpoint_key_file}",
    ]
    if sandbox is not None:
        lines += ["", "  Next: open the sandbox and click 'Post a sample offer-letter request',"]
        lines += ["        or run `.venv/bin/approvals demo request` in another terminal."]
    elif container.slack is None:
        lines += ["", "  Slack is not configured: run `make run` with no Slack tokens to try the sandbox,"]
        lines += ["  or see docs/slack-setup.md to connect a workspace."]
    # On stderr: stdout is the log stream, every line of it JSON for the log shipper.
    print("\n".join([*lines, ""]), file=sys.stderr, flush=True)
