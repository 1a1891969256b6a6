"""Checkpoint witnesses: each checkpoint copied outside the database (a file, an HTTP endpoint, a Slack
channel), and `audit verify` failing when the database no longer holds what a witness saw: the log was
rolled back (even by someone holding the signing key) or rewritten after it was witnessed."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.config import ConfigError, load_settings
from app.container import Container
from app.delivery.webhooks import sign
from app.sandbox.slack_api import SandboxSlack
from app.witnesses import SLACK_MARKER, WitnessFile, remote_witness_kinds
from approvals.audit.checkpoints import create_checkpoint
from approvals.audit.witnessing import RECORD_TYPE, WITNESS_HTTP, queue_publication
from approvals.tables import outbox
from tests.conftest import Api, offer, run_cli, start_service, stop_service
from tests.receiver import Receiver

WITNESS_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
AUDIT_CHANNEL = "C0AUDIT"


async def _superuser(conn: AsyncConnection) -> None:
    # switch the append-only triggers off, as a superuser could
    await conn.execute(text("SET LOCAL session_replication_role = replica"))


async def _request(api: Api) -> str:
    response = await api.post("/v1/requests", offer())
    assert response.status == 201, await response.text()
    return str((await response.json())["id"])


async def _checkpoint(container: Container) -> dict[str, Any]:
    """A checkpoint over everything so far, queued for the remote witnesses in its own transaction (as
    the scheduler's job does, without its 30 s lag; a heartbeat when nothing is new)."""
    key = container.checkpoint_key
    async with container.engine.begin() as conn:
        row = await create_checkpoint(
            conn, sign=key.sign, key_id=key.key_id, lag=dt.timedelta(0), interval=dt.timedelta(0)
        )
        assert row is not None
        await queue_publication(conn, row, remote_witness_kinds(container.settings))
    return row


async def _witnessed(api: Api, tmp_path: Path, *batches: int) -> tuple[WitnessFile, list[list[str]]]:
    """A witness file, and for each batch that many new requests, a checkpoint and a catch-up."""
    witness, made = WitnessFile(tmp_path / "witness.jsonl"), []
    for count in batches:
        made.append([await _request(api) for _ in range(count)])
        await _checkpoint(api.container)
        await witness.catch_up(api.container.engine)
    return witness, made


async def _roll_back_to(container: Container, number: int, request_ids: list[str]) -> None:
    """The attack: someone with the database and the key removes the newest checkpoints and the
    requests after them, whole (rows, chains, heads), and signs a new checkpoint in their place."""
    async with container.engine.begin() as conn:
        await _superuser(conn)
        for request_id in request_ids:
            for table in ("outbox", "decisions", "slack_messages", "delivery_attempts"):
                await conn.execute(text(f"DELETE FROM {table} WHERE request_id = :r"), {"r": request_id})
            await conn.execute(text("DELETE FROM audit_events WHERE chain_id = :r"), {"r": request_id})
            await conn.execute(text("DELETE FROM chain_heads WHERE chain_id = :r"), {"r": request_id})
            await conn.execute(text("DELETE FROM requests WHERE id = :r"), {"r": request_id})
        await conn.execute(text("DELETE FROM audit_checkpoints WHERE number > :n"), {"n": number})
    await _checkpoint(container)


async def _verify(database_url: str, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
    result = await run_cli(database_url, "audit", "verify", "--json", *args, extra_env=env)
    return result.returncode, json.loads(result.stdout)


def _witness_problems(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for w in report["witnesses"] if not w["ok"]]


async def test_each_checkpoint_is_appended_to_the_witness_file(api: Api, tmp_path: Path) -> None:
    witness = WitnessFile(tmp_path / "witness.jsonl")
    await _request(api)
    first = await _checkpoint(api.container)
    assert await witness.catch_up(api.container.engine) == 1
    assert await witness.catch_up(api.container.engine) == 0  # idempotent: nothing new, nothing written
    await _request(api)
    second = await _checkpoint(api.container)
    assert await witness.catch_up(api.container.engine) == 1
    records = witness.read()
    assert [r["number"] for r in records] == [first["number"], second["number"]]
    assert records[1]["running_hash"] == second["running_hash"]
    assert records[1]["signature"] == second["signature"]
    assert all(r["type"] == RECORD_TYPE for r in records)
    assert oct(os.stat(witness.path).st_mode & 0o777) == oct(0o600)


async def test_verify_passes_with_a_witness_the_log_still_holds(
    api: Api, database_url: str, tmp_path: Path
) -> None:
    witness, _ = await _witnessed(api, tmp_path, 1, 1)
    status, report = await _verify(database_url, "--witness", str(witness.path))
    assert status == 0, report
    [checked] = [w for w in report["witnesses"] if w["source"] == f"file {witness.path}"]
    assert checked == {"source": f"file {witness.path}", "ok": True, "records": 2, "newest": 2}


async def test_a_rolled_back_and_re_signed_log_is_caught_by_the_witness(
    api: Api, database_url: str, tmp_path: Path
) -> None:
    witness, (_, later) = await _witnessed(api, tmp_path, 1, 2)
    before = witness.path.read_bytes()

    await _roll_back_to(api.container, 1, later)

    status, report = await _verify(database_url)  # without the witness, the log is consistent again
    assert _witness_problems(report) == []
    status, report = await _verify(database_url, "--witness", str(witness.path))
    assert status == 1
    [problem] = _witness_problems(report)
    assert problem["problem"]["number"] == 2
    assert "differs from the witnessed one" in problem["problem"]["problem"]
    # The service's own catch-up never writes the rolled-back log's checkpoints over the witness.
    assert await witness.catch_up(api.container.engine) == 0
    assert witness.path.read_bytes() == before


async def test_a_witnessed_checkpoint_cut_from_the_log_is_named(
    api: Api, database_url: str, tmp_path: Path
) -> None:
    witness = WitnessFile(tmp_path / "witness.jsonl")
    await _request(api)
    await _checkpoint(api.container)
    later = await _request(api)
    await _checkpoint(api.container)
    await witness.catch_up(api.container.engine)
    async with api.container.engine.begin() as conn:  # cut back to checkpoint 1, nothing re-signed
        await _superuser(conn)
        await conn.execute(text("DELETE FROM audit_events WHERE chain_id = :r"), {"r": later})
        await conn.execute(text("DELETE FROM audit_checkpoints WHERE number > 1"))
    status, report = await _verify(database_url, "--witness", str(witness.path))
    assert status == 1
    [problem] = _witness_problems(report)
    assert problem["problem"]["number"] == 2
    assert "no longer in the database" in problem["problem"]["problem"]


async def test_an_altered_witness_copy_is_told_apart_from_a_rolled_back_log(
    api: Api, database_url: str, tmp_path: Path
) -> None:
    witness, _ = await _witnessed(api, tmp_path, 1)
    record = json.loads(witness.path.read_text())
    record["total_events"] += 1
    witness.path.write_text(json.dumps(record) + "\n")
    status, report = await _verify(database_url, "--witness", str(witness.path))
    assert status == 1
    [problem] = _witness_problems(report)
    assert "does not carry this service's signature" in problem["problem"]["problem"]


@pytest.mark.parametrize("content", ["not json\n", '{"type": "something else"}\n', '{"type": "x"'])
async def test_a_witness_file_that_is_not_one_fails_verify_with_its_line(
    api: Api, database_url: str, tmp_path: Path, content: str
) -> None:
    await _request(api)
    await _checkpoint(api.container)
    path = tmp_path / "witness.jsonl"
    path.write_text(content)
    status, report = await _verify(database_url, "--witness", str(path))
    if content.endswith("\n"):
        assert status == 1
        [problem] = _witness_problems(report)
        assert problem["error"].startswith(f"{path}:1: ")
    else:  # a last line cut short by a crash is not a record yet
        assert status == 0
        [checked] = [w for w in report["witnesses"] if w["source"] == f"file {path}"]
        assert checked["records"] == 0


async def test_a_named_witness_file_that_is_missing_fails_verify(api: Api, database_url: str) -> None:
    status, report = await _verify(database_url, "--witness", "/nonexistent/witness.jsonl")
    assert status == 1
    [problem] = _witness_problems(report)
    assert problem["error"] == "no witness file at /nonexistent/witness.jsonl"


async def test_verify_checks_the_configured_witness_file_by_default(
    api: Api, database_url: str, tmp_path: Path
) -> None:
    witness, _ = await _witnessed(api, tmp_path, 1)
    async with api.container.engine.begin() as conn:
        await _superuser(conn)
        await conn.execute(text("DELETE FROM audit_checkpoints"))
    status, report = await _verify(database_url, APPROVALS_CHECKPOINT_WITNESS_FILE=str(witness.path))
    assert status == 1
    [problem] = _witness_problems(report)
    assert problem["source"] == f"file {witness.path}"
    assert problem["problem"]["number"] == 1


async def test_the_scheduler_job_brings_the_witness_file_up_to_date(
    database_url: str, tmp_path: Path
) -> None:
    """The file is caught up at every tick, also with checkpoints another replica wrote."""
    from app.scheduler import checkpoint_job

    path = tmp_path / "var" / "witness.jsonl"
    container, server = await start_service(database_url, checkpoint_witness_file=str(path))
    try:
        assert container.witness_file is not None and container.witness_file.path == path
        key = container.checkpoint_key
        async with container.engine.begin() as conn:  # "another replica": no witness of its own
            await create_checkpoint(conn, sign=key.sign, key_id=key.key_id, lag=dt.timedelta(0))
        await checkpoint_job(container)
        assert [r["number"] for r in WitnessFile(path).read()][:1] == [1]
    finally:
        await stop_service(container, server)


@pytest.fixture
async def http_witness(database_url: str) -> AsyncIterator[tuple[Api, Receiver]]:
    receiver = await Receiver().start()
    container, server = await start_service(
        database_url,
        checkpoint_witness_url=receiver.url("/witness"),
        checkpoint_witness_secret=WITNESS_SECRET,
    )
    try:
        async with ClientSession() as session:
            api = Api(session=session, base=str(server.make_url("")), key="", container=container)
            api.key = await api.add_agent("hiring-bot", ["send_offer_letter"])
            yield api, receiver
    finally:
        await stop_service(container, server)
        await receiver.stop()


async def test_the_http_witness_receives_each_checkpoint_signed_and_retried(
    http_witness: tuple[Api, Receiver], database_url: str, tmp_path: Path
) -> None:
    api, receiver = http_witness
    container = api.container
    await _request(api)
    receiver.statuses = [503]  # the witness is down for the first attempt
    row = await _checkpoint(container)
    await container.dispatcher.run_until_idle()
    assert len(receiver.received) == 1
    async with container.engine.begin() as conn:  # bring the retry forward instead of waiting for it
        await conn.execute(
            update(outbox)
            .where(outbox.c.kind == WITNESS_HTTP)
            .values(next_attempt_at=dt.datetime.now(dt.UTC))
        )
    await container.dispatcher.run_until_idle()
    received = await receiver.wait_for(2)
    first, second = received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # one delivery, retried
    headers = second.headers
    expected = sign(WITNESS_SECRET, headers["webhook-id"], int(headers["webhook-timestamp"]), second.body)
    assert headers["webhook-signature"] == expected
    body = json.loads(second.body)
    assert body["type"] == "audit.checkpoint"
    assert body["data"]["number"] == row["number"]
    assert body["data"]["signature"] == row["signature"]
    # What the receiver kept is a witness an auditor can hand to verify.
    kept = tmp_path / "kept.jsonl"
    kept.write_text(json.dumps(body["data"]) + "\n")
    status, report = await _verify(database_url, "--witness", str(kept))
    assert status == 0, report
    async with container.engine.begin() as conn:
        await _superuser(conn)
        await conn.execute(text("DELETE FROM audit_checkpoints"))
    status, report = await _verify(database_url, "--witness", str(kept))
    assert status == 1 and _witness_problems(report)[0]["problem"]["number"] == row["number"]


async def test_the_slack_witness_posts_each_checkpoint_and_verify_reads_the_channel(
    database_url: str,
) -> None:
    async with SandboxSlack() as fake:
        container, server = await start_service(
            database_url,
            slack_bot_token="xoxb-test",
            slack_signing_secret="s" * 32,
            slack_api_url=fake.api_url,
            checkpoint_witness_slack_channel=AUDIT_CHANNEL,
        )
        try:
            async with ClientSession() as session:
                api = Api(session=session, base=str(server.make_url("")), key="", container=container)
                api.key = await api.add_agent("hiring-bot", ["send_offer_letter"])
                await _request(api)
                await _checkpoint(container)
                later = await _request(api)
                second = await _checkpoint(container)
                await container.dispatcher.run_until_idle()
            messages = fake.messages_in(AUDIT_CHANNEL)
            assert len(messages) == 2
            assert all(m["text"].startswith(SLACK_MARKER) for m in messages)
            # Someone else in the channel posts a look-alike record: it is not the bot's, so not read.
            fake.messages[AUDIT_CHANNEL].append(
                {
                    "type": "message",
                    "user": "U09REC",
                    "ts": "9999999999.000100",
                    "text": f"{SLACK_MARKER} 9: ```{{}}```",
                }
            )
            slack_env = {
                "SLACK_BOT_TOKEN": "xoxb-test",
                "SLACK_SIGNING_SECRET": "s" * 32,
                "SLACK_API_URL": fake.api_url,
            }
            status, report = await _verify(database_url, "--witness-slack", AUDIT_CHANNEL, **slack_env)
            assert status == 0, report
            [checked] = [w for w in report["witnesses"] if w["source"] == f"Slack channel {AUDIT_CHANNEL}"]
            assert checked["records"] == 2

            await _roll_back_to(container, 1, [later])
            status, report = await _verify(database_url, "--witness-slack", AUDIT_CHANNEL, **slack_env)
            assert status == 1
            [problem] = _witness_problems(report)
            assert problem["problem"]["number"] == second["number"]
            # Configured, the channel is checked without being named.
            status, report = await _verify(
                database_url, **slack_env, APPROVALS_CHECKPOINT_WITNESS_SLACK_CHANNEL=AUDIT_CHANNEL
            )
            assert status == 1 and _witness_problems(report)[0]["source"] == f"Slack channel {AUDIT_CHANNEL}"
        finally:
            await stop_service(container, server)


def test_witness_settings_are_checked_at_start(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "checkpoint.key"
    settings = load_settings(checkpoint_key_file=key_file)
    assert settings.witness_file_path == tmp_path / "keys" / "checkpoint-witness.jsonl"  # on, beside the key
    assert load_settings(checkpoint_witness_file="off").witness_file_path is None
    with pytest.raises(ConfigError, match="APPROVALS_CHECKPOINT_WITNESS_SECRET: required"):
        load_settings(checkpoint_witness_url="https://witness.example.com/in")
    with pytest.raises(ConfigError, match="APPROVALS_CHECKPOINT_WITNESS_SECRET: must be whsec_"):
        load_settings(checkpoint_witness_url="https://witness.example.com/in", checkpoint_witness_secret="x")
    with pytest.raises(
        ConfigError, match="APPROVALS_CHECKPOINT_WITNESS_SLACK_CHANNEL: must be a Slack channel ID"
    ):
        load_settings(checkpoint_witness_slack_channel="#audit")
    with pytest.raises(ConfigError, match="SLACK_BOT_TOKEN: required"):
        load_settings(checkpoint_witness_slack_channel=AUDIT_CHANNEL)


async def test_a_line_torn_by_a_crash_is_dropped_before_the_next_append(api: Api, tmp_path: Path) -> None:
    witness, _ = await _witnessed(api, tmp_path, 1)
    await _request(api)
    await _checkpoint(api.container)
    with witness.path.open("ab") as handle:  # the service died half way through writing record 2
        handle.write(b'{"type": "approvals.audit_checkpoint", "number": 2, "runn')
    assert [r["number"] for r in witness.read()] == [1]  # a torn line is not a record
    assert await witness.catch_up(api.container.engine) == 1
    assert [r["number"] for r in witness.read()] == [1, 2]


async def test_an_unwritable_witness_file_is_reported_and_does_not_stop_the_job(
    api: Api, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    witness = WitnessFile(blocker / "witness.jsonl")
    await _request(api)
    await _checkpoint(api.container)
    assert await witness.catch_up(api.container.engine) == 0


async def test_the_http_witness_url_is_never_shown_whole(
    http_witness: tuple[Api, Receiver], database_url: str
) -> None:
    """Its path may carry a token: logs, delivery records and verify show scheme, host and port only."""
    api, receiver = http_witness
    await _request(api)
    await _checkpoint(api.container)
    await api.container.dispatcher.run_until_idle()
    await receiver.wait_for(1)
    async with api.container.engine.connect() as conn:
        targets = [r.target for r in await conn.execute(text("SELECT target FROM delivery_attempts"))]
    assert targets and all(t is not None and "/witness" not in t for t in targets)
    url = api.container.settings.checkpoint_witness_url
    assert url is not None
    status, report = await _verify(
        database_url, APPROVALS_CHECKPOINT_WITNESS_URL=url, APPROVALS_CHECKPOINT_WITNESS_SECRET=WITNESS_SECRET
    )
    assert status == 0, report
    assert "/witness" not in json.dumps(report)


async def test_what_the_http_witness_received_can_be_verified_as_it_came(
    http_witness: tuple[Api, Receiver], database_url: str, tmp_path: Path
) -> None:
    api, receiver = http_witness
    await _request(api)
    await _checkpoint(api.container)
    await api.container.dispatcher.run_until_idle()
    [received] = await receiver.wait_for(1)
    kept = tmp_path / "received.jsonl"
    kept.write_bytes(received.body + b"\n")  # the envelope {"type": "audit.checkpoint", "data": …}
    status, report = await _verify(database_url, "--witness", str(kept))
    assert status == 0, report
    assert next(w for w in report["witnesses"] if w["source"] == f"file {kept}")["records"] == 1
