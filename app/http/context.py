"""How handlers reach what the service holds: the container stored under a typed aiohttp AppKey."""

from __future__ import annotations

from aiohttp import web

from app.container import Container

CONTAINER = web.AppKey("container", Container)


def container_of(request: web.Request) -> Container:
    return request.app[CONTAINER]
