"""The agent API over real HTTP: creating, reading, cancelling and closing requests."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from approvals.tables import audit_events, outbox, requests
from tests.conftest import Api, offer


async def test_a_request_that_needs_approval_is_created_pending(api: Api) -> None:
    resp = await api.post("/v1/requests", offer())
    assert resp.status == 201
    body = await resp.json()
    assert body["status"] == "pending"
    assert body["id"].startswith("req_")
    assert body["policy"] == {"name": "send_offer_letter", "version": api.container.policies.version}
    assert body["decided_by"] is None
    assert body["expires_at"] > body["created_at"]


async def test_creation_writes_audit_events_and_a_slack_outbox_row_with_the_request(api: Api) -> None:
    body = await (await api.post("/v1/requests", offer())).json()
    async with api.container.engine.connect() as conn:
        kinds = (
            (
                await conn.execute(
                    select(audit_events.c.kind)
                    .where(audit_events.c.chain_id == body["id"])
                    .order_by(audit_events.c.seq)
                )
            )
            .scalars()
            .all()
        )
        queued = (
            (await conn.execute(select(outbox.c.kind).where(outbox.c.request_id == body["id"])))
            .scalars()
            .all()
        )
    assert kinds == ["request_created", "policy_evaluated"]
    assert queued == ["slack_notify"]


async def test_policy_allow_is_approved_at_once_by_policy(api: Api) -> None:
    resp = await api.post("/v1/requests", offer(action="read_calendar"))
    body = await resp.json()
    assert resp.status == 201
    assert body["status"] == "approved"
    assert body["decided_by"] == "policy"
    assert body["policy"]["name"] == "read_*"


async def test_policy_deny_is_rejected_at_once_with_the_reason(api: Api) -> None:
    body = await (await api.post("/v1/requests", offer(action="delete_repository"))).json()
    assert body["status"] == "rejected"
    assert body["decided_by"] == "policy"
    assert "delete_*" in body["reason"]


async def test_an_action_without_policy_is_denied_by_default(api: Api) -> None:
    key = await api.add_agent("wild-bot", ["*"])
    body = await (await api.post("/v1/requests", offer(action="launch_rocket"), key=key)).json()
    assert body["status"] == "rejected"
    assert body["policy"]["name"] == "default"


async def test_an_action_outside_the_allowlist_is_forbidden_and_audited(api: Api) -> None:
    key = await api.add_agent("narrow-bot", ["read_*"])
    resp = await api.post("/v1/requests", offer(), key=key)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "action_not_allowed"
    async with api.container.engine.connect() as conn:
        refused = (
            (await conn.execute(select(audit_events.c.data).where(audit_events.c.kind == "action_refused")))
            .scalars()
            .all()
        )
        created = (await conn.execute(select(func.count()).select_from(requests))).scalar_one()
    assert [r["action"] for r in refused] == ["send_offer_letter"]
    assert created == 0


async def test_expires_in_is_capped_by_the_policy(api: Api) -> None:
    short = await (await api.post("/v1/requests", offer(expires_in=60))).json()
    long = await (await api.post("/v1/requests", offer(expires_in=30 * 24 * 3600))).json()
    async with api.container.engine.connect() as conn:
        rows = {r.id: r for r in (await conn.execute(select(requests))).all()}
    assert (rows[short["id"]].expires_at - rows[short["id"]].created_at).total_seconds() == 60
    assert (rows[long["id"]].expires_at - rows[long["id"]].created_at).total_seconds() == 3600


async def test_an_agent_reads_its_own_request_and_not_another_agents(api: Api) -> None:
    created = await (await api.post("/v1/requests", offer())).json()
    mine = await api.get(f"/v1/requests/{created['id']}")
    assert mine.status == 200
    assert (await mine.json())["title"] == "Send offer letter to J. Doe"
    other = await api.add_agent("other-bot", ["send_offer_letter"])
    theirs = await api.get(f"/v1/requests/{created['id']}", key=other)
    assert theirs.status == 404
    missing = await api.get("/v1/requests/req_nothing")
    assert (
        (await theirs.json())["error"]["code"]
        == (await missing.json())["error"]["code"]
        == "request_not_found"
    )
    assert theirs.status == missing.status == 404


async def test_cancel_makes_a_pending_request_final_once(api: Api) -> None:
    created = await (await api.post("/v1/requests", offer())).json()
    first = await api.post(f"/v1/requests/{created['id']}/cancel")
    assert first.status == 200
    assert (await first.json())["status"] == "cancelled"
    second = await api.post(f"/v1/requests/{created['id']}/cancel")
    assert second.status == 409
    assert (await second.json())["error"]["code"] == "not_pending"


async def test_concurrent_cancels_produce_one_final_state_and_one_event(api: Api) -> None:
    created = await (await api.post("/v1/requests", offer())).json()
    responses = await asyncio.gather(*(api.post(f"/v1/requests/{created['id']}/cancel") for _ in range(10)))
    assert sorted(r.status for r in responses) == [200] + [409] * 9
    async with api.container.engine.connect() as conn:
        events = (
            await conn.execute(
                select(func.count())
                .select_from(audit_events)
                .where(audit_events.c.chain_id == created["id"], audit_events.c.kind == "request_cancelled")
            )
        ).scalar_one()
    assert events == 1


async def test_outcome_is_accepted_once_and_only_after_approval(api: Api) -> None:
    pending = await (await api.post("/v1/requests", offer())).json()
    refused = await api.post(f"/v1/requests/{pending['id']}/outcome", {"status": "succeeded"})
    assert refused.status == 409
    assert (await refused.json())["error"]["code"] == "not_approved"

    approved = await (await api.post("/v1/requests", offer(action="read_calendar"))).json()
    outcome = {"status": "succeeded", "detail": "sent", "external_ref": "msg-1"}
    first = await api.post(f"/v1/requests/{approved['id']}/outcome", outcome)
    assert first.status == 200
    assert (await first.json())["outcome"]["external_ref"] == "msg-1"
    again = await api.post(f"/v1/requests/{approved['id']}/outcome", outcome)
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "outcome_already_recorded"


async def test_long_poll_returns_as_soon_as_the_request_becomes_final(api: Api) -> None:
    created = await (await api.post("/v1/requests", offer())).json()
    poll = asyncio.create_task(api.get(f"/v1/requests/{created['id']}?wait=30"))
    await asyncio.sleep(0.2)
    assert not poll.done()
    await api.post(f"/v1/requests/{created['id']}/cancel")
    resp = await asyncio.wait_for(poll, timeout=5)
    assert (await resp.json())["status"] == "cancelled"


async def test_long_poll_on_a_pending_request_returns_pending_after_the_wait(api: Api) -> None:
    created = await (await api.post("/v1/requests", offer())).json()
    resp = await api.get(f"/v1/requests/{created['id']}?wait=1")
    assert resp.status == 200
    assert (await resp.json())["status"] == "pending"
