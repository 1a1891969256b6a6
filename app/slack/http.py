"""Bolt mounted at /slack/events in our own aiohttp application (Slack signs; Bolt verifies)."""

from __future__ import annotations

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request

from app.http.context import container_of


async def slack_events(request: web.Request) -> web.StreamResponse:
    slack = container_of(request).slack
    if slack is None:
        raise web.HTTPNotFound()
    bolt_response = await slack.bolt.async_dispatch(await to_bolt_request(request))
    return await to_aiohttp_response(bolt_response)


def register(app: web.Application) -> None:
    app.router.add_post("/slack/events", slack_events)
