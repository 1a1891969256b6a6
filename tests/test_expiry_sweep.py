"""The set-based expiry sweep and the many-row INSERT it writes with.

A sweep racing approvers' clicks on the same due requests ends each request exactly once, with one final
event in a chain that verifies and the deliveries of that final state; the many-row INSERT stores what it
is given (no value cut short, no JSON value taken for an equal-looking one), skips conflicting rows only
when asked to.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError

from approvals.audit.events import verify_all
from approvals.db import db_now, insert_many, insert_many_ignoring_conflict
from approvals.delivery.outbox import outbox_row
from approvals.requests.decisions import Click, Clicker, Recorded, record_click
from approvals.requests.use_cases import expire_due_requests
from approvals.tables import audit_events, chain_heads, outbox, requests
from tests.conftest import Api, final_events_per_chain, offer

COO = Clicker(user_id="U01COO", team_id="T1", name="Coo", email="coo@example.com")


async def test_a_sweep_racing_clicks_ends_each_request_once(api: Api) -> None:
    ids = [(await (await api.post("/v1/requests", offer())).json())["id"] for _ in range(40)]
    engine = api.container.engine
    async with engine.begin() as conn:
        await conn.execute(update(requests).values(expires_at=func.current_timestamp()))
        # Set here: intake would resolve the host. Those requests owe a callback too.
        await conn.execute(
            update(requests).where(requests.c.id.in_(ids[::2])).values(callback_url="https://agent.test/hook")
        )

    async def sweep() -> list[str]:
        async with engine.begin() as conn:
            return await expire_due_requests(conn, limit=6)

    async def click(request_id: str) -> str:
        async with engine.begin() as conn:
            outcome = await record_click(conn, Click(request_id, "approve", COO, f"1700000000.{request_id}"))
        return outcome.status if isinstance(outcome, Recorded) else "refused"

    # Every third request gets a click, started among the sweeps so that both reach some rows first.
    clicked = ids[::3]
    work = [sweep() for _ in range(4)] + [click(i) for i in clicked] + [sweep() for _ in range(4)]
    results = await asyncio.gather(*work)
    swept = [request_id for batch in results if isinstance(batch, list) for request_id in batch]
    while batch := await sweep():  # whatever the racing sweeps left (each takes 6 at most)
        swept += batch

    async with engine.connect() as conn:
        statuses = dict((await conn.execute(select(requests.c.id, requests.c.status))).all())
        finals = await final_events_per_chain(conn)
        queued = set((await conn.execute(select(outbox.c.dedupe_key))).scalars())
        report = await verify_all(conn)
    assert all(len(batch) <= 6 for batch in results if isinstance(batch, list))  # the limit holds
    assert len(swept) == len(set(swept))
    assert {i for i, status in statuses.items() if status == "expired"} == set(swept)
    assert {i for i, status in statuses.items() if status == "approved"} == set(ids) - set(swept)
    assert set(swept) >= set(ids) - set(clicked)  # nobody clicked those: the sweep ended them all
    assert finals == {i: 1 for i in ids}
    for i in ids:
        assert f"slack_update:{i}:{statuses[i]}" in queued
        assert (f"callback:{i}:{statuses[i]}" in queued) == (i in ids[::2])
    assert report.first_break is None


async def test_a_sweep_with_nothing_due_writes_nothing(api: Api) -> None:
    request_id = (await (await api.post("/v1/requests", offer())).json())["id"]
    async with api.container.engine.begin() as conn:
        before = (await conn.execute(select(func.count()).select_from(audit_events))).scalar_one()
        assert await expire_due_requests(conn) == []
        after = (await conn.execute(select(func.count()).select_from(audit_events))).scalar_one()
        head = (
            await conn.execute(select(chain_heads.c.seq).where(chain_heads.c.chain_id == request_id))
        ).scalar_one()
        status = (
            await conn.execute(select(requests.c.status).where(requests.c.id == request_id))
        ).scalar_one()
    assert after == before
    assert head == 2  # request_created and policy_evaluated, nothing more
    assert status == "pending"


async def test_many_rows_keep_their_own_values(api: Api) -> None:
    # Each group is equal as Python sees it (1 == True == 1.0, 0.0 == -0.0) but not as JSON: a column
    # whose rows are all alike goes once, and these must not be taken for alike.
    groups = [
        [{"n": 1}, {"n": True}, {"n": 1.0}],
        [{"n": 0.0}, {"n": -0.0}],
        [{"n": [1]}, {"n": [True]}],
        [{"same": 1}, {"same": 1}],
    ]
    async with api.container.engine.begin() as conn:
        now = await db_now(conn)
        later = now + dt.timedelta(seconds=5)
        for g, payloads in enumerate(groups):
            rows = [
                outbox_row(kind="callback", dedupe_key=f"{g}.{i}", request_id=None, payload=p, now=now)
                for i, p in enumerate(payloads)
            ]
            rows[-1]["next_attempt_at"] = later
            await insert_many(conn, outbox, rows)
        stored = (await conn.execute(select(outbox).order_by(outbox.c.id))).all()
    expected = [p for payloads in groups for p in payloads]
    assert [row.payload for row in stored] == expected
    assert [repr(row.payload) for row in stored] == [repr(p) for p in expected]  # types, -0.0
    assert [row.dedupe_key for row in stored] == [
        f"{g}.{i}" for g, ps in enumerate(groups) for i in range(len(ps))
    ]
    assert [row.next_attempt_at for row in stored] == [
        later if i == len(ps) - 1 else now for ps in groups for i in range(len(ps))
    ]
    assert {row.status for row in stored} == {"pending"}


async def test_many_rows_skip_only_conflicting_ones_when_asked(api: Api) -> None:
    async with api.container.engine.begin() as conn:
        now = await db_now(conn)

        def row(key: str, note: str) -> dict[str, object]:
            return outbox_row(
                kind="callback", dedupe_key=key, request_id=None, payload={"note": note}, now=now
            )

        await insert_many(conn, outbox, [row("a", "first"), row("b", "first")])
        await insert_many_ignoring_conflict(conn, outbox, [row("b", "second"), row("c", "second")])
        stored = dict((await conn.execute(select(outbox.c.dedupe_key, outbox.c.payload))).all())
    assert stored == {"a": {"note": "first"}, "b": {"note": "first"}, "c": {"note": "second"}}
    with pytest.raises(DBAPIError):
        async with api.container.engine.begin() as conn:
            await insert_many(conn, outbox, [row("d", "third"), row("a", "third")])
    async with api.container.engine.connect() as conn:
        keys = set((await conn.execute(select(outbox.c.dedupe_key))).scalars())
    assert keys == {"a", "b", "c"}  # the failed statement left nothing behind, "d" included


async def test_many_rows_keep_strings_as_they_are(api: Api) -> None:
    # Strings go to PostgreSQL as array text written by us: quotes, backslashes, the array syntax's own
    # characters and the word NULL must come back as they went in, and None as NULL.
    keys = [
        "plain",
        'with "quotes"',
        "back\\slash\\",
        "a,b",
        "{braces}",
        " spaced ",
        "NULL",
        "",
        "ünï ✓",
        "'",
    ]
    async with api.container.engine.begin() as conn:
        now = await db_now(conn)
        rows = [
            outbox_row(
                kind="callback", dedupe_key=key, request_id=key if i % 2 else None, payload={}, now=now
            )
            for i, key in enumerate(keys)
        ]
        await insert_many(conn, outbox, rows)
        stored = (
            await conn.execute(select(outbox.c.dedupe_key, outbox.c.request_id).order_by(outbox.c.id))
        ).all()
    assert [tuple(row) for row in stored] == [(key, key if i % 2 else None) for i, key in enumerate(keys)]


async def test_many_rows_refuse_a_value_too_long_for_its_column(api: Api) -> None:
    long_key = "x" * 201  # dedupe_key is VARCHAR(200)
    with pytest.raises(DBAPIError, match="too long"):
        async with api.container.engine.begin() as conn:
            now = await db_now(conn)
            rows = [
                outbox_row(kind="callback", dedupe_key=key, request_id=None, payload={}, now=now)
                for key in ("short", long_key)
            ]
            await insert_many(conn, outbox, rows)
