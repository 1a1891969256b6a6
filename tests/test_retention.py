"""Retention purge: only old, final, checkpointed, intact request chains go; verification still holds.

Old data is made by inserting requests and their audit events with timestamps 500 days back (the
event hashes cover those times, exactly as if they had been written then); the purge itself runs on
the real clock, with the default 400-day retention. Tampering is done as a superuser would: with the
append-only trigger switched off (`session_replication_role = replica`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.checkpoints import create_checkpoint, verify_checkpoints
from approvals.audit.events import NewEvent, append_event, append_events, verify_all
from approvals.audit.retention import PurgeBatch, purge_batch, purge_boundary
from approvals.db import db_now
from approvals.errors import InvalidInput
from approvals.tables import (
    agents,
    audit_events,
    audit_purged_events,
    audit_purges,
    chain_heads,
    decisions,
    delivery_attempts,
    idempotency_keys,
    outbox,
    requests,
    slack_clicks,
    slack_messages,
    step_up_intents,
)
from tests.conftest import Api, offer, run_cli

RETENTION_DAYS = 400
OLD = dt.timedelta(days=500)
REQUEST_TABLES = (
    decisions,
    slack_messages,
    slack_clicks,
    delivery_attempts,
    outbox,
    idempotency_keys,
    step_up_intents,
)


async def _superuser(conn: AsyncConnection) -> None:
    await conn.execute(text("SET LOCAL session_replication_role = replica"))  # bypass the triggers


async def _old_request(
    api: Api, *, age: dt.timedelta = OLD, status: str = "approved", outbox_status: str = "done"
) -> str:
    """A request with every kind of row a request can have, all written `age` ago."""
    rid = f"req_old{uuid.uuid4().hex[:16]}"
    async with api.container.engine.begin() as conn:
        at = await db_now(conn) - age
        agent_id = (await conn.execute(select(agents.c.id).where(agents.c.name == "hiring-bot"))).scalar_one()
        version = api.container.policies.version
        final = status != "pending"
        await conn.execute(
            requests.insert(),
            {
                "id": rid,
                "agent_id": agent_id,
                "action": "send_offer_letter",
                "title": "Old offer",
                "summary": "from long ago",
                "params": {"salary": 1},
                "payload_sha256": "0" * 64,
                "on_behalf_of": "recruiter@example.com",
                "links": [],
                "status": status,
                "decided_by": "human" if final else None,
                "policy_name": "send_offer_letter",
                "policy_version_id": version,
                "required_approvals": 1,
                "created_at": at,
                "expires_at": at + dt.timedelta(hours=1),
                "decided_at": at + dt.timedelta(minutes=5) if final else None,
            },
        )
        await conn.execute(
            decisions.insert(),
            {"request_id": rid, "approver_id": "U01COO", "decision": "approve", "created_at": at},
        )
        await conn.execute(
            slack_messages.insert(),
            {"request_id": rid, "destination": "C0", "channel": "C0", "ts": "1.0", "created_at": at},
        )
        await conn.execute(
            slack_clicks.insert(),
            {
                "dedupe_key": f"click:{rid}",
                "request_id": rid,
                "payload": {},
                "status": "done",
                "attempts": 1,
                "created_at": at,
            },
        )
        outbox_id = (
            await conn.execute(
                outbox.insert().returning(outbox.c.id),
                {
                    "kind": "callback",
                    "request_id": rid,
                    "dedupe_key": f"callback:{rid}",
                    "payload": {},
                    "status": outbox_status,
                    "attempts": 1,
                    # A pending row waits for a retry tomorrow, so the running dispatcher leaves it be.
                    "next_attempt_at": at if outbox_status == "done" else at + OLD + dt.timedelta(days=1),
                    "created_at": at,
                    "updated_at": at,
                },
            )
        ).scalar_one()
        await conn.execute(
            delivery_attempts.insert(),
            {
                "outbox_id": outbox_id,
                "request_id": rid,
                "kind": "callback",
                "attempt": 1,
                "started_at": at,
                "result": "delivered",
            },
        )
        await conn.execute(
            idempotency_keys.insert(),
            {"agent_id": agent_id, "key": rid, "body_sha256": "0" * 64, "request_id": rid, "created_at": at},
        )
        await conn.execute(
            step_up_intents.insert(),
            {
                "id": f"intent_{rid}",
                "request_id": rid,
                "approver_id": "U01COO",
                "decision": "approve",
                "click": {},
                "status": "decided",
                "created_at": at,
                "expires_at": at + dt.timedelta(minutes=10),
            },
        )
        events = [
            NewEvent("request_created", "agent:hiring-bot", {"action": "send_offer_letter"}),
            NewEvent("policy_evaluated", "policy", {"decision": "require_approval"}),
        ]
        if final:
            events.append(NewEvent(f"request_{status}", "slack:U01COO", {"decided_by": "human"}))
        await append_events(conn, rid, events, now=at)
    return rid


async def _checkpoint(api: Api) -> None:
    key = api.container.checkpoint_key
    async with api.container.engine.begin() as conn:
        assert await create_checkpoint(conn, sign=key.sign, key_id=key.key_id, lag=dt.timedelta(0))


async def _purge(api: Api, *, dry_run: bool = False, limit: int = 500) -> PurgeBatch:
    key = api.container.checkpoint_key
    async with api.container.engine.begin() as conn:
        boundary = await purge_boundary(conn, dt.timedelta(days=RETENTION_DAYS))
        return await purge_batch(
            conn,
            boundary=boundary,
            retention_days=RETENTION_DAYS,
            sign=key.sign,
            verify=key.verify,
            key_id=key.key_id,
            limit=limit,
            dry_run=dry_run,
        )


async def _verify(api: Api, exported: dict[str, Any] | None = None) -> tuple[str | None, str | None]:
    """(first chain break, checkpoint problem) as text; (None, None) when everything verifies."""
    async with api.container.engine.begin() as conn:
        report = await verify_all(conn)
        _count, problem = await verify_checkpoints(
            conn, verify=api.container.checkpoint_key.verify, exported=exported
        )
    brk = report.first_break
    return (
        f"{brk.chain_id}@{brk.seq}: {brk.problem}" if brk else None,
        f"{problem.number}: {problem.problem}" if problem else None,
    )


async def _count(api: Api, table: Any, *where: Any) -> int:
    async with api.container.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one())


async def _request_ids(api: Api) -> set[str]:
    async with api.container.engine.connect() as conn:
        return {r.id for r in await conn.execute(select(requests.c.id))}


async def test_purge_removes_only_old_final_checkpointed_chains(api: Api) -> None:
    purged = await _old_request(api)
    old_pending = await _old_request(api, status="pending")
    young = (await (await api.post("/v1/requests", offer())).json())["id"]
    await api.post(f"/v1/requests/{young}/cancel")
    recent_event = await _old_request(api)
    async with api.container.engine.begin() as conn:  # a late click on an old card, say
        await append_event(conn, chain_id=recent_event, kind="click_refused", actor="slack:U9", data={})
    in_flight = await _old_request(api, outbox_status="pending")
    await _checkpoint(api)
    unsealed = await _old_request(api)  # old, but written after the last checkpoint
    events_of_purged = await _count(api, audit_events, audit_events.c.chain_id == purged)
    other_chains = await _count(api, audit_events, audit_events.c.chain_id.notlike("req_%"))

    batch = await _purge(api)

    assert (batch.chains, batch.events, batch.broken) == (1, events_of_purged, [])
    assert batch.rows == {
        "requests": 1,
        "decisions": 1,
        "slack_messages": 1,
        "slack_clicks": 1,
        "delivery_attempts": 1,
        "outbox": 1,
        "idempotency_keys": 1,
        "step_up_intents": 1,
    }
    assert await _request_ids(api) == {old_pending, young, recent_event, in_flight, unsealed}
    for table in REQUEST_TABLES:
        assert await _count(api, table, table.c.request_id == purged) == 0, table.name
        assert await _count(api, table, table.c.request_id == unsealed) == 1, table.name
    assert await _count(api, audit_events, audit_events.c.chain_id == purged) == 0
    assert await _count(api, chain_heads, chain_heads.c.chain_id == purged) == 0
    # Non-request chains stay (the retention chain gained the purge's own event).
    assert await _count(api, audit_events, audit_events.c.chain_id.notlike("req_%")) == other_chains + 1
    assert (
        await _count(api, audit_purged_events, audit_purged_events.c.chain_id == purged) == events_of_purged
    )
    async with api.container.engine.connect() as conn:
        [event] = (
            await conn.execute(select(audit_events).where(audit_events.c.chain_id == "retention"))
        ).all()
    assert (event.kind, event.data["purge"], event.data["chains"]) == ("retention_purged", 1, 1)
    assert await _verify(api) == (None, None)


async def test_verify_passes_after_a_cli_purge_against_a_checkpoint_exported_before(
    api: Api, database_url: str, tmp_path: Path
) -> None:
    old = [await _old_request(api), await _old_request(api, status="rejected")]
    young = (await (await api.post("/v1/requests", offer())).json())["id"]
    exported = tmp_path / "checkpoint.json"
    made = await run_cli(database_url, "audit", "checkpoint", "--export", str(exported))
    assert made.returncode == 0, made.stderr

    result = await run_cli(database_url, "retention", "purge", "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["requests"], report["chains"], report["purges"], report["dry_run"]) == (2, 2, [1], False)
    assert report["retention_days"] == RETENTION_DAYS
    assert await _request_ids(api) == {young}
    verified = await run_cli(database_url, "audit", "verify", "--checkpoint", str(exported), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["ok"] is True
    assert await _count(api, audit_events, audit_events.c.chain_id.in_(old)) == 0


async def test_dry_run_removes_nothing_and_a_second_purge_is_a_no_op(api: Api, database_url: str) -> None:
    await _old_request(api)
    await _old_request(api, status="pending")
    await _checkpoint(api)
    before = (await _request_ids(api), await _count(api, audit_events))

    dry = await run_cli(database_url, "retention", "purge", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert (report["dry_run"], report["requests"], report["purges"], report["kept"]) == (True, 1, [], 0)
    assert report["rows"]["decisions"] == 1
    assert (await _request_ids(api), await _count(api, audit_events)) == before
    assert await _count(api, audit_purges) == 0

    first = await run_cli(database_url, "retention", "purge")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("purged 1 requests (1 audit chains, 3 events)")
    after_first = (await _request_ids(api), await _count(api, audit_events))
    second = json.loads((await run_cli(database_url, "retention", "purge", "--json")).stdout)
    assert (second["requests"], second["events"], second["purges"]) == (0, 0, [])
    assert (await _request_ids(api), await _count(api, audit_events)) == after_first
    assert await _count(api, audit_purges) == 1


async def test_nothing_is_purged_before_any_checkpoint_or_with_too_short_a_retention(api: Api) -> None:
    old = await _old_request(api)
    batch = await _purge(api)
    assert (batch.chains, batch.checkpoint_number) == (0, None)
    assert old in await _request_ids(api)
    key = api.container.checkpoint_key
    async with api.container.engine.begin() as conn:
        with pytest.raises(InvalidInput, match="at least 365 days"):
            await purge_boundary(conn, dt.timedelta(days=364))
        with pytest.raises(InvalidInput, match="at least 400 days ago"):
            await purge_batch(
                conn,
                boundary=await db_now(conn) - dt.timedelta(days=30),
                retention_days=RETENTION_DAYS,
                sign=key.sign,
                verify=key.verify,
                key_id=key.key_id,
            )


async def test_a_tampered_old_chain_is_kept_as_evidence(api: Api, database_url: str) -> None:
    tampered, intact = await _old_request(api), await _old_request(api)
    await _checkpoint(api)
    async with api.container.engine.begin() as conn:
        await _superuser(conn)
        await conn.execute(
            audit_events.update()
            .where(audit_events.c.chain_id == tampered, audit_events.c.seq == 2)
            .values(actor="mallory")
        )
    result = await run_cli(database_url, "retention", "purge")
    assert result.returncode == 1, result.stderr
    assert f"WARNING: 1 chains do not verify and were kept as evidence: {tampered}" in result.stdout
    assert await _request_ids(api) == {tampered}
    assert intact not in await _request_ids(api)
    brk, _problem = await _verify(api)
    assert brk == f"{tampered}@2: event content does not match its hash"


async def test_batches_continue_where_the_last_one_stopped(api: Api) -> None:
    for _ in range(3):
        await _old_request(api)
    await _checkpoint(api)
    first = await _purge(api, limit=2)
    assert (first.chains, first.candidates, first.purge_number) == (2, 2, 1)
    second = await _purge(api, limit=2)
    assert (second.chains, second.purge_number) == (1, 2)
    assert await _request_ids(api) == set()
    assert await _verify(api) == (None, None)


async def _setup_purged(api: Api) -> dict[str, str]:
    """One purged old chain and, checkpointed with it, one young chain that stays."""
    ids = {"purged": await _old_request(api)}
    ids["young"] = (await (await api.post("/v1/requests", offer())).json())["id"]
    await api.post(f"/v1/requests/{ids['young']}/cancel")
    await _checkpoint(api)
    assert (await _purge(api)).chains == 1
    assert await _verify(api) == (None, None)
    return ids


TAMPERING = {
    "edit_surviving_event": (
        ["UPDATE audit_events SET actor = 'mallory' WHERE chain_id = :young AND seq = 2"],
        "chain",
        "event content does not match its hash",
    ),
    "reorder_surviving_events": (
        [
            "UPDATE audit_events SET seq = 1000 WHERE chain_id = :young AND seq = 2",
            "UPDATE audit_events SET seq = 2 WHERE chain_id = :young AND seq = 3",
            "UPDATE audit_events SET seq = 3 WHERE chain_id = :young AND seq = 1000",
        ],
        "chain",
        "prev_hash does not match the event before it",
    ),
    "delete_chain_not_purged": (
        [
            "DELETE FROM audit_events WHERE chain_id = :young",
            "DELETE FROM chain_heads WHERE chain_id = :young",
        ],
        "checkpoint",
        "3 events it covers were removed",
    ),
    "pass_a_deleted_chain_off_as_purged": (
        [
            "INSERT INTO audit_purged_events (event_id, purge_number, chain_id, seq, created_at, hash) "
            "SELECT id, 1, chain_id, seq, created_at, hash FROM audit_events WHERE chain_id = :young",
            "DELETE FROM audit_events WHERE chain_id = :young",
            "DELETE FROM chain_heads WHERE chain_id = :young",
        ],
        "checkpoint",
        "purge 1: event",  # younger than the boundary (and the digest would not match either)
    ),
    "edit_a_purged_hash": (
        ["UPDATE audit_purged_events SET hash = :zeros WHERE seq = 1"],
        "checkpoint",
        "purge 1: the purged events' recorded hashes were changed",
    ),
    "drop_a_purged_hash": (
        ["DELETE FROM audit_purged_events WHERE seq = 2"],
        "checkpoint",
        "purge 1: it recorded 3 events of 1 chains; 2 events of 1 chains are kept",
    ),
    "forge_the_purge_record": (
        ["UPDATE audit_purges SET boundary = purged_at"],
        "checkpoint",
        "purge 1: signature does not verify (forged or altered purge record)",
    ),
    "remove_the_purge_record": (
        ["DELETE FROM audit_purged_events", "DELETE FROM audit_purges"],
        "checkpoint",
        "3 events it covers were removed",
    ),
}


@pytest.mark.parametrize("tamper", list(TAMPERING))
async def test_tampering_after_a_purge_is_still_detected(api: Api, tamper: str) -> None:
    ids = await _setup_purged(api)
    statements, where, expected = TAMPERING[tamper]
    async with api.container.engine.begin() as conn:
        await _superuser(conn)
        for statement in statements:
            await conn.execute(text(statement), {"young": ids["young"], "zeros": "0" * 64})
    brk, problem = await _verify(api)
    found = brk if where == "chain" else problem
    assert found is not None, (brk, problem)
    assert expected in found
    if where == "chain":
        assert found.startswith(ids["young"])


async def test_two_purges_at_once_purge_each_chain_once(api: Api) -> None:
    for _ in range(4):
        await _old_request(api)
    await _checkpoint(api)
    results = await asyncio.gather(_purge(api), _purge(api))
    assert sorted(r.chains for r in results) == [0, 4]
    assert await _count(api, audit_purges) == 1
    assert await _request_ids(api) == set()
    assert await _verify(api) == (None, None)


async def test_postgres_trigger_lets_only_a_recorded_old_purge_delete(api: Api) -> None:
    ids = await _setup_purged(api)
    refused = [
        "DELETE FROM audit_events",
        "UPDATE audit_events SET actor = 'x'",
        "TRUNCATE audit_events CASCADE",
        # The purge setting alone is not enough: the young chain's hashes are not recorded.
        "SELECT set_config('approvals.purge', '1', true); DELETE FROM audit_events WHERE chain_id = :young",
        "DELETE FROM audit_purges",
        "UPDATE audit_purged_events SET hash = 'x'",
        "TRUNCATE audit_purged_events CASCADE",
    ]
    for statement in refused:
        with pytest.raises(DBAPIError, match="append-only"):
            async with api.container.engine.begin() as conn:
                for part in statement.split("; "):
                    await conn.execute(text(part), {"young": ids["young"]})
    # Recorded and flagged, but younger than 365 days: a purge record with a recent boundary fails.
    with pytest.raises(DBAPIError, match="append-only"):
        async with api.container.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO audit_purges SELECT 2, now(), now(), 400, checkpoint_number, last_event_id,"
                    " 1, 3, digest, key_id, signature FROM audit_purges WHERE number = 1"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO audit_purged_events SELECT id, 2, chain_id, seq, created_at, hash "
                    "FROM audit_events WHERE chain_id = :young"
                ),
                {"young": ids["young"]},
            )
            await conn.execute(text("SELECT set_config('approvals.purge', '2', true)"))
            await conn.execute(
                text("DELETE FROM audit_events WHERE chain_id = :young"), {"young": ids["young"]}
            )
    assert await _count(api, audit_events, audit_events.c.chain_id == ids["young"]) == 3


async def test_events_after_a_purge_of_the_newest_events_get_new_ids(api: Api) -> None:
    """Purged ids are never handed out again: an event written after the purge gets a larger id."""
    await _old_request(api)
    await _checkpoint(api)  # the old request's events are the newest in the log
    async with api.container.engine.connect() as conn:
        newest = (await conn.execute(select(func.max(audit_events.c.id)))).scalar_one()
    assert (await _purge(api)).chains == 1
    async with api.container.engine.begin() as conn:
        later = await append_event(conn, chain_id="later", kind="tick", actor="test", data={})
        [later_id] = (
            await conn.execute(select(audit_events.c.id).where(audit_events.c.chain_id == later.chain_id))
        ).scalars()
    assert later_id > newest
    await _checkpoint(api)
    assert await _verify(api) == (None, None)
