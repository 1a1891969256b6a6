"""Intake on PostgreSQL hashes a new request's events in the database (approvals.requests.intake_statement).

What PostgreSQL writes there must be, byte for byte, what Python's event_hash would have written:
the parts Python sends around the database's clock and the previous hash, the clock's text forms,
and every request shape intake has (pending, decided by policy, with an Idempotency-Key). Each
stored event is re-hashed here by approvals.audit.events.event_hash and both verification paths agree.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import event as sa_event
from sqlalchemy import select, text

from approvals.audit.events import (
    DATA_KEY,
    _event_body,
    body_parts,
    canonical_around,
    canonical_text,
    event_hash,
    format_time,
    verify_all,
)
from approvals.audit.findings_sql import event_time_text
from approvals.requests.intake_statement import isoformat_text
from approvals.tables import audit_events, requests
from tests.conftest import Api, offer

# Text that JSON writers disagree on if anything does: quotes, backslashes, control characters,
# characters outside the BMP, a would-be Slack token and a would-be placeholder.
ODD = 'Zoë "Q" \\ Ångström\n\t\x01\x7f 😀 <!here> \u2028 "\\u0000expires_at\\u0000"'
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(st.text(), json_values, max_size=6), st.text(), st.text())
def test_canonical_around_puts_any_string_where_the_whole_would_have_it(
    data: dict[str, Any], key: str, value: str
) -> None:
    before, after = canonical_around(data, key)
    assert before + json.dumps(value, ensure_ascii=False) + after == canonical_text({**data, key: value})


@given(st.text(), st.integers(min_value=1, max_value=10**6), st.text(), st.text(), json_values)
def test_body_parts_around_time_data_and_link_make_the_body_event_hash_covers(
    chain_id: str, seq: int, kind: str, actor: str, data: Any
) -> None:
    when, prev = "2026-12-01T17:00:00.000001Z", "ab" * 32
    parts = body_parts(chain_id, seq, kind, actor)
    data_text = canonical_text(data)
    body = parts.opening + when + DATA_KEY + data_text + parts.before_prev + prev + parts.closing
    assert body.encode() == _event_body(chain_id, seq, kind, actor, data_text, when, prev)


TIMES = [
    dt.datetime(2026, 12, 1, 17, 0, 0, 0, tzinfo=dt.UTC),
    dt.datetime(2026, 12, 1, 17, 0, 0, 1, tzinfo=dt.UTC),
    dt.datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
    dt.datetime(2024, 2, 29, 0, 0, 0, 500000, tzinfo=dt.timezone(dt.timedelta(hours=-7))),
    dt.datetime(1000, 1, 1, tzinfo=dt.UTC),
    dt.datetime(9999, 12, 31, 12, tzinfo=dt.UTC),
]


@pytest.mark.parametrize("when", TIMES, ids=str)
async def test_the_databases_time_texts_are_pythons(api: Api, when: dt.datetime) -> None:
    # In a session whose time zone is not UTC, so that nothing depends on the server's setting.
    async with api.container.engine.begin() as conn:
        await conn.execute(text("SET LOCAL TIME ZONE 'America/Los_Angeles'"))
        at, iso = (
            await conn.execute(
                text(
                    f"SELECT {event_time_text('CAST(:t AS timestamptz)')}, {isoformat_text('CAST(:t AS timestamptz)')}"
                ),
                {"t": when},
            )
        ).one()
    assert at == format_time(when)
    assert iso == when.astimezone(dt.UTC).isoformat()


async def _stored_events(api: Api, request_id: str) -> list[Any]:
    async with api.container.engine.connect() as conn:
        query = select(audit_events).where(audit_events.c.chain_id == request_id).order_by(audit_events.c.seq)
        return list((await conn.execute(query)).all())


@pytest.mark.parametrize(
    ("body", "status", "kinds"),
    [
        (offer(title=ODD[:200], summary=ODD, on_behalf_of="zoë@example.com"), "pending", 2),
        (offer(action="read_report", params={ODD: [ODD, 1.5, None]}, expires_in=90), "approved", 3),
        (offer(action="delete_user", summary=ODD), "rejected", 3),
    ],
    ids=["pending", "allowed", "denied"],
)
@pytest.mark.parametrize("key", [None, 'k "Q" \\ {x}'], ids=["no-key", "key"])
async def test_every_intake_shape_writes_events_event_hash_agrees_with(
    api: Api, body: dict[str, Any], status: str, kinds: int, key: str | None
) -> None:
    headers = {"Idempotency-Key": key} if key else {}
    resp = await api.post("/v1/requests", body, headers=headers)
    assert resp.status == 201, await resp.text()
    view = await resp.json()
    assert view["status"] == status

    events = await _stored_events(api, view["id"])
    assert len(events) == kinds
    async with api.container.engine.connect() as conn:
        row = (await conn.execute(select(requests).where(requests.c.id == view["id"]))).one()
    prev = "0" * 64
    for seq, event in enumerate(events, start=1):
        assert event.seq == seq and event.prev_hash == prev
        assert event.created_at == row.created_at
        assert event.hash == event_hash(
            chain_id=event.chain_id,
            seq=event.seq,
            kind=event.kind,
            actor=event.actor,
            data=event.data,
            created_at=event.created_at,
            prev_hash=event.prev_hash,
        )
        prev = event.hash
    created = events[0].data
    assert created["expires_at"] == row.expires_at.isoformat()
    assert created["idempotency_key"] == key and created["expires_in_requested"] == body.get("expires_in")
    assert view["created_at"] == row.created_at.isoformat().replace("+00:00", "Z")
    assert view["expires_at"] == row.expires_at.isoformat().replace("+00:00", "Z")
    assert (row.decided_at is None) == (status == "pending")
    for in_database in (True, False):
        async with api.container.engine.begin() as conn:
            report = await verify_all(conn, hash_in_database=in_database)
        assert report.ok, report


async def test_a_request_without_a_key_is_one_autocommit_statement_and_nothing_else(api: Api) -> None:
    """No BEGIN, no clock, no COMMIT: the statement is its own transaction. With a key, or for an
    action the agent may not ask for, the transactional path writes instead."""
    single = api.container.single_statements
    assert single is not None
    assert (await api.post("/v1/requests", offer())).status == 201  # the key is now cached
    statements: dict[str, list[str]] = {"single": [], "interactive": []}

    def recorder(name: str) -> Any:
        def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            statements[name].append(statement.split(None, 1)[0])

        return record

    engines = {"single": single.sync_engine, "interactive": api.container.interactive.sync_engine}
    listeners = {name: recorder(name) for name in engines}
    for name, engine in engines.items():
        sa_event.listen(engine, "before_cursor_execute", listeners[name])
    try:
        created = await (await api.post("/v1/requests", offer())).json()
        assert statements == {"single": ["WITH"], "interactive": []}
        assert (await api.post("/v1/requests", offer(), headers={"Idempotency-Key": "k1"})).status == 201
        assert (await api.post("/v1/requests", offer(action="approve_invoice"))).status == 403
    finally:
        for name, engine in engines.items():
            sa_event.remove(engine, "before_cursor_execute", listeners[name])
    assert statements["single"] == ["WITH"] and len(statements["interactive"]) > 2
    assert len(await _stored_events(api, created["id"])) == 2
    async with api.container.engine.begin() as conn:
        assert (await verify_all(conn)).ok
