"""Operations endpoints: health, readiness, metrics, and an OpenAPI document in step with the routes."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.web import build_app
from tests.conftest import Api, head_revision, offer, start_service, stop_service

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    finally:
        sink.close()


@dataclass
class Relay:
    """A TCP relay in front of the database server. Once closed nothing listens on its port and the
    connections it carried are reset: to a service that connects through it, the database went away."""

    connect: Callable[[], Awaitable[Streams]]
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.carry, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await self.connect()
        self.writers += [writer, upstream_writer]
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )

    async def close(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await self.server.wait_closed()
        self.server = None


def relay_to(database_url: str) -> Relay:
    """A relay to the server of `database_url` (over TCP, or the embedded server's Unix socket)."""
    url = make_url(database_url)
    if url.host:
        host, port = url.host, url.port or 5432
        return Relay(lambda: asyncio.open_connection(host, port))
    socket_dir = Path(str(url.query["host"]))
    [socket_path] = socket_dir.glob(".s.PGSQL.*[0-9]")
    return Relay(lambda: asyncio.open_unix_connection(str(socket_path)))


def through(database_url: str, port: int) -> str:
    """`database_url` with its server at 127.0.0.1:`port` instead."""
    url = make_url(database_url)
    query: dict[str, Any] = {k: v for k, v in url.query.items() if k != "host"}
    return url.set(host="127.0.0.1", port=port, query=query).render_as_string(hide_password=False)


def _resolves(document: Any, ref: str) -> bool:
    """Whether a local JSON pointer (`#/a/b`) names a value in `document`."""
    if not ref.startswith("#/"):
        return False
    node = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


async def test_healthz_and_readyz_report_a_migrated_database(api: Api) -> None:
    assert (await (await api.session.get(api.url("/healthz"))).json()) == {"status": "ok"}
    ready = await api.session.get(api.url("/readyz"))
    assert ready.status == 200
    assert (await ready.json())["revision"] == head_revision()


async def test_readyz_reports_an_outdated_schema(api: Api) -> None:
    async with api.container.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'old'"))
    try:
        ready = await api.session.get(api.url("/readyz"))
        assert ready.status == 503
        assert (await ready.json())["database"] == "not migrated"
    finally:
        async with api.container.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head_revision()})


async def test_readyz_reports_an_unreachable_database(database_url: str) -> None:
    relay = relay_to(database_url)
    port = await relay.start()
    try:
        container, server = await start_service(through(database_url, port))
        try:
            async with ClientSession() as session:
                readyz = str(server.make_url("/readyz"))
                async with session.get(readyz) as ready:
                    assert ready.status == 200
                await relay.close()  # the database's address now refuses connections
                async with session.get(readyz) as ready:
                    assert ready.status == 503
                    assert (await ready.json())["database"] == "unreachable"
        finally:
            await stop_service(container, server)
    finally:
        await relay.close()


async def test_metrics_count_created_requests(api: Api) -> None:
    await api.post("/v1/requests", offer())
    body = await (await api.session.get(api.url("/metrics"))).text()
    assert 'approvals_requests_created_total{status="pending"} 1.0' in body


async def test_openapi_describes_every_route_and_nothing_else(api: Api) -> None:
    spec = await (await api.session.get(api.url("/openapi.json"))).json()
    app = build_app(api.container, run_scheduler=False)
    routes = {
        (resource.canonical, route.method.lower())
        for resource in app.router.resources()
        for route in resource
        if route.method != "HEAD"
    }
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert documented == routes
    assert spec["servers"] == [{"url": api.container.settings.public_url}]
    # Every reference in the document (a model's nested definitions too) points at something in it.
    refs = set(re.findall(r'"\$ref": "([^"]+)"', json.dumps(spec)))
    assert "#/components/schemas/CreateRequest" in refs
    assert [ref for ref in refs if not _resolves(spec, ref)] == []


async def test_openapi_request_schema_forbids_unknown_fields(api: Api) -> None:
    spec = await (await api.session.get(api.url("/openapi.json"))).json()
    schema = spec["components"]["schemas"]["CreateRequest"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"action", "title", "on_behalf_of"}
