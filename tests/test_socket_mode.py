"""Socket Mode: the same listeners over a websocket the app opens, and a reconnect when it goes away."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession

from app.slack.socket_mode import socket_mode
from tests.conftest import Api, offer, start_service, stop_service
from tests.fake_socket_mode import FakeSlackWithSocket
from tests.slack_helpers import USERS, block_actions


@pytest.fixture
async def socket_api(database_url: str) -> AsyncIterator[tuple[Api, FakeSlackWithSocket]]:
    async with FakeSlackWithSocket() as fake:
        fake.users.update(USERS)
        container, server = await start_service(
            database_url, slack_bot_token="xoxb-test", slack_app_token="xapp-test", slack_api_url=fake.api_url
        )
        try:
            async with ClientSession() as session:
                api = Api(session=session, base=str(server.make_url("")), key="", container=container)
                api.key = await api.add_agent("hiring-bot", ["send_offer_letter"])
                yield api, fake
        finally:
            await stop_service(container, server)


async def _approve_over_socket(api: Api, fake: FakeSlackWithSocket, user: str = "U01COO") -> dict[str, Any]:
    created = await (await api.post("/v1/requests", offer())).json()
    await fake.send("interactive", block_actions(created["id"], "approve_request", user=user))
    return dict(await (await api.get(f"/v1/requests/{created['id']}?wait=10")).json())


async def test_clicks_arrive_and_are_decided_over_socket_mode(
    socket_api: tuple[Api, FakeSlackWithSocket],
) -> None:
    api, fake = socket_api
    assert api.container.slack is not None
    async with socket_mode(api.container.slack.bolt, "xapp-test", check_every=0.2):
        await fake.wait_connections(1)
        opened = fake.calls_to("apps.connections.open")
        assert opened and opened[0].token == "xapp-test"
        view = await _approve_over_socket(api, fake)
    assert view["status"] == "approved"
    assert view["decisions"][0]["approver"]["email"] == "coo@example.com"


async def test_a_dropped_socket_is_replaced_and_keeps_working(
    socket_api: tuple[Api, FakeSlackWithSocket],
) -> None:
    api, fake = socket_api
    assert api.container.slack is not None
    async with socket_mode(api.container.slack.bolt, "xapp-test", check_every=0.2):
        await fake.wait_connections(1)
        await fake.drop_newest()
        await fake.wait_connections(2)
        assert len(fake.calls_to("apps.connections.open")) >= 2
        view = await _approve_over_socket(api, fake)
    assert view["status"] == "approved"


async def test_a_socket_that_goes_silent_is_replaced_and_keeps_working(
    socket_api: tuple[Api, FakeSlackWithSocket],
) -> None:
    """Open but mute (no pongs, no envelopes): the stall the watchdog exists for."""
    api, fake = socket_api
    assert api.container.slack is not None
    async with socket_mode(api.container.slack.bolt, "xapp-test", check_every=0.2, ping_interval=0.3):
        await fake.wait_connections(1)
        mute = fake.silence_newest()
        await fake.wait_connections(2, timeout=15)
        assert fake.sockets[-1] is not mute
        view = await _approve_over_socket(api, fake)
    assert view["status"] == "approved"
