"""Slack's Socket Mode side for tests: apps.connections.open hands out a websocket we serve ourselves."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from aiohttp import WSMsgType, web

from app.sandbox.slack_api import Handler, SandboxSlack


class FakeSlackWithSocket(SandboxSlack):
    """The fake Web API plus a Socket Mode endpoint; `send` pushes an envelope, acks are recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.sockets: list[web.WebSocketResponse] = []
        self.silenced: set[web.WebSocketResponse] = set()
        self.acks: dict[str, dict[str, Any]] = {}
        self.connections = 0
        self._ids = itertools.count(1)
        self._connected = asyncio.Condition()
        self._acked = asyncio.Condition()
        self._ws_runner: web.AppRunner | None = None
        self._ws_url = ""

    async def start(self) -> FakeSlackWithSocket:
        await super().start()
        app = web.Application()
        app.router.add_get("/link", self._socket)
        self._ws_runner = web.AppRunner(app, access_log=None)
        await self._ws_runner.setup()
        site = web.TCPSite(self._ws_runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._ws_runner.addresses[0][:2]
        self._ws_url = f"ws://{host}:{port}/link"
        return self

    async def stop(self) -> None:
        for ws in self.sockets:
            await ws.close()
        if self._ws_runner is not None:
            await self._ws_runner.cleanup()
        await super().stop()

    def handlers(self) -> dict[str, Handler]:
        return {**super().handlers(), "apps.connections.open": lambda _: {"ok": True, "url": self._ws_url}}

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        # Pings are answered by hand, so that a socket can be made to go silent without closing.
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": 1,
                "connection_info": {"app_id": "A0APP"},
                "debug_info": {"host": "fake", "approximate_connection_time": 3600},
            }
        )
        async with self._connected:
            self.sockets.append(ws)
            self.connections += 1
            self._connected.notify_all()
        async for message in ws:
            if message.type == WSMsgType.PING:
                if ws not in self.silenced:
                    await ws.pong(message.data)
                continue
            if ws in self.silenced:
                continue
            if message.type == WSMsgType.TEXT:
                body = json.loads(message.data)
                async with self._acked:
                    self.acks[body.get("envelope_id", "")] = body
                    self._acked.notify_all()
        return ws

    async def wait_connections(self, count: int, timeout: float = 30) -> None:
        async def enough() -> None:
            async with self._connected:
                await self._connected.wait_for(
                    lambda: self.connections >= count and not self.sockets[-1].closed
                )

        await asyncio.wait_for(enough(), timeout)

    async def send(self, kind: str, payload: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        """Push one envelope on the newest socket and wait for the app's ack."""
        envelope_id = f"env-{next(self._ids)}"
        await self.sockets[-1].send_json(
            {"envelope_id": envelope_id, "type": kind, "payload": payload, "accepts_response_payload": True}
        )

        async def acked() -> None:
            async with self._acked:
                await self._acked.wait_for(lambda: envelope_id in self.acks)

        await asyncio.wait_for(acked(), timeout)
        return self.acks[envelope_id]

    def silence_newest(self) -> web.WebSocketResponse:
        """The connection stays open but nothing answers on it any more (no pongs, no acks)."""
        ws = self.sockets[-1]
        self.silenced.add(ws)
        return ws

    async def drop_newest(self) -> None:
        """The connection goes away under the app, as Slack's sometimes do."""
        await self.sockets[-1].close()
