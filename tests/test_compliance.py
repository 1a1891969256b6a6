"""The compliance API and CLI: auditor keys, chains with filters and formats, verification of the log."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text

from app.chain_formats import compact_json
from approvals.audit.chain_json import iter_chain_texts
from approvals.audit.chains import ChainFilter, iter_chains
from approvals.identity.auditors import add_auditor_key
from approvals.requests.decisions import Click, Clicker, record_click
from approvals.tables import delivery_attempts, slack_messages
from tests.conftest import Api, offer, run_cli


async def _auditor_key(api: Api) -> str:
    async with api.container.engine.begin() as conn:
        return (await add_auditor_key(conn, name="soc2-auditor")).api_key


async def _seed(api: Api) -> dict[str, str]:
    """Requests of every kind: approved by a person, approved and denied by policy, pending, cancelled."""
    ids = {}
    ids["human"] = (await (await api.post("/v1/requests", offer())).json())["id"]
    async with api.container.engine.begin() as conn:
        clicker = Clicker("U01COO", "T0TEAM", "Cora Coo", "coo@example.com")
        await record_click(conn, Click(ids["human"], "approve", clicker, "1700000000.000100"))
    ids["allowed"] = (await (await api.post("/v1/requests", offer(action="read_calendar"))).json())["id"]
    await api.post(f"/v1/requests/{ids['allowed']}/outcome", {"status": "succeeded", "external_ref": "cal-1"})
    ids["denied"] = (await (await api.post("/v1/requests", offer(action="delete_repo"))).json())["id"]
    ids["pending"] = (await (await api.post("/v1/requests", offer())).json())["id"]
    ids["cancelled"] = (await (await api.post("/v1/requests", offer())).json())["id"]
    cancelled = await api.post(f"/v1/requests/{ids['cancelled']}/cancel")
    assert cancelled.status == 200, await cancelled.text()
    return ids


async def test_agent_keys_cannot_read_chains_and_auditor_keys_cannot_create_requests(api: Api) -> None:
    auditor = await _auditor_key(api)
    assert (await api.get("/v1/audit/chains")).status == 403
    assert (await api.post("/v1/requests", offer(), key=auditor)).status == 403
    assert (await api.get("/v1/audit/chains", key=auditor)).status == 200


async def test_a_chain_walks_from_request_to_outcome_with_identity_and_hashes(api: Api) -> None:
    ids = await _seed(api)
    auditor = await _auditor_key(api)
    chain = await (await api.get(f"/v1/audit/chains/{ids['human']}", key=auditor)).json()
    assert chain["status"] == "approved"
    assert chain["agent"]["name"] == "hiring-bot"
    assert chain["agent"]["owner"] == "hiring-bot@example.com"
    assert chain["policy"]["name"] == "send_offer_letter"
    assert chain["policy"]["approvers"] == {"users": ["U01COO", "U02CFO"], "usergroups": []}
    assert len(chain["policy"]["sha256"]) == 64
    assert chain["policy_decision"]["decision"] == "require_approval"
    assert chain["request"]["params"]["salary"] == "[redacted]"
    [decision] = chain["decisions"]
    assert decision["approver"] == {
        "id": "U01COO",
        "name": "Cora Coo",
        "email": "coo@example.com",
        "team_id": "T0TEAM",
    }
    assert [e["kind"] for e in chain["events"]] == [
        "request_created",
        "policy_evaluated",
        "decision_recorded",
        "request_approved",
    ]
    assert all(len(e["hash"]) == 64 for e in chain["events"])
    closed = await (await api.get(f"/v1/audit/chains/{ids['allowed']}", key=auditor)).json()
    assert closed["outcome"]["external_ref"] == "cal-1"
    assert (await api.get("/v1/audit/chains/req_missing", key=auditor)).status == 404


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=approved", {"human", "allowed"}),
        ("status=rejected", {"denied"}),
        ("policy=send_offer_letter", {"human", "pending", "cancelled"}),
        ("action=delete_repo", {"denied"}),
        ("approver=coo@example.com", {"human"}),
        ("approver=U01COO", {"human"}),
        ("outcome=succeeded", {"allowed"}),
        ("agent=hiring-bot&status=cancelled", {"cancelled"}),
        ("agent=nobody", set()),
        ("from=2000-01-01&to=2999-01-01", {"human", "allowed", "denied", "pending", "cancelled"}),
        ("to=2000-01-01", set()),
    ],
)
async def test_filters_select_exactly_the_matching_chains(api: Api, query: str, expected: set[str]) -> None:
    ids = await _seed(api)
    auditor = await _auditor_key(api)
    body = await (await api.get(f"/v1/audit/chains?{query}", key=auditor)).json()
    names = {name for name, request_id in ids.items() if request_id in {c["id"] for c in body["chains"]}}
    assert names == expected
    assert body["population"] == len(expected)


async def test_cursor_pagination_returns_every_chain_once(api: Api) -> None:
    ids = await _seed(api)
    auditor = await _auditor_key(api)
    seen, cursor = [], None
    while True:
        url = "/v1/audit/chains?limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = await (await api.get(url, key=auditor)).json()
        seen += [c["id"] for c in body["chains"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids.values())
    assert (await api.get("/v1/audit/chains?cursor=garbage", key=auditor)).status == 422


async def test_json_lines_and_csv_carry_the_same_population(api: Api) -> None:
    await _seed(api)
    auditor = await _auditor_key(api)
    lines = await (await api.get("/v1/audit/chains?format=jsonl", key=auditor)).text()
    assert [json.loads(line)["id"] for line in lines.splitlines()].__len__() == 5
    resp = await api.session.get(
        api.url("/v1/audit/chains"), headers={**api.headers(auditor), "Accept": "text/csv"}
    )
    assert resp.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert len(rows) == int(resp.headers["X-Population"]) == 5
    human = next(r for r in rows if r["approvers"])
    assert human["approvers"] == "Cora Coo <coo@example.com> approve"


@pytest.mark.parametrize("query", ["status=maybe", "from=yesterday", "limit=0", "format=xml", "outcome=meh"])
async def test_bad_filters_are_422(api: Api, query: str) -> None:
    auditor = await _auditor_key(api)
    assert (await api.get(f"/v1/audit/chains?{query}", key=auditor)).status == 422


async def test_cli_keys_export_and_verify(api: Api, database_url: str, tmp_path: Path) -> None:
    ids = await _seed(api)
    added = await run_cli(database_url, "keys", "add", "auditor-1", "--role", "auditor", "--json")
    assert added.returncode == 0, added.stderr
    key = json.loads(added.stdout)
    assert key["api_key"].startswith("apa_")
    out = tmp_path / "chains.jsonl"
    exported = await run_cli(
        database_url, "audit", "export", "--status", "approved", "--format", "jsonl", "--out", str(out)
    )
    assert exported.returncode == 0, exported.stderr
    assert "population: 2 chains" in exported.stderr
    assert re.search(rf"exported 2 chains as jsonl to {re.escape(str(out))} in \d+\.\d s\n$", exported.stderr)
    assert {json.loads(line)["id"] for line in out.read_text().splitlines()} == {ids["human"], ids["allowed"]}
    verified = await run_cli(database_url, "audit", "verify", "--json")
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] is True
    assert report["events"] >= 14


@pytest.mark.parametrize("mode", [[], ["--in-process"]], ids=["hashed_in_database", "in_process"])
@pytest.mark.parametrize("tamper", ["edit", "edit_data", "delete_event", "delete_chain", "reorder"])
async def test_verify_names_the_first_broken_link(
    api: Api, database_url: str, tamper: str, mode: list[str]
) -> None:
    ids = await _seed(api)
    target = ids["human"]
    statements = {
        "edit": ["UPDATE audit_events SET actor = 'mallory' WHERE chain_id = :c AND seq = 3"],
        "edit_data": ["UPDATE audit_events SET data = '[]' WHERE chain_id = :c AND seq = 2"],
        "delete_event": ["DELETE FROM audit_events WHERE chain_id = :c AND seq = 2"],
        "delete_chain": ["DELETE FROM audit_events WHERE chain_id = :c"],
        "reorder": [  # swap events 2 and 3
            "UPDATE audit_events SET seq = 1000 WHERE chain_id = :c AND seq = 2",
            "UPDATE audit_events SET seq = 2 WHERE chain_id = :c AND seq = 3",
            "UPDATE audit_events SET seq = 3 WHERE chain_id = :c AND seq = 1000",
        ],
    }[tamper]
    async with api.container.engine.begin() as conn:
        # a superuser bypassing the trigger
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            await conn.execute(text(statement), {"c": target})
    result = await run_cli(database_url, "audit", "verify", "--json", *mode)
    assert result.returncode == 1
    broken = json.loads(result.stdout)["first_break"]
    assert broken["chain_id"] == target
    assert (broken["seq"], broken["problem"]) == {
        "edit": (3, "event content does not match its hash"),
        "edit_data": (2, "event content does not match its hash"),
        "delete_event": (2, "event 2 is missing"),
        "delete_chain": (1, "the whole chain was removed"),
        "reorder": (2, "prev_hash does not match the event before it"),
    }[tamper]


async def test_refused_actions_and_policy_history_are_one_command_each(api: Api, database_url: str) -> None:
    narrow = await api.add_agent("narrow-bot", ["read_*"])
    assert (await api.post("/v1/requests", offer(), key=narrow)).status == 403
    refused = await run_cli(database_url, "audit", "events", "--kind", "action_refused", "--json")
    assert refused.returncode == 0, refused.stderr
    [event] = json.loads(refused.stdout)
    assert event["data"]["action"] == "send_offer_letter"
    assert event["actor"] == "agent:narrow-bot"
    history = await run_cli(database_url, "policies", "versions", "--json")
    [version] = json.loads(history.stdout)
    assert version["version"] == api.container.policies.version
    assert version["sha256"] == api.container.policies.sha256
    assert "@" in version["loaded_by"]


async def _superuser(conn: Any) -> None:
    await conn.execute(text("SET LOCAL session_replication_role = replica"))  # bypass the append-only trigger


async def test_signed_checkpoints_catch_a_chain_removed_with_its_head(api: Api, database_url: str) -> None:
    ids = await _seed(api)
    made = await run_cli(database_url, "audit", "checkpoint", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["number"] == 1
    clean = json.loads((await run_cli(database_url, "audit", "verify", "--json")).stdout)
    assert (clean["ok"], clean["checkpoints"]) == (True, 1)
    async with api.container.engine.begin() as conn:
        await _superuser(conn)
        await conn.execute(text("DELETE FROM audit_events WHERE chain_id = :c"), {"c": ids["denied"]})
        await conn.execute(text("DELETE FROM chain_heads WHERE chain_id = :c"), {"c": ids["denied"]})
    result = await run_cli(database_url, "audit", "verify", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert "first_break" not in report  # every remaining chain is internally consistent...
    assert report["checkpoint_problem"]["number"] == 1  # ...but the signed checkpoint saw the removal
    assert "3 events it covers were removed" in report["checkpoint_problem"]["problem"]


async def test_a_forged_checkpoint_fails_its_signature(api: Api, database_url: str) -> None:
    await _seed(api)
    await run_cli(database_url, "audit", "checkpoint")
    async with api.container.engine.begin() as conn:
        await _superuser(conn)
        await conn.execute(text("UPDATE audit_checkpoints SET total_events = total_events - 1"))
    report = json.loads((await run_cli(database_url, "audit", "verify", "--json")).stdout)
    assert report["checkpoint_problem"]["problem"].startswith("signature does not verify")


async def test_a_swapped_checkpoint_differs_from_the_exported_one(
    api: Api, database_url: str, tmp_path: Path
) -> None:
    ids = await _seed(api)
    exported = tmp_path / "checkpoint.json"
    assert (await run_cli(database_url, "audit", "checkpoint", "--export", str(exported))).returncode == 0
    # Someone with the database and the key rewrites history and re-signs it from scratch (the
    # request row goes too: verify compares every request row with its chain).
    async with api.container.engine.begin() as conn:
        await _superuser(conn)
        await conn.execute(text("DELETE FROM audit_events WHERE chain_id = :c"), {"c": ids["denied"]})
        await conn.execute(text("DELETE FROM chain_heads WHERE chain_id = :c"), {"c": ids["denied"]})
        await conn.execute(text("DELETE FROM requests WHERE id = :c"), {"c": ids["denied"]})
        await conn.execute(text("DELETE FROM audit_checkpoints"))
    await run_cli(database_url, "audit", "checkpoint")
    assert (await run_cli(database_url, "audit", "verify")).returncode == 0  # internally consistent again
    result = await run_cli(database_url, "audit", "verify", "--checkpoint", str(exported), "--json")
    assert result.returncode == 1
    assert "differs from the exported one" in json.loads(result.stdout)["checkpoint_problem"]["problem"]


async def test_postgres_writes_each_exported_chain_exactly_as_the_chain_api_builds_it(api: Api) -> None:
    """`approvals audit export` has the database write each chain's JSON; every byte
    of it must be what app.chain_formats.jsonl writes for approvals.audit.chains' dict of the chain."""
    ids = await _seed(api)
    odd = offer(
        title='Zoë\'s "offer" <b>&\\ \u2028 tab\there',
        summary="line\nbreak \x01 control",
        params={"salary": 1.5e5, "nested": {"ü": [1, None, True, "x, y: z"]}, "bank": {"iban": "DE00"}},
        links=[],
    )
    ids["odd"] = (await (await api.post("/v1/requests", odd)).json())["id"]
    async with api.container.engine.begin() as conn:
        stranger = Clicker("U0STRANGER", "T0TEAM", "Stan Ger", "stan@example.com")
        await record_click(conn, Click(ids["pending"], "approve", stranger, "1700000000.000200"))
        await record_click(
            conn, Click(ids["odd"], "reject", Clicker("U01COO", "T0TEAM", "Cora", "coo@example.com"), "1.2")
        )
        await conn.execute(
            insert(slack_messages),
            [
                {
                    "request_id": ids["human"],
                    "destination": "C0HIRING",
                    "channel": "C0HIRING",
                    "ts": "1.1",
                    "permalink": None,
                    "created_at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
                },
                {
                    "request_id": ids["human"],
                    "destination": "U01COO",
                    "channel": "D01",
                    "ts": "1.2",
                    "permalink": "https://x.slack.com/archives/D01/p12",
                    "created_at": dt.datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=dt.UTC),
                },
            ],
        )
        await conn.execute(
            insert(delivery_attempts),
            [
                {
                    "outbox_id": 1,
                    "request_id": ids["human"],
                    "kind": "callback",
                    "attempt": n,
                    "target": "https://a.example",
                    "started_at": dt.datetime(2026, 1, 2, 3, 4, 6, tzinfo=dt.UTC),
                    "latency_ms": 12,
                    "status_code": code,
                    "result": result,
                    "error": error,
                }
                for n, code, result, error in [
                    (1, 503, "retry", 'HTTP 503 "busy"'),
                    (2, 200, "delivered", None),
                ]
            ],
        )
    # Pages of two: every listing below spans several pages, and their seams must not show.
    for wanted in (ChainFilter(), ChainFilter(status="pending"), ChainFilter(policy="send_offer_letter")):
        async with api.container.engine.connect() as conn:
            built = [compact_json(chain) async for chain in iter_chains(conn, wanted, page=2)]
            written = [chain async for chain in iter_chain_texts(conn, wanted, page=2)]
            async with api.container.engine.connect() as one, api.container.engine.connect() as two:
                # as the CLI exports: pages written on two other sessions, handed out in order
                in_parallel = [
                    chain async for chain in iter_chain_texts(conn, wanted, builders=[one, two], page=2)
                ]
                # An export stopped early (pages still being written) leaves every session usable.
                stopped = iter_chain_texts(conn, wanted, builders=[one, two], page=2)
                assert await anext(stopped) == built[0]
                await stopped.aclose()
                assert [(await c.execute(text("SELECT 1"))).scalar() for c in (conn, one, two)] == [1, 1, 1]
        assert written == built
        assert in_parallel == built
    assert len(built) >= 4
    everything = "\n".join(written)
    assert "185000" not in everything and "150000.0" not in everything and "[redacted]" in everything
    assert ids["odd"] in everything and "2026-01-02T03:04:05Z" in everything
