"""Verification where the log lies: PostgreSQL hashes events and checkpoints, this process decides.

The tamper cases of test_compliance run through `approvals audit verify` in both modes; these cover
what the database path must also get right: logs written before JSON columns held canonical text,
checkpoints of the older stepwise scheme, the limits past which work comes back to this process,
and that both modes always agree.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

import approvals.audit.checkpoints as checkpoints_module
from approvals.audit.checkpoints import (
    SCHEME_STEPWISE,
    checkpoint_body,
    create_checkpoint,
    verify_checkpoints,
)
from approvals.audit.events import CONTENT_CHANGED, GENESIS_HASH, NewEvent, append_events, verify_all
from approvals.audit.findings_sql import chain_findings
from approvals.audit.verification import verify_audit_log
from approvals.tables import audit_checkpoints, audit_events
from tests.conftest import Api, run_cli

UNICODE_DATA = {"name": 'Zoë "Q" Ångström', "note": "a, b: c", "nested": {"z": [1, 2.5, None, True]}}


async def _superuser(conn: AsyncConnection) -> None:
    # bypass the append-only trigger, as a superuser could
    await conn.execute(text("SET LOCAL session_replication_role = replica"))


def _set_data(where: str) -> Any:
    """UPDATE of an event's JSON text as given."""
    return text(f"UPDATE audit_events SET data = CAST(:d AS JSON) WHERE {where}")


async def _both_modes(api: Api) -> list[Any]:
    """verify_all in the database and in this process: they must always agree."""
    reports = []
    for in_database in (True, False):
        async with api.container.engine.begin() as conn:
            reports.append(await verify_all(conn, hash_in_database=in_database))
    assert reports[0] == reports[1]
    return reports


async def _write_chains(api: Api, count: int) -> list[str]:
    chains = [f"test:{i}" for i in range(count)]
    async with api.container.engine.begin() as conn:
        for chain_id in chains:
            events = [NewEvent("noted", "system", {**UNICODE_DATA, "i": i}) for i in range(3)]
            await append_events(conn, chain_id, events)
    return chains


async def test_event_data_is_stored_as_the_canonical_text_its_hash_covers(api: Api) -> None:
    [chain_id] = await _write_chains(api, 1)
    async with api.container.engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT CAST(data AS TEXT) FROM audit_events WHERE chain_id = :c AND seq = 1"),
                {"c": chain_id},
            )
        ).scalar_one()
    assert stored == json.dumps(
        {**UNICODE_DATA, "i": 0}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    [report, _] = await _both_modes(api)
    assert report.ok and report.events >= 3


async def test_events_stored_in_the_older_json_layout_still_verify_and_tampering_is_named(api: Api) -> None:
    """Rows written before JSON columns held canonical text (json.dumps' defaults: spaces, \\u escapes)
    cannot be sealed by the database; the exact path in this process decides them."""
    chains = await _write_chains(api, 3)
    async with api.container.engine.begin() as conn:
        await _superuser(conn)
        rows = (await conn.execute(select(audit_events.c.id, audit_events.c.data))).all()
        for row_id, data in rows:
            await conn.execute(_set_data("id = :id"), {"d": json.dumps(data), "id": row_id})
    [report, _] = await _both_modes(api)
    assert report.ok, report.first_break
    async with api.container.engine.begin() as conn:
        await _superuser(conn)
        await conn.execute(
            _set_data("chain_id = :c AND seq = 2"),
            {"d": json.dumps({**UNICODE_DATA, "i": 99}), "c": chains[1]},
        )
    [report, _] = await _both_modes(api)
    assert report.first_break is not None
    assert (report.first_break.chain_id, report.first_break.seq) == (chains[1], 2)
    assert report.first_break.problem == CONTENT_CHANGED


async def test_a_log_the_database_cannot_seal_is_verified_here_instead(api: Api) -> None:
    await _write_chains(api, 2)
    async with api.container.engine.begin() as conn:
        await _superuser(conn)
        await conn.execute(text("UPDATE audit_events SET data = CAST(CAST(data AS TEXT) || ' ' AS JSON)"))
    async with api.container.engine.begin() as conn:
        assert await chain_findings(conn, GENESIS_HASH, give_up_after=0) is None
        found = await chain_findings(conn, GENESIS_HASH, give_up_after=100)
    assert found is not None and found.unsealed == found.events >= 6
    [report, _] = await _both_modes(api)
    assert report.ok, report.first_break  # trailing space: the same JSON, so the same content


async def test_a_stepwise_checkpoint_from_before_the_scheme_verifies_beside_digest_ones(api: Api) -> None:
    chains = await _write_chains(api, 2)
    key = api.container.checkpoint_key
    async with api.container.engine.begin() as conn:
        await _stepwise_checkpoint(conn, key.sign, key.key_id)
    await _write_chains(api, 1)
    async with api.container.engine.begin() as conn:
        second = await create_checkpoint(conn, sign=key.sign, key_id=key.key_id, lag=dt.timedelta(0))
    assert second is not None and second["scheme"] == checkpoints_module.SCHEME_DIGEST
    for in_database in (True, False):
        verdict = await verify_audit_log(
            api.container.engine, verify=key.verify, hash_in_database=in_database
        )
        assert (verdict.ok, verdict.checkpoints) == (True, 2), verdict
    async with api.container.engine.begin() as conn:  # a whole chain under the stepwise checkpoint goes
        await _superuser(conn)
        await conn.execute(text("DELETE FROM audit_events WHERE chain_id = :c"), {"c": chains[0]})
        await conn.execute(text("DELETE FROM chain_heads WHERE chain_id = :c"), {"c": chains[0]})
    for in_database in (True, False):
        verdict = await verify_audit_log(
            api.container.engine, verify=key.verify, hash_in_database=in_database
        )
        assert verdict.chains.ok
        assert verdict.checkpoint_problem is not None
        assert verdict.checkpoint_problem.number == 1
        assert "3 events it covers were removed" in verdict.checkpoint_problem.problem


async def _stepwise_checkpoint(conn: AsyncConnection, sign: Any, key_id: str) -> None:
    """A checkpoint as the service wrote them before migration 0008: running hash step by step."""
    hashes = (await conn.execute(select(audit_events.c.hash).order_by(audit_events.c.id))).scalars().all()
    last_id = (await conn.execute(select(audit_events.c.id).order_by(audit_events.c.id.desc()))).scalar()
    running = GENESIS_HASH
    for digest in hashes:
        running = hashlib.sha256((running + digest).encode()).hexdigest()
    row: dict[str, Any] = {
        "number": 1,
        "created_at": dt.datetime.now(dt.UTC),
        "first_event_id": 0,
        "last_event_id": last_id,
        "event_count": len(hashes),
        "total_events": len(hashes),
        "running_hash": running,
        "key_id": key_id,
    }
    row["signature"] = sign(checkpoint_body(row))
    await conn.execute(insert(audit_checkpoints).values(**row, scheme=SCHEME_STEPWISE))


async def test_a_checkpoint_whose_scheme_is_changed_fails_its_signature(api: Api) -> None:
    await _write_chains(api, 1)
    key = api.container.checkpoint_key
    async with api.container.engine.begin() as conn:
        await create_checkpoint(conn, sign=key.sign, key_id=key.key_id, lag=dt.timedelta(0))
        await _superuser(conn)
        await conn.execute(text("UPDATE audit_checkpoints SET scheme = 1"))
    verdict = await verify_audit_log(api.container.engine, verify=key.verify)
    assert verdict.checkpoint_problem is not None
    assert verdict.checkpoint_problem.problem.startswith("signature does not verify")


async def test_a_checkpoint_too_large_for_the_database_is_recomputed_here(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _write_chains(api, 2)
    key = api.container.checkpoint_key
    async with api.container.engine.begin() as conn:
        await create_checkpoint(conn, sign=key.sign, key_id=key.key_id, lag=dt.timedelta(0))
    monkeypatch.setattr(checkpoints_module, "DATABASE_DIGEST_LIMIT", 1)
    async with api.container.engine.begin() as conn:
        assert await verify_checkpoints(conn, verify=key.verify) == (1, None)
        await _superuser(conn)
        await conn.execute(text("DELETE FROM audit_events WHERE id = (SELECT max(id) FROM audit_events)"))
    async with api.container.engine.begin() as conn:
        _count, problem = await verify_checkpoints(conn, verify=key.verify)
    assert problem is not None and "1 events it covers were removed" in problem.problem


async def test_the_cli_verifies_in_process_too(api: Api, database_url: str) -> None:
    await _write_chains(api, 2)
    made = await run_cli(database_url, "audit", "checkpoint", "--json")
    assert made.returncode == 0, made.stderr
    for flags in ([], ["--in-process"]):
        result = await run_cli(database_url, "audit", "verify", "--json", *flags)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert (report["ok"], report["checkpoints"]) == (True, 1)
        assert report["events"] >= 6


async def test_identifiers_with_quotes_backslashes_and_control_characters_verify(api: Api) -> None:
    """The database quotes plain identifiers itself and leaves the rest to to_json; a control
    character (which it leaves raw, unlike Python) makes a body it cannot seal, decided here."""
    async with api.container.engine.begin() as conn:
        await append_events(conn, 'odd:"quoted"\\slash', [NewEvent("noted", 'actor "q" \\ b', {"k": 1})])
        await append_events(conn, "odd:control", [NewEvent("noted\tkind", "actor\nline", {"k": 2})])
    async with api.container.engine.begin() as conn:
        found = await chain_findings(conn, GENESIS_HASH, give_up_after=100)
    assert found is not None
    assert set(found.broken) == {"odd:control"} and found.unsealed == 1
    [report, _] = await _both_modes(api)
    assert report.ok, report.first_break


async def test_a_log_broken_in_too_many_chains_is_verified_here_and_the_first_named(api: Api) -> None:
    chains = await _write_chains(api, 3)
    async with api.container.engine.begin() as conn:
        await _superuser(conn)
        await conn.execute(
            text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2 AND chain_id LIKE 'test:%'")
        )
    async with api.container.engine.begin() as conn:
        assert await chain_findings(conn, GENESIS_HASH, give_up_after=100, most_chains=2) is None
        found = await chain_findings(conn, GENESIS_HASH, give_up_after=100, most_chains=3)
    assert found is not None and set(found.broken) == set(chains)
    [report, _] = await _both_modes(api)
    assert report.first_break is not None
    assert (report.first_break.chain_id, report.first_break.seq) == (chains[0], 2)
