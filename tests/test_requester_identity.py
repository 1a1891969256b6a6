"""The requester is an identity, not free text (issue 16 item 2).

`on_behalf_of` must be an email address or a Slack user ID; an email is normalised (NFKC, case, +tag)
and resolved to a Slack user at intake (users.lookupByEmail on the fake Slack, over HTTP), and the
self-approval check compares identities.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.sandbox.identity_provider import CLIENT_ID, CLIENT_SECRET, DevIdentityProvider
from approvals.audit.events import verify_all
from approvals.requests.principals import NotAPrincipal, parse_requester
from approvals.tables import audit_events, decisions, requests, step_up_intents
from tests.conftest import Api, offer, start_service
from tests.eventually import eventually
from tests.slack_helpers import SlackApi, block_actions, slack_service
from tests.test_step_up import mfa_service

# Rex Recruiter (U09REC, recruiter@example.com in the fake Slack) is an approver here, so that his
# click on his own request reaches the self-approval check instead of stopping at "not an approver".
POLICIES = """
default: deny
policies:
  - action: send_offer_letter
    decision: require_approval
    approvers: {users: [U01COO, U09REC]}
    channel: C0HIRING
    expires_in: 1h
  - action: sign_contract
    decision: require_approval
    approvers: {users: [U01COO, U09REC]}
    channel: C0LEGAL
    expires_in: 1h
    requester_must_resolve: true
  - action: read_*
    decision: allow
"""

NAMING_NOBODY = {
    "display-name": "Rex Recruiter <recruiter@example.com>",
    "mailto": "mailto:recruiter@example.com",
    "mention": "<@U09REC>",
    "name": "Rex Recruiter",
    "zero-width-space": "recru\u200biter@example.com",
    "word-joiner-at-end": "recruiter@example.com\u2060",
    "variation-selector": "re\ufe0fcruiter@example.com",
    "soft-hyphen": "recruit\u00ader@example.com",
    "lowercase-id": "u09rec",
    "quoted-local-part": '"recruiter"@example.com',
}
# Addresses that reach Rex's mailbox however they are written.
REX_VARIANTS = {
    "plus-tag": "recruiter+offer@example.com",
    "uppercase": "RECRUITER@Example.COM",
    "full-width": "\uff52\uff45\uff43\uff52\uff55\uff49\uff54\uff45\uff52@example.com",
    "full-width-at-and-tag": "Recruiter+Q4\uff20example.com",
}


@pytest.fixture
async def slack(database_url: str) -> AsyncIterator[SlackApi]:
    async for api in slack_service(database_url, policies_text=POLICIES):
        yield api


async def _count(api: Api, table: Any, *where: Any) -> int:
    async with api.container.engine.connect() as conn:
        query = select(func.count()).select_from(table).where(*where)
        return int((await conn.execute(query)).scalar_one())


async def _row(api: Api, request_id: str) -> Any:
    async with api.container.engine.connect() as conn:
        return (await conn.execute(select(requests).where(requests.c.id == request_id))).one()


async def _events(api: Api, request_id: str, kind: str) -> list[dict[str, Any]]:
    async with api.container.engine.connect() as conn:
        rows = await conn.execute(
            select(audit_events.c.data)
            .where(audit_events.c.chain_id == request_id, audit_events.c.kind == kind)
            .order_by(audit_events.c.seq)
        )
        return [r.data for r in rows]


async def _wait_for_event(api: Api, request_id: str, kind: str) -> list[dict[str, Any]]:
    """Poll the chain until it holds a `kind` event (the click is processed after Slack's ack)."""
    return await eventually(lambda: _events(api, request_id, kind), what=f"a {kind} event in {request_id}")


async def _create(slack: SlackApi, on_behalf_of: str, **overrides: Any) -> dict[str, Any]:
    resp = await slack.post("/v1/requests", offer(on_behalf_of=on_behalf_of, **overrides))
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def _click(slack: SlackApi, request_id: str, user: str, channel: str = "C0HIRING") -> None:
    resp = await slack.slack(block_actions(request_id, "approve_request", user=user, channel=channel))
    assert resp.status == 200


async def _refused_as_self(slack: SlackApi, request_id: str, user: str = "U09REC") -> None:
    await _click(slack, request_id, user)
    [refused] = await _wait_for_event(slack, request_id, "click_refused")
    assert (refused["reason"], refused["user_id"]) == ("self_approval", user)
    assert await _count(slack, decisions, decisions.c.request_id == request_id) == 0


# --- intake refuses text that names nobody ---------------------------------------------------------


@pytest.mark.parametrize("text", NAMING_NOBODY.values(), ids=NAMING_NOBODY.keys())
async def test_on_behalf_of_that_is_no_email_or_slack_id_is_refused_with_422(api: Api, text: str) -> None:
    resp = await api.post("/v1/requests", offer(on_behalf_of=text))
    assert resp.status == 422, await resp.text()
    error = (await resp.json())["error"]
    assert (error["code"], error["field"]) == ("invalid_field", "on_behalf_of")
    assert "email address" in error["message"] and "Slack user ID" in error["message"]
    assert await _count(api, requests) == 0
    assert await _count(api, audit_events, audit_events.c.kind == "request_created") == 0


def test_invisible_characters_are_named_in_the_refusal_not_stripped() -> None:
    from approvals.requests.principals import NotAPrincipal, clicker_mailbox, parse_requester

    with pytest.raises(NotAPrincipal, match="U\\+200B ZERO WIDTH SPACE"):
        parse_requester("recru\u200biter@example.com")
    # The clicker side uses the same normaliser: Slack's address and the agent's compare equal.
    assert clicker_mailbox("Recruiter+x@EXAMPLE.com") == parse_requester("\uff52ecruiter@example.com").mailbox


# --- email variants are one mailbox, and its owner cannot approve ----------------------------------


@pytest.mark.parametrize("text", REX_VARIANTS.values(), ids=REX_VARIANTS.keys())
async def test_an_email_variant_of_the_requester_cannot_self_approve(slack: SlackApi, text: str) -> None:
    created = await _create(slack, text)
    assert created["on_behalf_of"] == text  # kept as sent, for display
    assert created["requester"] == {"email": "recruiter@example.com", "slack_user_id": "U09REC"}
    await _refused_as_self(slack, created["id"])
    # Somebody else still can.
    await _click(slack, created["id"], "U01COO")
    assert (await slack.final(created["id"]))["status"] == "approved"


async def test_the_mailbox_alone_refuses_self_approval_when_slack_cannot_resolve_it(slack: SlackApi) -> None:
    """Slack knows Rex by a +tag address nobody sends: lookups find no one, yet his click is his."""
    assert slack.fake is not None
    slack.fake.users["U09REC"] = {**slack.fake.users["U09REC"], "email": "Recruiter+slack@example.com"}
    created = await _create(slack, "recruiter@example.com")
    assert created["requester"] == {"email": "recruiter@example.com", "slack_user_id": None}
    assert [c.params["email"] for c in slack.fake.calls_to("users.lookupByEmail")] == [
        "recruiter@example.com"
    ]
    [event] = await _events(slack, created["id"], "request_created")
    assert event["requester"]["resolution"] == "not_found"
    await _refused_as_self(slack, created["id"])


async def test_a_slack_user_id_requester_is_stored_as_is_and_cannot_self_approve(slack: SlackApi) -> None:
    created = await _create(slack, "U09REC")
    assert created["requester"] == {"email": None, "slack_user_id": "U09REC"}
    assert slack.fake is not None and slack.fake.calls_to("users.lookupByEmail") == []
    await _refused_as_self(slack, created["id"])


async def test_a_request_stored_before_the_migration_is_checked_by_its_normalised_text(
    slack: SlackApi,
) -> None:
    created = await _create(slack, "recruiter@example.com")
    # As migration 0011 leaves an older row: free text, and no identity columns.
    async with slack.container.engine.begin() as conn:
        await conn.execute(
            update(requests)
            .where(requests.c.id == created["id"])
            .values(
                on_behalf_of="Rex Recruiter <Recruiter+offer@example.com>",
                requester_email=None,
                requester_slack_id=None,
            )
        )
    await _refused_as_self(slack, created["id"])


# --- the identity is stored, shown and chained ------------------------------------------------------


async def test_a_resolved_requester_shows_in_the_view_and_in_its_chain(slack: SlackApi) -> None:
    created = await _create(slack, "Recruiter+Offer@example.com")
    view = await (await slack.get(f"/v1/requests/{created['id']}")).json()
    assert view["on_behalf_of"] == "Recruiter+Offer@example.com"
    assert view["requester"] == {"email": "recruiter@example.com", "slack_user_id": "U09REC"}
    row = await _row(slack, created["id"])
    assert (row.requester_email, row.requester_slack_id) == ("recruiter@example.com", "U09REC")
    [event] = await _events(slack, created["id"], "request_created")
    assert event["on_behalf_of"] == "Recruiter+Offer@example.com"
    assert event["requester"] == {
        "email": "recruiter@example.com",
        "slack_user_id": "U09REC",
        "resolution": "resolved",
    }
    for in_database in (True, False):
        async with slack.container.engine.begin() as conn:
            report = await verify_all(conn, hash_in_database=in_database)
        assert report.ok, report


async def test_a_slack_outage_leaves_the_requester_unresolved_but_creates_the_request(
    slack: SlackApi,
) -> None:
    assert slack.fake is not None
    slack.fake.fail("users.lookupByEmail", times=None, error="internal_error")
    created = await _create(slack, "recruiter@example.com")
    assert created["requester"] == {"email": "recruiter@example.com", "slack_user_id": None}
    [event] = await _events(slack, created["id"], "request_created")
    assert event["requester"]["resolution"] == "unavailable"
    await _refused_as_self(slack, created["id"])  # the mailbox still identifies him


# --- requester_must_resolve --------------------------------------------------------------------------


async def test_requester_must_resolve_refuses_an_unknown_email_and_writes_nothing(slack: SlackApi) -> None:
    resp = await slack.post("/v1/requests", offer(action="sign_contract", on_behalf_of="nobody@example.com"))
    assert resp.status == 422, await resp.text()
    error = (await resp.json())["error"]
    assert (error["code"], error["field"]) == ("requester_unresolved", "on_behalf_of")
    assert "requester_must_resolve" in error["message"] and "nobody@example.com" in error["message"]
    assert await _count(slack, requests) == 0
    assert await _count(slack, audit_events, audit_events.c.kind == "request_created") == 0
    # A known one is accepted, with its Slack user.
    created = await _create(slack, "recruiter+legal@example.com", action="sign_contract")
    assert created["requester"]["slack_user_id"] == "U09REC"


async def test_requester_must_resolve_answers_503_while_slack_cannot_be_asked(slack: SlackApi) -> None:
    assert slack.fake is not None
    slack.fake.fail("users.lookupByEmail", times=None, status=500)
    resp = await slack.post(
        "/v1/requests", offer(action="sign_contract", on_behalf_of="recruiter@example.com")
    )
    assert resp.status == 503, await resp.text()
    error = (await resp.json())["error"]
    assert (error["code"], error["field"]) == ("slack_unavailable", "on_behalf_of")
    assert await _count(slack, requests) == 0


# --- the step-up path applies the same check ---------------------------------------------------------


@pytest.fixture
async def mfa(database_url: str) -> AsyncIterator[SlackApi]:
    async with (
        DevIdentityProvider() as idp,
        mfa_service(database_url, idp.issuer, CLIENT_ID, CLIENT_SECRET) as api,
    ):
        api.key = await api.add_agent("payroll-bot", ["approve_payroll"])
        yield api


async def test_a_requester_is_refused_before_any_step_up(mfa: SlackApi) -> None:
    # U01COO is coo@example.com in the fake Slack; approve_payroll needs MFA and lists U01COO.
    body = {"action": "approve_payroll", "title": "Payroll", "on_behalf_of": "\uff23OO+payroll@Example.com"}
    resp = await mfa.post("/v1/requests", body)
    assert resp.status == 201, await resp.text()
    request_id = (await resp.json())["id"]
    await _click(mfa, request_id, "U01COO", channel="C0PAY")
    [refused] = await _wait_for_event(mfa, request_id, "click_refused")
    assert refused["reason"] == "self_approval"
    assert await _count(mfa, step_up_intents, step_up_intents.c.request_id == request_id) == 0


@pytest.mark.parametrize(
    "address",
    ["r\u0435x@example.com", "rex@ex\u0430mple.com", "\u0440ex@example.com"],
    ids=["cyrillic-in-local", "cyrillic-in-domain", "cyrillic-first"],
)
def test_an_address_mixing_scripts_like_a_look_alike_is_refused(address: str) -> None:
    """NFKC folds full-width letters, not letters of another script that look the same."""
    with pytest.raises(NotAPrincipal, match="mixes letters of several scripts"):
        parse_requester(address)


@pytest.mark.parametrize(
    "address",
    ["zo\u00eb@example.com", "recruiter@b\u00fccher.example", "\u0438\u0432\u0430\u043d@example.com"],
)
def test_an_address_in_one_script_is_accepted(address: str) -> None:
    assert parse_requester(address).mailbox is not None


async def test_requester_must_resolve_without_slack_stops_the_service_at_start(database_url: str) -> None:
    """Without Slack to ask, such a rule would refuse every request: a startup error naming it."""
    from app.bootstrap import StartupError

    with pytest.raises(StartupError, match=r"'sign_contract'.*requester_must_resolve: true but Slack"):
        await start_service(database_url, policies_text=POLICIES)
