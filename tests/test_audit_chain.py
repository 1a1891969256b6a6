"""The audit log: hash-chained per request, time from the database, append-only on PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from approvals.audit.events import GENESIS_HASH, append_event, event_hash, verify_chain
from approvals.tables import audit_events
from tests.conftest import Api, offer


async def _chain(api: Api, chain_id: str) -> list[dict[str, object]]:
    async with api.container.engine.connect() as conn:
        rows = (
            (
                await conn.execute(
                    select(audit_events)
                    .where(audit_events.c.chain_id == chain_id)
                    .order_by(audit_events.c.seq)
                )
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


async def test_each_requests_events_link_by_hash_from_genesis(api: Api) -> None:
    created = await (await api.post("/v1/requests", offer())).json()
    await api.post(f"/v1/requests/{created['id']}/cancel")
    chain = await _chain(api, created["id"])
    assert [e["seq"] for e in chain] == [1, 2, 3]
    assert chain[0]["prev_hash"] == GENESIS_HASH
    for before, after in itertools.pairwise(chain):
        assert after["prev_hash"] == before["hash"]
    for event in chain:
        assert event["hash"] == event_hash(
            **{k: event[k] for k in ("chain_id", "seq", "kind", "actor", "data", "created_at", "prev_hash")}
        )
    async with api.container.engine.connect() as conn:
        assert await verify_chain(conn, created["id"]) is None


async def test_the_policy_decision_event_says_what_fired_and_why(api: Api) -> None:
    created = await (await api.post("/v1/requests", offer(action="delete_repo"))).json()
    chain = await _chain(api, created["id"])
    policy = next(e for e in chain if e["kind"] == "policy_evaluated")
    assert policy["data"]["decision"] == "deny"
    assert policy["data"]["policy"] == "delete_*"
    assert policy["data"]["rule_index"] == 4
    assert policy["data"]["inputs"] == {"action": "delete_repo", "agent": "hiring-bot"}
    assert [e["kind"] for e in chain] == ["request_created", "policy_evaluated", "request_rejected"]


async def test_verify_names_an_edited_event(api: Api) -> None:
    created = await (await api.post("/v1/requests", offer())).json()
    async with api.container.engine.begin() as conn:
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(
            audit_events.update()
            .where(audit_events.c.chain_id == created["id"], audit_events.c.seq == 2)
            .values(actor="someone-else")
        )
    async with api.container.engine.connect() as conn:
        broken = await verify_chain(conn, created["id"])
    assert broken is not None
    assert (broken.seq, broken.problem) == (2, "event content does not match its hash")


async def test_verify_names_a_deleted_event(api: Api) -> None:
    created = await (await api.post("/v1/requests", offer())).json()
    await api.post(f"/v1/requests/{created['id']}/cancel")
    async with api.container.engine.begin() as conn:
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(
            audit_events.delete().where(audit_events.c.chain_id == created["id"], audit_events.c.seq == 3)
        )
    async with api.container.engine.connect() as conn:
        broken = await verify_chain(conn, created["id"])
    assert broken is not None
    assert (broken.seq, broken.problem) == (3, "events after this point were removed")


async def test_postgres_forbids_update_delete_and_truncate_of_audit_events(api: Api) -> None:
    await api.post("/v1/requests", offer())
    for statement in (
        "UPDATE audit_events SET actor = 'x'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events CASCADE",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with api.container.engine.begin() as conn:
                await conn.execute(text(statement))


async def test_appends_to_one_chain_from_many_transactions_stay_linked(api: Api) -> None:
    async def append(i: int) -> None:
        async with api.container.engine.begin() as conn:
            await append_event(conn, chain_id="stress", kind="tick", actor="test", data={"i": i})

    await asyncio.gather(*(append(i) for i in range(20)))
    chain = await _chain(api, "stress")
    assert [e["seq"] for e in chain] == list(range(1, 21))
    async with api.container.engine.connect() as conn:
        assert await verify_chain(conn, "stress") is None


async def test_event_times_come_from_the_database_and_never_go_backwards(api: Api) -> None:
    created = await (await api.post("/v1/requests", offer())).json()
    await api.post(f"/v1/requests/{created['id']}/cancel")
    times = [e["created_at"] for e in await _chain(api, created["id"])]
    assert times == sorted(times)
    assert all(t.tzinfo is not None for t in times)  # type: ignore[union-attr]
