"""Operations endpoints: liveness, readiness (database reachable and migrated), metrics, OpenAPI."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.http.context import container_of
from app.http.openapi import openapi_spec
from app.migrate import schema_state


async def healthz(request: web.Request) -> web.Response:
    """The process is up and serving HTTP."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready only when the database answers and is at the schema this code needs."""
    container = container_of(request)
    try:
        async with container.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        state = await schema_state(container.engine)
    except Exception as exc:
        return web.json_response(
            {"status": "unavailable", "database": "unreachable", "error": type(exc).__name__}, status=503
        )
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


def register(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
