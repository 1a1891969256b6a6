"""Agent callbacks: signed per Standard Webhooks, retried with the same webhook-id, every attempt recorded."""

from __future__ import annotations

import base64
import hashlib
import hmac

from aiohttp import ClientSession
from sqlalchemy import func, select, update

from approvals.tables import outbox
from tests.conftest import Api, offer, start_service, stop_service
from tests.receiver import Receiver


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's own check, written from the Standard Webhooks spec."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(sig == f"v1,{expected}" for sig in headers["webhook-signature"].split(" "))


async def _make_due(api: Api) -> None:
    """Skip the retry wait (the clock, not the code under test, is what we move)."""
    await api.container.dispatcher.run_until_idle()  # let in-flight attempts settle first
    async with api.container.engine.begin() as conn:
        await conn.execute(
            update(outbox)
            .where(outbox.c.status == "pending")
            .values(next_attempt_at=func.current_timestamp())
        )


async def test_a_final_state_is_posted_signed_to_the_callback(cb_api: Api, receiver: Receiver) -> None:
    created = await (
        await cb_api.post("/v1/requests", offer(action="read_mail", callback_url=receiver.url()))
    ).json()
    [hit] = await receiver.wait_for(1)
    assert verify(cb_api.webhook_secrets["cb-bot"], hit.headers, hit.body)
    event = receiver.json(0)
    assert event["type"] == "request.approved"
    assert event["data"]["id"] == created["id"]
    assert hit.headers["webhook-id"].startswith("msg_")


async def test_a_failed_callback_is_retried_with_the_same_webhook_id(cb_api: Api, receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    created = await (
        await cb_api.post("/v1/requests", offer(action="read_mail", callback_url=receiver.url()))
    ).json()
    await receiver.wait_for(1)
    for _ in range(2):
        await _make_due(cb_api)
        await cb_api.container.dispatcher.run_until_idle()
    hits = await receiver.wait_for(3)
    assert len({h.headers["webhook-id"] for h in hits}) == 1
    view = await (await cb_api.get(f"/v1/requests/{created['id']}")).json()
    attempts = [d for d in view["deliveries"] if d["kind"] == "callback"]
    assert [(a["status_code"], a["result"]) for a in attempts] == [
        (500, "retry"),
        (503, "retry"),
        (200, "delivered"),
    ]
    assert all(a["latency_ms"] is not None and a["at"] for a in attempts)


async def test_410_gone_stops_delivery_to_that_url(cb_api: Api, receiver: Receiver) -> None:
    receiver.statuses = [410]
    created = await (
        await cb_api.post("/v1/requests", offer(action="read_mail", callback_url=receiver.url()))
    ).json()
    await receiver.wait_for(1)
    await cb_api.container.dispatcher.run_until_idle()
    await cb_api.post(f"/v1/requests/{created['id']}/outcome", {"status": "succeeded"})
    await _make_due(cb_api)
    await cb_api.container.dispatcher.run_until_idle()
    assert len(receiver.received) == 1
    async with cb_api.container.engine.connect() as conn:
        statuses = (
            (await conn.execute(select(outbox.c.status).where(outbox.c.kind == "callback"))).scalars().all()
        )
    assert set(statuses) == {"failed"}


async def test_cancel_and_outcome_each_produce_a_callback(cb_api: Api, receiver: Receiver) -> None:
    pending = await (await cb_api.post("/v1/requests", offer(callback_url=receiver.url()))).json()
    await cb_api.post(f"/v1/requests/{pending['id']}/cancel")
    approved = await (
        await cb_api.post("/v1/requests", offer(action="read_x", callback_url=receiver.url()))
    ).json()
    await cb_api.post(f"/v1/requests/{approved['id']}/outcome", {"status": "failed", "detail": "smtp down"})
    await receiver.wait_for(3)
    types = sorted(receiver.json(i)["type"] for i in range(3))
    assert types == ["request.approved", "request.cancelled", "request.outcome"]


async def test_a_callback_no_longer_allowed_at_send_time_is_not_sent(
    database_url: str, receiver: Receiver
) -> None:
    """DNS rebinding: a URL allowed when the request was accepted is checked again before every send.

    The first service allows 127.0.0.1 and accepts the request; its callback fails once (500). The
    service then restarts without that allowance: the retry is refused before anything is sent.
    """
    receiver.statuses = [500]
    container, server = await start_service(database_url, callback_allow_hosts=["127.0.0.1"])
    try:
        async with ClientSession() as session:
            api = Api(session=session, base=str(server.make_url("")), key="", container=container)
            api.key = await api.add_agent("cb-bot", ["read_*"])
            created = await (
                await api.post("/v1/requests", offer(action="read_x", callback_url=receiver.url()))
            ).json()
            await receiver.wait_for(1)
            await container.dispatcher.run_until_idle()  # the failed attempt is recorded
    finally:
        await stop_service(container, server)

    container, server = await start_service(database_url, callback_allow_hosts=[])
    try:
        async with ClientSession() as session:
            api = Api(session=session, base=str(server.make_url("")), key=api.key, container=container)
            await _make_due(api)
            await container.dispatcher.run_until_idle()
            view = await (await api.get(f"/v1/requests/{created['id']}")).json()
    finally:
        await stop_service(container, server)
    assert len(receiver.received) == 1
    attempts = [d for d in view["deliveries"] if d["kind"] == "callback"]
    assert [(a["status_code"], a["result"]) for a in attempts] == [(500, "retry"), (None, "failed")]
    assert "non-public" in attempts[1]["error"]
