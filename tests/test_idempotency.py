"""Idempotency-Key: a retried POST never makes a second request, even fifty at once."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select, update

from app.scheduler import purge_idempotency_keys_job
from approvals.tables import idempotency_keys, requests
from tests.conftest import Api, offer


async def _count(api: Api) -> int:
    async with api.container.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(requests))).scalar_one())


async def test_same_key_and_body_returns_the_first_response(api: Api) -> None:
    first = await api.post("/v1/requests", offer(), headers={"Idempotency-Key": "k-1"})
    again = await api.post("/v1/requests", offer(), headers={"Idempotency-Key": "k-1"})
    assert first.status == again.status == 201
    assert await first.json() == await again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert await _count(api) == 1


async def test_the_replay_is_the_first_response_even_after_the_request_changed(api: Api) -> None:
    first = await (await api.post("/v1/requests", offer(), headers={"Idempotency-Key": "k-2"})).json()
    await api.post(f"/v1/requests/{first['id']}/cancel")
    again = await (await api.post("/v1/requests", offer(), headers={"Idempotency-Key": "k-2"})).json()
    assert again == first
    assert again["status"] == "pending"


async def test_the_replay_is_the_first_response_byte_for_byte(api: Api) -> None:
    # Stored in a JSON column, which sorts keys; replayed in the order the first answer had.
    first = await api.post("/v1/requests", offer(), headers={"Idempotency-Key": "k-bytes"})
    again = await api.post("/v1/requests", offer(), headers={"Idempotency-Key": "k-bytes"})
    assert list((await again.json()).keys())[:3] == ["id", "status", "action"]
    assert await again.read() == await first.read()


async def test_an_answer_stored_by_an_earlier_version_is_replayed_as_stored(api: Api) -> None:
    """An answer whose view had other fields (a version before `deliveries`, say) is still the answer
    that request got: it is replayed, not refused, for as long as the key is kept."""
    first = await (await api.post("/v1/requests", offer(), headers={"Idempotency-Key": "k-old"})).json()
    older = {k: v for k, v in first.items() if k != "deliveries"}
    async with api.container.engine.begin() as conn:
        await conn.execute(
            update(idempotency_keys).where(idempotency_keys.c.key == "k-old").values(response_body=older)
        )
    again = await api.post("/v1/requests", offer(), headers={"Idempotency-Key": "k-old"})
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == older


async def test_same_key_with_another_body_is_a_409(api: Api) -> None:
    await api.post("/v1/requests", offer(), headers={"Idempotency-Key": "k-3"})
    resp = await api.post("/v1/requests", offer(title="Another"), headers={"Idempotency-Key": "k-3"})
    assert resp.status == 409
    assert (await resp.json())["error"] == {
        "code": "idempotency_key_reused",
        "message": "this Idempotency-Key was used with a different request body",
        "field": "Idempotency-Key",
    }
    assert await _count(api) == 1


async def test_keys_belong_to_one_agent(api: Api) -> None:
    other = await api.add_agent("second-bot", ["send_offer_letter"])
    a = await (await api.post("/v1/requests", offer(), headers={"Idempotency-Key": "shared"})).json()
    b = await (
        await api.post("/v1/requests", offer(), key=other, headers={"Idempotency-Key": "shared"})
    ).json()
    assert a["id"] != b["id"]


async def test_fifty_concurrent_posts_with_one_key_make_one_request(api: Api) -> None:
    responses = await asyncio.gather(
        *(api.post("/v1/requests", offer(), headers={"Idempotency-Key": "storm"}) for _ in range(50))
    )
    bodies = [await r.json() for r in responses]
    assert {r.status for r in responses} == {201}
    assert len({b["id"] for b in bodies}) == 1
    assert await _count(api) == 1


async def test_a_refused_request_does_not_burn_the_key(api: Api) -> None:
    narrow = await api.add_agent("narrow-bot", ["read_*"])
    refused = await api.post("/v1/requests", offer(), key=narrow, headers={"Idempotency-Key": "k-4"})
    assert refused.status == 403
    allowed = await api.post(
        "/v1/requests", offer(action="read_files"), key=narrow, headers={"Idempotency-Key": "k-4"}
    )
    assert allowed.status == 201


async def test_keys_are_kept_at_least_a_day_then_purged(api: Api) -> None:
    await api.post("/v1/requests", offer(), headers={"Idempotency-Key": "old"})
    await api.post("/v1/requests", offer(), headers={"Idempotency-Key": "new"})
    async with api.container.engine.begin() as conn:
        row = (await conn.execute(select(idempotency_keys).where(idempotency_keys.c.key == "old"))).one()
        await conn.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.key == "old")
            .values(created_at=row.created_at.replace(year=row.created_at.year - 1))
        )
    assert await purge_idempotency_keys_job(api.container) == 1
    async with api.container.engine.connect() as conn:
        left = (await conn.execute(select(idempotency_keys.c.key))).scalars().all()
    assert left == ["new"]
