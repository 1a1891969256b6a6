"""The request state machine: final exactly once, whatever order cancels, expiries and outcomes arrive in."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from app.database import build_engine
from approvals.audit.events import verify_all
from approvals.errors import Conflict
from approvals.identity.agents import add_agent, authenticate
from approvals.policies.policy_file import parse_policies
from approvals.policies.versions import record_policy_version
from approvals.requests.use_cases import (
    NewRequest,
    Outcome,
    cancel_request,
    create_request,
    expire_due_requests,
    record_outcome,
)
from approvals.tables import audit_events, outbox, requests
from tests.conftest import TEST_POLICIES, Api, offer, stop_service

OPERATIONS = st.lists(st.sampled_from(["cancel", "expire", "outcome"]), max_size=6)


def _model(start: str, ops: list[str]) -> tuple[str, list[bool], bool]:
    """What must happen: the final status, which operations succeed, whether an outcome was recorded."""
    status, outcome, results = start, False, []
    for op in ops:
        if op in ("cancel", "expire") and status == "pending":
            status = "cancelled" if op == "cancel" else "expired"
            results.append(True)
        elif op == "outcome" and status == "approved" and not outcome:
            outcome = True
            results.append(True)
        else:
            results.append(False)
    return status, results, outcome


async def _scenario(database_url: str, action: str, ops: list[str]) -> tuple[str, list[bool], bool, int]:
    engine = build_engine(database_url)
    try:
        async with engine.begin() as conn:
            policies = await record_policy_version(conn, parse_policies(TEST_POLICIES), loaded_by="test")
            try:
                new = await add_agent(conn, name="sm-bot", owner="o@example.com", actions=["*"])
                key = new.api_key
            except Conflict:
                key = None
        if key is None:
            async with engine.begin() as conn:
                from approvals.identity.agents import rotate_agent_key

                key = await rotate_agent_key(conn, name="sm-bot")
        async with engine.connect() as conn:
            principal = await authenticate(conn, key)
        async with engine.begin() as conn:
            created = await create_request(
                conn, principal=principal, policies=policies, new=NewRequest(**offer(action=action))
            )
        request_id = created.body["id"]  # type: ignore[union-attr]
        results = []
        for op in ops:
            try:
                async with engine.begin() as conn:
                    if op == "cancel":
                        await cancel_request(conn, principal=principal, request_id=request_id)
                        results.append(True)
                    elif op == "outcome":
                        await record_outcome(
                            conn,
                            principal=principal,
                            request_id=request_id,
                            outcome=Outcome(status="succeeded"),
                        )
                        results.append(True)
                    else:
                        await conn.execute(
                            update(requests)
                            .where(requests.c.id == request_id)
                            .values(expires_at=func.current_timestamp())
                        )
                        results.append(request_id in await expire_due_requests(conn))
            except Conflict:
                results.append(False)
        async with engine.connect() as conn:
            row = (await conn.execute(select(requests).where(requests.c.id == request_id))).one()
            finals = (
                await conn.execute(
                    select(func.count())
                    .select_from(audit_events)
                    .where(
                        audit_events.c.chain_id == request_id,
                        audit_events.c.kind.in_(
                            ["request_approved", "request_rejected", "request_expired", "request_cancelled"]
                        ),
                    )
                )
            ).scalar_one()
        return row.status, results, row.outcome_status is not None, int(finals)
    finally:
        await engine.dispose()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.sampled_from(["pending", "approved"]), ops=OPERATIONS)
def test_any_sequence_of_operations_matches_the_model(database_url: str, start: str, ops: list[str]) -> None:
    action = "send_offer_letter" if start == "pending" else "read_calendar"
    status, results, outcome, finals = asyncio.run(_scenario(database_url, action, ops))
    expected_status, expected_results, expected_outcome = _model(start, ops)
    assert (status, results, outcome) == (expected_status, expected_results, expected_outcome)
    assert finals == (0 if status == "pending" else 1)


async def test_scheduler_expires_a_request_and_wakes_its_long_poller(database_url: str) -> None:
    from aiohttp import ClientSession

    from tests.conftest import start_service

    container, server = await start_service(database_url, run_scheduler=True, scheduler_interval_seconds=0.2)
    try:
        async with ClientSession() as session:
            api = Api(session=session, base=str(server.make_url("")), key="", container=container)
            api.key = await api.add_agent("exp-bot", ["send_offer_letter"])
            created = await (await api.post("/v1/requests", offer(expires_in=1))).json()
            resp = await api.get(f"/v1/requests/{created['id']}?wait=10")
            body = await resp.json()
        assert body["status"] == "expired"
        assert body["decided_by"] == "system"
    finally:
        await stop_service(container, server)


async def test_concurrent_expiry_sweeps_expire_each_request_once(api: Api) -> None:
    ids = [(await (await api.post("/v1/requests", offer())).json())["id"] for _ in range(20)]
    async with api.container.engine.begin() as conn:
        await conn.execute(update(requests).values(expires_at=func.current_timestamp()))
        # Half with a callback URL (set here: intake would resolve the host): those owe a callback too.
        await conn.execute(
            update(requests).where(requests.c.id.in_(ids[::2])).values(callback_url="https://agent.test/hook")
        )

    async def sweep() -> list[str]:
        async with api.container.engine.begin() as conn:
            return await expire_due_requests(conn, limit=7)

    swept: list[str] = []
    for batch in await asyncio.gather(*(sweep() for _ in range(6))):
        swept += batch
    assert sorted(swept) == sorted(ids)
    async with api.container.engine.connect() as conn:
        events = (
            await conn.execute(
                select(func.count()).select_from(audit_events).where(audit_events.c.kind == "request_expired")
            )
        ).scalar_one()
        report = await verify_all(conn)
        queued = (
            await conn.execute(
                select(outbox.c.kind, func.count())
                .where(outbox.c.dedupe_key.like("%:expired"))
                .group_by(outbox.c.kind)
            )
        ).all()
    assert events == 20
    assert report.first_break is None
    assert dict(queued) == {"slack_update": 20, "callback": 10}
