"""Operations endpoints: the index page, liveness, readiness (database reachable and migrated), metrics,
OpenAPI."""

from __future__ import annotations

import asyncio
import html
from dataclasses import dataclass
from typing import Any

import psycopg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from app.http.context import container_of
from app.http.openapi import openapi_spec
from app.migrate import schema_state


async def healthz(request: web.Request) -> web.Response:
    """The process is up and serving HTTP."""
    return web.json_response({"status": "ok"})


# A database that hangs (frozen server, network partition) rather than refusing must still turn
# /readyz to 503, and quickly: a load balancer's probe gives up after a few seconds.
READY_TIMEOUT_SECONDS = 5.0


@dataclass
class _ProbeSlot:
    """The readiness check in flight, if any: one per application, made when the routes are added."""

    task: asyncio.Task[Any] | None = None


_PROBE: web.AppKey[_ProbeSlot] = web.AppKey("readiness_probe", _ProbeSlot)


def _timed_out(exc: BaseException) -> bool:
    """A connect or pool-checkout timeout: the server is there but does not answer (not refusing)."""
    if isinstance(exc, sa_exc.TimeoutError | TimeoutError):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and isinstance(exc.orig, psycopg.errors.ConnectionTimeout)


async def _probe_database(container: Any) -> Any:
    async with container.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return await schema_state(container.engine)


async def readyz(request: web.Request) -> web.Response:
    """Ready only when the database answers (within READY_TIMEOUT_SECONDS) and is at our schema.

    The check runs as a task of its own that a timeout leaves running rather than cancels (cancelling
    a query on a server that does not answer can itself hang); while it runs, later probes wait on it
    instead of starting another, so a frozen database costs one connection, not one per probe.
    """
    container = container_of(request)
    slot = request.app[_PROBE]
    if slot.task is None or slot.task.done():
        slot.task = asyncio.get_running_loop().create_task(_probe_database(container))
    probe = slot.task
    done, _ = await asyncio.wait({probe}, timeout=READY_TIMEOUT_SECONDS)
    # A probe that gave up on its own connect timeout (racing ours) means the same as ours running out.
    if not done or _timed_out(probe.exception() or Exception()):
        return web.json_response(
            {
                "status": "unavailable",
                "database": "not answering",
                "error": f"no answer within {READY_TIMEOUT_SECONDS:g} s",
            },
            status=503,
        )
    exc = probe.exception()
    if exc is not None:
        return web.json_response(
            {"status": "unavailable", "database": "unreachable", "error": type(exc).__name__}, status=503
        )
    state = probe.result()
    if not state.up_to_date:
        return web.json_response(
            {
                "status": "unavailable",
                "database": "not migrated",
                "current": state.current,
                "head": state.head,
            },
            status=503,
        )
    return web.json_response({"status": "ready", "database": "ok", "revision": state.current})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(container_of(request).metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_spec(container_of(request).settings.public_url))


# The route name app/sandbox/routes.py gives the sandbox page, when sandbox mode serves one.
SANDBOX_ROUTE = "sandbox"


async def index(request: web.Request) -> web.Response:
    """What is here: links to the sandbox (in sandbox mode), the API description and the health checks;
    JSON when asked for it, a small page otherwise."""
    base = container_of(request).settings.public_url.rstrip("/")
    links = {
        "openapi": f"{base}/openapi.json",
        "requests": f"{base}/v1/requests",
        "healthz": f"{base}/healthz",
        "readyz": f"{base}/readyz",
        "metrics": f"{base}/metrics",
    }
    if SANDBOX_ROUTE in request.app.router.named_resources():
        links = {"sandbox": f"{base}/sandbox"} | links
    body = {
        "service": "approvals",
        "description": "Human approval for AI agents, decided in Slack.",
        "links": links,
    }
    accept = request.headers.get("Accept", "")
    if "application/json" in accept and "text/html" not in accept:
        return web.json_response(body)
    labels = {
        "sandbox": "Sandbox: try an approval with a local Slack and a dev sign-in",
        "openapi": "OpenAPI description of the agent and audit API",
        "requests": "Agent API (POST an approval request with an agent key)",
        "healthz": "Liveness check",
        "readyz": "Readiness check (database reachable and migrated)",
        "metrics": "Prometheus metrics",
    }
    items = "\n".join(
        f'<li><a href="{html.escape(url)}">{html.escape(labels[name])}</a></li>'
        for name, url in links.items()
    )
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>approvals</title></head><body>\n'
        "<h1>approvals</h1>\n<p>Human approval for AI agents, decided in Slack.</p>\n"
        f"<ul>\n{items}\n</ul>\n</body></html>\n"
    )
    headers = {
        "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
        "Cache-Control": "no-store",
    }
    return web.Response(text=page, content_type="text/html", headers=headers)


async def favicon(request: web.Request) -> web.Response:
    """Browsers ask for one on every page (the sandbox, the step-up pages): nothing, rather than a 404."""
    return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})


def register(app: web.Application) -> None:
    app[_PROBE] = _ProbeSlot()
    app.router.add_get("/", index)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
