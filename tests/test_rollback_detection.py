"""A rolled-back audit log no longer verifies as OK (issue 16, item 1, all but the witnesses).

The attack: delete the newest checkpoints, every event after the last one left, and set the chain
heads back to the surviving events. Chains and checkpoints alone then verify; what gives it away is
the rest of the service's state (request rows, decisions, outcomes, which no event covers any more)
and the time: checkpoints are written every interval even when nothing happens (heartbeats), so a
missing stretch shows as a gap. Everything here runs through the real CLI or the real domain
functions, tampering as a superuser would (append-only triggers off).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.database import build_engine
from approvals.audit.checkpoints import SCHEME_DIGEST, checkpoint_body, create_checkpoint, latest_checkpoint
from approvals.audit.consistency import check_consistency
from approvals.audit.events import GENESIS_HASH, NewEvent, append_events
from approvals.audit.retention import purge_batch, purge_boundary
from approvals.audit.verification import verify_audit_log
from approvals.db import db_now
from approvals.requests.decisions import Click, Clicker, record_click
from approvals.requests.use_cases import expire_due_requests
from approvals.tables import agents, audit_checkpoints, decisions, requests
from tests.conftest import Api, offer, run_cli, start_service, stop_service
from tests.eventually import eventually

COO = Clicker("U01COO", "T0TEAM", "Cora Coo", "coo@example.com")
CFO = Clicker("U02CFO", "T0TEAM", "Finn Cfo", "cfo@example.com")
RETENTION_DAYS = 400


async def _superuser(conn: AsyncConnection) -> None:
    # bypass the append-only triggers, as a superuser could
    await conn.execute(text("SET LOCAL session_replication_role = replica"))


async def _verify(database_url: str, *flags: str) -> tuple[int, dict[str, Any]]:
    result = await run_cli(database_url, "audit", "verify", "--json", *flags)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


async def _checkpoint(api: Api, *, interval: dt.timedelta | None = None) -> dict[str, Any] | None:
    key = api.container.checkpoint_key
    async with api.container.engine.begin() as conn:
        return await create_checkpoint(
            conn, sign=key.sign, key_id=key.key_id, lag=dt.timedelta(0), interval=interval
        )


async def _create(api: Api, body: dict[str, Any]) -> str:
    resp = await api.post("/v1/requests", body)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def _click(api: Api, request_id: str, choice: str, who: Clicker, ts: str) -> None:
    async with api.container.engine.begin() as conn:
        await record_click(conn, Click(request_id, choice, who, ts))  # type: ignore[arg-type]


async def _outcome(api: Api, request_id: str, ref: str) -> None:
    resp = await api.post(f"/v1/requests/{request_id}/outcome", {"status": "succeeded", "external_ref": ref})
    assert resp.status == 200, await resp.text()


async def _roll_back_to(api: Api, number: int) -> None:
    """The attack: drop every checkpoint after `number` and every event after it, and set each chain's
    head back to its last surviving event (a chain with none left loses its head)."""
    async with api.container.engine.begin() as conn:
        await _superuser(conn)
        last_id = (
            await conn.execute(
                select(audit_checkpoints.c.last_event_id).where(audit_checkpoints.c.number == number)
            )
        ).scalar_one()
        await conn.execute(text("DELETE FROM audit_checkpoints WHERE number > :n"), {"n": number})
        await conn.execute(text("DELETE FROM audit_events WHERE id > :id"), {"id": last_id})
        await conn.execute(
            text("DELETE FROM chain_heads WHERE chain_id NOT IN (SELECT DISTINCT chain_id FROM audit_events)")
        )
        await conn.execute(
            text(
                "UPDATE chain_heads SET"
                " seq = (SELECT max(e.seq) FROM audit_events e WHERE e.chain_id = chain_heads.chain_id),"
                " hash = (SELECT e.hash FROM audit_events e WHERE e.chain_id = chain_heads.chain_id"
                " ORDER BY e.seq DESC LIMIT 1)"
            )
        )


def _messages(report: dict[str, Any], request_id: str) -> str:
    return " | ".join(f["message"] for f in report["findings"] if f.get("request_id") == request_id)


async def test_the_rollback_attack_fails_verify_naming_a_request_with_no_chain(
    api: Api, database_url: str
) -> None:
    decided = await _create(api, offer())
    assert await _checkpoint(api) is not None  # checkpoint 1: `decided` still pending
    await _click(api, decided, "approve", COO, "1700000000.000100")
    await _outcome(api, decided, "offer-1")
    newer = await _create(api, offer(title="Created after checkpoint 1"))
    assert await _checkpoint(api) is not None  # checkpoint 2: covers all of that

    await _roll_back_to(api, 1)

    for mode in ([], ["--in-process"]):
        code, report = await _verify(database_url, *mode)
        # The chains and the checkpoints left are consistent: this is what used to say OK...
        assert "first_break" not in report and "checkpoint_problem" not in report, report
        assert report["checkpoints"] == 1
        # ...but the rows the removed events covered are still there, and nothing covers them.
        assert (code, report["ok"]) == (1, False), report
        assert "has no audit chain (no request_created event)" in _messages(report, newer)
        about_decided = _messages(report, decided)
        assert "status is 'approved' but its chain says 'pending'" in about_decided
        assert "decision by U01COO (approve) has no decision_recorded event" in about_decided
        assert "an outcome ('succeeded') is stored but its chain records none" in about_decided
        assert all(f["fails"] for f in report["findings"] if f.get("request_id"))
    human = await run_cli(database_url, "audit", "verify")
    assert human.returncode == 1
    assert human.stdout.startswith("BROKEN: request "), human.stdout
    assert f"FAILED: request {newer}: the request row has no audit chain" in human.stdout


async def test_an_edited_status_approver_outcome_payload_hash_or_requester_is_reported(api: Api) -> None:
    names = ("status", "approver", "outcome", "payload", "requester", "same")
    ids = {name: await _create(api, offer()) for name in names}
    for name, request_id in ids.items():
        await _click(api, request_id, "approve", COO, f"1700000000.{len(name):06d}")
    for name in ("outcome", "same"):
        await _outcome(api, ids[name], f"ref-{name}")
    gone = await _create(api, offer(title="Its row is deleted, its chain stays"))
    async with api.container.engine.begin() as conn:
        before = await check_consistency(conn)
        assert before.ok, before.problems
        r, d = requests.c, decisions.c
        await conn.execute(requests.update().where(r.id == ids["status"]).values(status="rejected"))
        await conn.execute(
            decisions.update().where(d.request_id == ids["approver"]).values(approver_id="U0MALLORY")
        )
        await conn.execute(
            requests.update().where(r.id == ids["outcome"]).values(outcome_external_ref="ref-forged")
        )
        await conn.execute(requests.update().where(r.id == ids["payload"]).values(payload_sha256="0" * 64))
        # Blanking the requester would let them approve their own request: the chain says who it is.
        await conn.execute(
            requests.update()
            .where(r.id == ids["requester"])
            .values(requester_email=None, requester_slack_id=None)
        )
        await conn.execute(text("DELETE FROM outbox WHERE request_id = :id"), {"id": gone})
        await conn.execute(requests.delete().where(r.id == gone))

    for in_database in (True, False):
        verdict = await verify_audit_log(
            api.container.engine, verify=api.container.checkpoint_key.verify, hash_in_database=in_database
        )
        assert verdict.chains.ok and verdict.checkpoint_problem is None
        assert not verdict.ok
        found = {f.request_id: f.message for f in verdict.findings}
        assert set(found) == {
            ids["status"],
            ids["approver"],
            ids["outcome"],
            ids["payload"],
            ids["requester"],
            gone,
        }
        assert "status is 'rejected' but its chain says 'approved'" in found[ids["status"]]
        assert "decision by U0MALLORY (approve) has no decision_recorded event" in found[ids["approver"]]
        assert "decision_recorded by U01COO (approve) has no decision row" in found[ids["approver"]]
        assert "ref-forged" in found[ids["outcome"]] and "ref-outcome" in found[ids["outcome"]]
        assert f"payload_sha256 is {'0' * 64}" in found[ids["payload"]]
        assert "the request row is missing" in found[gone]
        assert "'recruiter@example.com'" in found[ids["requester"]] and "differs" in found[ids["requester"]]


async def _checkpoints(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.number))
        return [dict(row) for row in rows.mappings()]


async def test_heartbeats_are_written_when_idle_and_not_doubled_by_two_replicas(
    api: Api, database_url: str
) -> None:
    key = api.container.checkpoint_key
    first = await _checkpoint(api, interval=dt.timedelta(hours=1))
    assert first is not None and first["event_count"] > 0  # the agent's registration
    other = build_engine(database_url)  # a second replica: its own pool, the same database

    async def replica(engine: AsyncEngine, interval: dt.timedelta) -> dict[str, Any] | None:
        async with engine.begin() as conn:
            return await create_checkpoint(conn, sign=key.sign, key_id=key.key_id, interval=interval)

    try:
        # Nothing new and the newest checkpoint is younger than most of an interval: nobody writes.
        hour = dt.timedelta(hours=1)
        idle = await asyncio.gather(replica(api.container.engine, hour), replica(other, hour))
        assert [*idle] == [None, None]
        # With a 1 s interval the log is soon idle long enough: exactly one replica writes a heartbeat.
        second = dt.timedelta(seconds=1)
        written: list[dict[str, Any]] = []

        async def heartbeat() -> bool:
            rows = await asyncio.gather(replica(api.container.engine, second), replica(other, second))
            written.extend(row for row in rows if row is not None)
            return bool(written)

        await eventually(heartbeat, what="a heartbeat")
    finally:
        await other.dispose()
    [beat] = written
    assert (beat["number"], beat["event_count"], beat["total_events"]) == (2, 0, first["total_events"])
    assert beat["first_event_id"] == beat["last_event_id"] == first["last_event_id"]
    assert beat["running_hash"] == hashlib.sha256(first["running_hash"].encode()).hexdigest()
    assert beat["created_at"] - first["created_at"] >= dt.timedelta(seconds=0.75)
    assert len(await _checkpoints(api.container.engine)) == 2
    # Events after a heartbeat go into the next checkpoint, which continues from it.
    await _create(api, offer())
    third = await _checkpoint(api)
    assert (
        third is not None and third["first_event_id"] == beat["last_event_id"] and third["event_count"] == 2
    )
    for in_database in (True, False):
        verdict = await verify_audit_log(
            api.container.engine, verify=key.verify, hash_in_database=in_database
        )
        assert (verdict.ok, verdict.checkpoints) == (True, 3), verdict


async def test_the_scheduler_writes_heartbeats_once_an_interval_across_replicas(
    database_url: str, tmp_path: Path
) -> None:
    """Two services with their schedulers on, idle, a 1 s checkpoint interval: a checkpoint about
    every second (events wait 30 s for one, so these are all heartbeats), never two at once."""
    for n in range(2):
        (tmp_path / f"replica{n}").mkdir()
    services = [
        await start_service(
            database_url,
            run_scheduler=True,
            checkpoint_interval_seconds=1,
            checkpoint_key_file=tmp_path / f"replica{n}" / "checkpoint.key",
        )
        for n in range(2)
    ]
    engine = services[0][0].engine
    try:

        async def four() -> bool:
            return len(await _checkpoints(engine)) >= 4

        await eventually(four, what="four checkpoints")
    finally:
        for container, server in services:
            await stop_service(container, server)
    verify_engine = build_engine(database_url)
    try:
        rows = await _checkpoints(verify_engine)
        # Each heartbeat at least most of an interval after the checkpoint before it: none doubled.
        spacing = [
            b["created_at"] - a["created_at"] for a, b in itertools.pairwise(rows) if not b["event_count"]
        ]
        assert len(spacing) >= 3 and min(spacing) >= dt.timedelta(seconds=0.75), spacing
        verdict = await verify_audit_log(
            verify_engine, verify=services[0][0].checkpoint_key.verify, interval=dt.timedelta(seconds=1)
        )
        assert verdict.chains.ok and verdict.checkpoint_problem is None
    finally:
        await verify_engine.dispose()


async def _backdated_heartbeat(api: Api, age: dt.timedelta) -> None:
    """Checkpoint 1, signed `age` ago over an empty log: as if the service had run then, and stopped."""
    key = api.container.checkpoint_key
    async with api.container.engine.begin() as conn:
        row: dict[str, Any] = {
            "number": 1,
            "created_at": await db_now(conn) - age,
            "first_event_id": 0,
            "last_event_id": 0,
            "event_count": 0,
            "total_events": 0,
            "running_hash": hashlib.sha256(GENESIS_HASH.encode()).hexdigest(),
            "key_id": key.key_id,
            "scheme": SCHEME_DIGEST,
        }
        row["signature"] = key.sign(checkpoint_body(row))
        await conn.execute(insert(audit_checkpoints).values(**row))


async def test_no_checkpoint_an_old_checkpoint_and_a_gap_are_findings_that_fail_only_when_strict(
    api: Api, database_url: str
) -> None:
    await _create(api, offer())
    code, report = await _verify(database_url)
    assert (code, report["ok"], report["newest_checkpoint"]) == (0, True, None)
    [none_yet] = report["findings"]
    assert none_yet["code"] == "no_checkpoint" and none_yet["fails"] is False
    assert none_yet["message"].startswith(
        "no checkpoint yet: the service writes the first 300 s after it starts"
    )
    assert (await _verify(database_url, "--strict"))[0] == 1

    await _backdated_heartbeat(api, dt.timedelta(hours=2))
    made = await run_cli(database_url, "audit", "checkpoint", "--json")
    assert made.returncode == 0, made.stderr
    code, report = await _verify(database_url)
    assert (code, report["ok"], report["checkpoints"]) == (0, True, 2), report
    [gap] = report["findings"]
    assert (gap["code"], gap["checkpoint"], gap["fails"]) == ("checkpoint_gap", 2, False)
    assert "passed between checkpoints 1 and 2, more than 2 checkpoint intervals of 300 s" in gap["message"]
    assert report["newest_checkpoint"]["number"] == 2 and report["newest_checkpoint"]["age_seconds"] < 300
    # A log kept before heartbeats has a gap wherever it was idle: --since judges gaps from then on.
    async with api.container.engine.connect() as conn:
        upgraded = (await db_now(conn) - dt.timedelta(hours=1)).isoformat()
    code, report = await _verify(database_url, "--since", upgraded, "--strict")
    assert (code, report["ok"], report["findings"]) == (0, True, []), report
    bad_since = await run_cli(database_url, "audit", "verify", "--since", "last week")
    assert bad_since.returncode == 2 and "--since must be an ISO 8601 date or date-time" in bad_since.stderr

    # Verified a day later (say, by an auditor after the service was shut down): the newest is too old.
    async with api.container.engine.connect() as conn:
        later = (await db_now(conn) + dt.timedelta(days=1)).isoformat()
    code, report = await _verify(database_url, "--as-of", later)
    assert (code, report["ok"]) == (0, True)
    old = next(f for f in report["findings"] if f["code"] == "checkpoint_too_old")
    assert old["checkpoint"] == 2 and "the newest checkpoint (2) is 864" in old["message"]
    assert report["newest_checkpoint"]["age_seconds"] >= 86_399
    code, report = await _verify(database_url, "--as-of", later, "--strict")
    assert (code, report["ok"], report["strict"]) == (1, False, True)
    human = await run_cli(database_url, "audit", "verify", "--as-of", later)
    assert human.returncode == 0 and human.stdout.startswith("OK: ")
    assert "WARNING: the newest checkpoint (2) is" in human.stdout and "(fails with --strict)" in human.stdout
    bad = await run_cli(database_url, "audit", "verify", "--as-of", "yesterday")
    assert bad.returncode == 2 and "--as-of must be an ISO 8601 date or date-time" in bad.stderr


async def _old_request(api: Api) -> str:
    """A request decided, approved and carried out 500 days ago, with a chain that says so."""
    rid = f"req_old{uuid.uuid4().hex[:16]}"
    async with api.container.engine.begin() as conn:
        at = await db_now(conn) - dt.timedelta(days=500)
        agent_id = (await conn.execute(select(agents.c.id).where(agents.c.name == "hiring-bot"))).scalar_one()
        payload = hashlib.sha256(rid.encode()).hexdigest()
        await conn.execute(
            requests.insert(),
            {
                "id": rid,
                "agent_id": agent_id,
                "action": "send_offer_letter",
                "title": "Old offer",
                "summary": "",
                "params": {},
                "payload_sha256": payload,
                "on_behalf_of": "recruiter@example.com",
                "links": [],
                "status": "approved",
                "decided_by": "human",
                "policy_name": "send_offer_letter",
                "policy_version_id": api.container.policies.version,
                "required_approvals": 1,
                "created_at": at,
                "expires_at": at + dt.timedelta(hours=1),
                "decided_at": at,
                "outcome_status": "succeeded",
                "outcome_detail": "",
                "outcome_external_ref": "old-1",
                "outcome_at": at,
            },
        )
        await conn.execute(
            decisions.insert(),
            {"request_id": rid, "approver_id": "U01COO", "decision": "approve", "created_at": at},
        )
        events = [
            NewEvent("request_created", "agent:hiring-bot", {"payload_sha256": payload}),
            NewEvent("policy_evaluated", "policy", {"decision": "require_approval"}),
            NewEvent("decision_recorded", "slack:U01COO", {"user_id": "U01COO", "choice": "approve"}),
            NewEvent("request_approved", "slack:U01COO", {"decided_by": "human"}),
            NewEvent(
                "outcome_recorded",
                "agent:hiring-bot",
                {"status": "succeeded", "detail": "", "external_ref": "old-1"},
            ),
        ]
        await append_events(conn, rid, events, now=at)
    return rid


async def test_an_untouched_log_with_every_kind_of_request_and_a_purge_verifies_ok(
    api: Api, database_url: str
) -> None:
    old = await _old_request(api)
    assert await _checkpoint(api) is not None
    heartbeat = await _checkpoint(api, interval=dt.timedelta(0))  # the purge relies on this one
    assert heartbeat is not None and heartbeat["event_count"] == 0
    approved = await _create(api, offer())
    await _click(api, approved, "approve", COO, "1700000000.000001")
    await _outcome(api, approved, "offer-7")
    two_needed = await _create(api, offer(action="refund_customer"))
    await _click(api, two_needed, "approve", COO, "1700000000.000002")
    await _click(api, two_needed, "reject", CFO, "1700000000.000003")
    partly = await _create(api, offer(action="refund_customer"))
    await _click(api, partly, "approve", CFO, "1700000000.000004")
    cancelled = await _create(api, offer())
    assert (await api.post(f"/v1/requests/{cancelled}/cancel")).status == 200
    allowed = await _create(api, offer(action="read_calendar"))
    await _outcome(api, allowed, "cal-1")
    await _create(api, offer(action="delete_repo"))
    expiring = await _create(api, offer(expires_in=1))

    async def expired() -> bool:
        async with api.container.engine.begin() as conn:
            return expiring in await expire_due_requests(conn)

    await eventually(expired, what="the request to expire")
    key = api.container.checkpoint_key
    async with api.container.engine.begin() as conn:
        boundary = await purge_boundary(conn, dt.timedelta(days=RETENTION_DAYS))
        batch = await purge_batch(
            conn,
            boundary=boundary,
            retention_days=RETENTION_DAYS,
            sign=key.sign,
            verify=key.verify,
            key_id=key.key_id,
        )
    assert (batch.chains, batch.checkpoint_number) == (1, 2)
    assert await _checkpoint(api) is not None  # the new requests
    assert await _checkpoint(api, interval=dt.timedelta(0)) is not None  # and a heartbeat
    async with api.container.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).where(requests.c.id == old))).scalar_one() == 0
        newest = await latest_checkpoint(conn)
    assert newest is not None and newest["event_count"] == 0

    for mode in ([], ["--in-process"], ["--strict"]):
        code, report = await _verify(database_url, *mode)
        assert (code, report["ok"], report["findings"]) == (0, True, []), report
        assert (report["requests"], report["checkpoints"]) == (7, 4)


async def test_postgres_refuses_delete_update_and_truncate_of_checkpoints(api: Api) -> None:
    assert await _checkpoint(api) is not None
    for statement in (
        "DELETE FROM audit_checkpoints",
        "UPDATE audit_checkpoints SET created_at = created_at - interval '1 day'",
        "TRUNCATE audit_checkpoints",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with api.container.engine.begin() as conn:
                await conn.execute(text(statement))
    assert len(await _checkpoints(api.container.engine)) == 1
