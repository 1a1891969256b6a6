"""The aiohttp application: routes, middlewares and the background scheduler's lifetime."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from app.config import MAX_BODY_BYTES
from app.container import Container
from app.http import agent_api, audit_api, ops
from app.http.context import CONTAINER
from app.http.errors import Handler, json_errors
from app.oidc import routes as oidc_routes
from app.scheduler import build_scheduler
from app.slack import http as slack_http

log = structlog.get_logger("approvals.http")


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One access-log line and metrics per request; never headers or bodies (they carry secrets)."""
    started = time.perf_counter()
    response = await handler(request)
    elapsed = time.perf_counter() - started
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    metrics = request.app[CONTAINER].metrics
    metrics.http_requests.labels(request.method, route, str(response.status)).inc()
    metrics.http_latency.labels(route).observe(elapsed)
    if route not in ("/healthz", "/metrics"):
        # The sandbox's page and stand-ins make many small requests nobody typed: logged at debug.
        emit = log.debug if route.startswith("/sandbox") else log.info
        emit(
            "http_request",
            method=request.method,
            route=route,
            status=response.status,
            duration_ms=round(elapsed * 1000, 1),
        )
    return response


def build_app(container: Container, *, run_scheduler: bool = True) -> web.Application:
    """The whole HTTP surface for one container; the scheduler runs inside the app's event loop."""
    app = web.Application(middlewares=[observe, json_errors], client_max_size=MAX_BODY_BYTES)
    app[CONTAINER] = container
    agent_api.register(app)
    audit_api.register(app)
    ops.register(app)
    slack_http.register(app)
    if container.oidc is not None:
        oidc_routes.register(app)
    if run_scheduler:
        app.cleanup_ctx.append(_scheduler_lifetime)
    return app


async def _scheduler_lifetime(app: web.Application) -> AsyncIterator[None]:
    scheduler = build_scheduler(app[CONTAINER])
    scheduler.start()
    yield
    scheduler.shutdown(wait=False)
    await app[CONTAINER].dispatcher.close()
