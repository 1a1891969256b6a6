"""`approvals requests list|show|cancel`: an operator finds a request, reads it, and withdraws it, the
agent hearing back and the audit log naming the operator, while the service runs."""

from __future__ import annotations

import json

from sqlalchemy import select

from approvals.tables import audit_events
from tests.conftest import Api, offer, run_cli
from tests.receiver import Receiver


async def test_list_show_and_cancel_as_an_operator(
    cb_api: Api, database_url: str, receiver: Receiver
) -> None:
    first = await (await cb_api.post("/v1/requests", offer(title="Offer for A. First"))).json()
    second = await (
        await cb_api.post("/v1/requests", offer(title="Offer for B. Second", callback_url=receiver.url()))
    ).json()
    allowed = await (await cb_api.post("/v1/requests", offer(action="read_calendar", title="Read"))).json()

    listed = await run_cli(database_url, "requests", "list", "--status", "pending", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)] == [first["id"], second["id"]]
    assert allowed["status"] == "approved"
    text = await run_cli(database_url, "requests", "list", "--agent", "cb-bot", "--limit", "1")
    assert text.stdout.splitlines() == [text.stdout.splitlines()[0]] and first["id"] in text.stdout

    shown = await run_cli(database_url, "requests", "show", second["id"])
    assert (
        shown.returncode == 0
        and "Offer for B. Second" in shown.stdout
        and "status:       pending" in shown.stdout
    )

    cancelled = await run_cli(
        database_url,
        "requests",
        "cancel",
        second["id"],
        "--reason",
        "duplicate of an earlier offer",
        "--json",
    )
    assert cancelled.returncode == 0, cancelled.stderr
    view = json.loads(cancelled.stdout)
    assert (
        view["status"] == "cancelled"
        and view["reason"] == "cancelled by an operator: duplicate of an earlier offer"
    )
    # The agent hears it like any final state, and the audit log names who did it.
    await cb_api.container.dispatcher.run_until_idle()
    (delivery,) = await receiver.wait_for(1)
    assert json.loads(delivery.body)["type"] == "request.cancelled"
    async with cb_api.container.engine.connect() as conn:
        actor, data = (
            await conn.execute(
                select(audit_events.c.actor, audit_events.c.data).where(
                    audit_events.c.chain_id == second["id"], audit_events.c.kind == "request_cancelled"
                )
            )
        ).one()
    assert actor.startswith("operator:") and "@" in actor
    assert data == {"decided_by": "system", "reason": "duplicate of an earlier offer"}
    assert (await run_cli(database_url, "audit", "verify")).returncode == 0


async def test_cancel_refuses_what_it_cannot_do_in_one_line(cb_api: Api, database_url: str) -> None:
    created = await (await cb_api.post("/v1/requests", offer())).json()
    assert (
        await run_cli(database_url, "requests", "cancel", created["id"], "--reason", "first")
    ).returncode == 0
    again = await run_cli(database_url, "requests", "cancel", created["id"], "--reason", "again")
    assert again.returncode == 1 and again.stderr.strip() == "error: request is already cancelled"
    missing = await run_cli(database_url, "requests", "cancel", "req_" + "0" * 24, "--reason", "x")
    assert missing.returncode == 1 and "no request" in missing.stderr
    blank = await run_cli(database_url, "requests", "cancel", created["id"], "--reason", "   ")
    assert blank.returncode == 1 and "say why" in blank.stderr
    unknown = await run_cli(database_url, "requests", "list", "--status", "done")
    assert unknown.returncode == 2 and "unknown status 'done'" in unknown.stderr
    assert (await run_cli(database_url, "requests", "show", "req_nope")).returncode == 1
