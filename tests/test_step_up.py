"""MFA step-up end to end: signed Slack click -> held intent -> "Verify with SSO" -> a real OIDC
provider over HTTP -> callback -> verified ID token -> decision with evidence, and every way it fails.

The browser is an aiohttp session following redirects; the IdP is app/sandbox/identity_provider.py (real RS256
tokens, PKCE, single-use codes) or, for one run, the third-party `oidc-provider-mock`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import ClientSession
from sqlalchemy import func, select, update

from app.oidc.provider import OidcProvider
from app.sandbox.identity_provider import CLIENT_ID, CLIENT_SECRET, DevIdentityProvider, Login
from approvals.identity.auditors import add_auditor_key
from approvals.tables import audit_events, decisions, identity_links, step_up_intents, step_ups
from tests.conftest import TEST_POLICIES, free_port, run_cli
from tests.eventually import eventually
from tests.slack_helpers import SlackApi, block_actions, slack_service, view_submission

MFA_POLICIES = (
    TEST_POLICIES
    + """
  - action: approve_payroll
    decision: require_approval
    approvers: {users: [U01COO, U02CFO]}
    channel: C0PAY
    expires_in: 1h
    mfa: {required: true, max_age: 600, amr: [otp, hwk, mfa]}
  - action: wire_transfer
    decision: require_approval
    approvers: {users: [U01COO]}
    channel: C0PAY
    expires_in: 1h
    mfa: {required: true, max_age: 0, amr: [hwk], acr: ["urn:okta:loa:2fa:any"]}
  - action: approve_bonus
    decision: require_approval
    approvers: {usergroups: [S0PAYROLL]}
    channel: C0PAY
    expires_in: 1h
    mfa: {required: true, max_age: 600, amr: [otp, hwk, mfa]}
"""
)
COO = Login(sub="okta|coo", email="coo@example.com")


@dataclass
class Mfa:
    api: SlackApi
    idp: DevIdentityProvider
    browser: ClientSession


@contextlib.asynccontextmanager
async def mfa_service(database_url: str, issuer: str, client_id: str, secret: str) -> AsyncIterator[SlackApi]:
    """The service with Slack and an IdP. Its public URL names its port, chosen before it listens: a
    port taken meanwhile by another test process is retried with another."""
    for attempt in range(5):
        port = free_port()
        service = slack_service(
            database_url,
            policies_text=MFA_POLICIES,
            server_port=port,
            public_url=f"http://127.0.0.1:{port}",
            oidc_issuer=issuer,
            oidc_client_id=client_id,
            oidc_client_secret=secret,
        )
        try:
            api = await anext(service)
        except OSError:
            if attempt == 4:
                raise
            continue
        try:
            yield api
        finally:
            await service.aclose()
        return


@pytest.fixture
async def m(database_url: str) -> AsyncIterator[Mfa]:
    async with (
        DevIdentityProvider() as idp,
        mfa_service(database_url, idp.issuer, CLIENT_ID, CLIENT_SECRET) as api,
    ):
        api.key = await api.add_agent("payroll-bot", ["approve_payroll", "wire_transfer", "approve_bonus"])
        async with ClientSession() as browser:
            yield Mfa(api, idp, browser)


async def _request(m: Mfa, action: str = "approve_payroll") -> str:
    body = {
        "action": action,
        "title": f"{action} for November",
        "params": {"total": 1200000},
        "on_behalf_of": "payroll@example.com",
    }
    resp = await m.api.post("/v1/requests", body)
    assert resp.status == 201, await resp.text()
    request_id = str((await resp.json())["id"])

    # The card is out before anyone clicks it, as in Slack: the card updates below then have a message.
    async def posted() -> list[Any]:
        if not (rows := await m.api.posted(request_id)):
            await m.api.container.dispatcher.run_until_idle()
        return rows

    await eventually(posted, what="the card to be posted")
    return request_id


async def _click(m: Mfa, request_id: str, user: str = "U01COO", choice: str = "approve_request") -> None:
    resp = await m.api.slack(block_actions(request_id, choice, user=user, channel="C0PAY"))
    assert resp.status == 200


async def _held_link(m: Mfa, request_id: str, user: str = "U01COO", nth: int = 1) -> str:
    """Click Approve and return the step-up link the approver is shown."""
    await _click(m, request_id, user)
    assert m.api.fake is not None
    calls = await m.api.fake.wait_for_calls("chat.postEphemeral", nth)
    call = calls[nth - 1]
    assert call.params["user"] == user
    [button] = [e for b in call.params["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert button["text"]["text"] == "Verify with SSO"
    url = str(button["url"])
    assert url.startswith(m.api.base + "/auth/step-up/")
    return url


async def _sign_in(m: Mfa, url: str) -> tuple[int, str]:
    async with m.browser.get(url) as resp:
        return resp.status, await resp.text()


async def _decisions(m: Mfa, request_id: str) -> list[Any]:
    async with m.api.container.engine.connect() as conn:
        return list(await conn.execute(select(decisions).where(decisions.c.request_id == request_id)))


async def _events(m: Mfa, chain_id: str, kind: str) -> list[dict[str, Any]]:
    async with m.api.container.engine.connect() as conn:
        rows = await conn.execute(
            select(audit_events.c.data)
            .where(audit_events.c.chain_id == chain_id, audit_events.c.kind == kind)
            .order_by(audit_events.c.seq)
        )
        return [r.data for r in rows]


async def _fails_with(m: Mfa, request_id: str, status: int, reason: str, words: str) -> None:
    url = await _held_link(m, request_id)
    code, page = await _sign_in(m, url)
    assert code == status, page
    assert words in page and "Nothing was recorded" in page
    assert await _decisions(m, request_id) == []
    failures = await _events(m, request_id, "step_up_failed")
    assert [f["reason"] for f in failures] == [reason]
    view = await (await m.api.get(f"/v1/requests/{request_id}")).json()
    assert view["status"] == "pending"


async def test_approve_with_step_up_records_the_decision_with_evidence_and_updates_the_card(m: Mfa) -> None:
    m.idp.next_login = COO
    request_id = await _request(m)
    url = await _held_link(m, request_id)
    assert await _decisions(m, request_id) == []  # held, not decided

    status, page = await _sign_in(m, url)
    assert status == 200 and "Decision recorded" in page and "approved" in page

    [auth] = m.idp.authorizations
    assert auth.params["client_id"] == CLIENT_ID
    assert auth.params["code_challenge_method"] == "S256" and len(auth.params["code_challenge"]) == 43
    assert auth.params["max_age"] == "600" and auth.params["nonce"] and auth.params["state"]
    assert auth.params["redirect_uri"] == m.api.base + "/auth/callback"
    assert "openid" in auth.params["scope"].split()

    [decision] = await _decisions(m, request_id)
    assert decision.approver_id == "U01COO" and decision.decision == "approve"
    assert decision.mfa["iss"] == m.idp.issuer and decision.mfa["sub"] == COO.sub
    assert decision.mfa["amr"] == ["pwd", "otp"] and decision.mfa["reused"] is False
    assert decision.mfa["auth_time"].endswith("Z")
    view = await m.api.final(request_id)
    assert view["status"] == "approved"
    assert m.api.fake is not None
    await m.api.fake.wait_for_calls("chat.update", 1)

    [linked] = await _events(m, "identity:U01COO", "identity_linked")
    assert (linked["subject"], linked["email"]) == (COO.sub, "coo@example.com")
    async with m.api.container.engine.begin() as conn:
        auditor = (await add_auditor_key(conn, name="auditor")).api_key
    chain = await (await m.api.get(f"/v1/audit/chains/{request_id}", key=auditor)).json()
    [chained] = chain["decisions"]
    assert chained["mfa"]["sub"] == COO.sub and chained["mfa"]["amr"] == ["pwd", "otp"]
    kinds = [e["kind"] for e in chain["events"]]
    assert kinds.index("step_up_required") < kinds.index("decision_recorded")


async def test_a_fresh_step_up_covers_the_next_decisions_within_max_age(m: Mfa) -> None:
    m.idp.next_login = COO
    first = await _request(m)
    status, _ = await _sign_in(m, await _held_link(m, first))
    assert status == 200
    second = await _request(m)
    await _click(m, second)
    view = await m.api.final(second)
    assert view["status"] == "approved"
    [decision] = await _decisions(m, second)
    assert decision.mfa["reused"] is True and decision.mfa["sub"] == COO.sub
    assert len(m.idp.authorizations) == 1  # signed in once for both


async def test_max_age_zero_demands_a_new_login_for_every_decision(m: Mfa) -> None:
    m.idp.next_login = Login(sub=COO.sub, email=COO.email, amr=["pwd", "hwk"])
    first = await _request(m, "wire_transfer")
    status, _ = await _sign_in(m, await _held_link(m, first))
    assert status == 200
    assert m.idp.authorizations[0].params["prompt"] == "login"
    assert m.idp.authorizations[0].params["max_age"] == "0"
    assert m.idp.authorizations[0].params["acr_values"] == "urn:okta:loa:2fa:any"
    second = await _request(m, "wire_transfer")
    url = await _held_link(m, second, nth=2)  # held again: no reuse
    assert await _decisions(m, second) == []
    status, _ = await _sign_in(m, url)
    assert status == 200 and len(m.idp.authorizations) == 2


async def test_acr_alone_can_satisfy_a_policy(m: Mfa) -> None:
    m.idp.next_login = Login(sub=COO.sub, email=COO.email, amr=None, acr="urn:okta:loa:2fa:any")
    request_id = await _request(m, "wire_transfer")
    status, _ = await _sign_in(m, await _held_link(m, request_id))
    assert status == 200
    [decision] = await _decisions(m, request_id)
    assert decision.mfa["acr"] == "urn:okta:loa:2fa:any" and decision.mfa["amr"] == []


async def test_a_different_person_signing_in_records_nothing(m: Mfa) -> None:
    m.idp.next_login = COO
    first = await _request(m)
    assert (await _sign_in(m, await _held_link(m, first)))[0] == 200
    # Someone else at the IdP, even with the COO's address in their profile, is not the linked identity.
    m.idp.next_login = Login(sub="okta|intruder", email="coo@example.com")
    async with m.api.container.engine.begin() as conn:  # make the first step-up stale for this test
        await conn.execute(update(step_up_intents).values(status="decided"))
        await conn.execute(step_ups.delete())
    second = await _request(m)
    url = await _held_link(m, second, nth=2)
    status, page = await _sign_in(m, url)
    assert status == 403 and "someone other than the person linked" in page
    assert await _decisions(m, second) == []
    assert [f["reason"] for f in await _events(m, second, "step_up_failed")] == ["wrong_identity"]


async def test_first_link_needs_the_verified_email_of_the_slack_profile(m: Mfa) -> None:
    m.idp.next_login = Login(sub="okta|other", email="someone.else@example.com")
    await _fails_with(m, await _request(m), 403, "email_mismatch", "does not match")
    m.idp.next_login = Login(sub="okta|coo", email="coo@example.com", email_verified=False)
    request_id = await _request(m)
    url = await _held_link(m, request_id, nth=2)
    assert (await _sign_in(m, url))[0] == 403
    async with m.api.container.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(identity_links))).scalar_one() == 0


async def test_cancelling_at_the_idp_records_nothing(m: Mfa) -> None:
    m.idp.next_login = Login(sub=COO.sub, email=COO.email, cancel=True)
    await _fails_with(m, await _request(m), 400, "cancelled", "cancelled")


async def test_a_stale_login_is_refused(m: Mfa) -> None:
    m.idp.next_login = Login(sub=COO.sub, email=COO.email, auth_age=3600)
    await _fails_with(m, await _request(m), 403, "stale_login", "fresh sign-in")


async def test_a_login_without_a_strong_method_is_refused(m: Mfa) -> None:
    m.idp.next_login = Login(sub=COO.sub, email=COO.email, amr=["pwd"])
    await _fails_with(m, await _request(m), 403, "weak_authentication", "multi-factor")


async def test_a_login_without_amr_or_acr_is_refused(m: Mfa) -> None:
    m.idp.next_login = Login(sub=COO.sub, email=COO.email, amr=None)
    await _fails_with(m, await _request(m), 403, "weak_authentication", "multi-factor")


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("none", "invalid_token"), ("hs256_public_key", "invalid_token"), ("unknown_kid", "unknown_key")],
)
async def test_hostile_tokens_are_refused(m: Mfa, mode: Any, reason: str) -> None:
    m.idp.next_login = COO
    m.idp.token_mode = mode
    await _fails_with(m, await _request(m), 403, reason, "Sign-in not accepted")


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "https://evil.example.com"},
        {"aud": "someone-else"},
        {"aud": [CLIENT_ID, "someone-else"]},  # several audiences and no azp naming us
        {"nonce": "not-the-one-we-sent"},
        {"exp": 1_000_000_000, "iat": 999_999_000},
        {"auth_time": None},
    ],
)
async def test_tokens_with_wrong_claims_are_refused(m: Mfa, claims: dict[str, Any]) -> None:
    m.idp.next_login = COO
    m.idp.claim_overrides = claims
    reason = "stale_login" if "auth_time" in claims else "invalid_token"
    url = await _held_link(m, request_id := await _request(m))
    status, _ = await _sign_in(m, url)
    assert status == 403
    assert await _decisions(m, request_id) == []
    assert [f["reason"] for f in await _events(m, request_id, "step_up_failed")] == [reason]


async def test_an_unknown_kid_right_after_a_key_fetch_is_refused_without_asking_the_idp(m: Mfa) -> None:
    m.idp.next_login = COO
    assert (await _sign_in(m, await _held_link(m, await _request(m))))[0] == 200
    assert m.idp.jwks_calls == 1
    async with m.api.container.engine.begin() as conn:  # no reuse: the request below needs a login
        await conn.execute(step_ups.delete())

    m.idp.token_mode = "unknown_kid"
    assert (await _sign_in(m, await _held_link(m, await _request(m), nth=2)))[0] == 403
    assert m.idp.jwks_calls == 1


@dataclass
class ManualClock:
    """A monotonic clock that moves only when the test moves it."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_rotated_key_is_fetched_once_the_refetch_interval_has_passed() -> None:
    clock = ManualClock()
    async with DevIdentityProvider() as idp:
        provider = OidcProvider(
            issuer=idp.issuer,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            refetch_interval=60,
            clock=clock,
        )
        try:
            assert await provider.signing_key(idp.kid) is not None
            assert idp.jwks_calls == 1
            assert await provider.signing_key("rogue") is None  # forged, right after a fetch
            assert idp.jwks_calls == 1

            idp.rotate_key()
            clock.now += 59  # still within the interval: the new kid is not looked for yet
            assert await provider.signing_key(idp.kid) is None
            assert idp.jwks_calls == 1

            clock.now += 2  # past it: one refetch finds the new key
            found = await provider.signing_key(idp.kid)
            assert found is not None
            assert found.key.public_numbers() == idp.key.public_key().public_numbers()
            assert idp.jwks_calls == 2
            assert await provider.signing_key("rogue") is None  # and the next forged kid waits again
            assert idp.jwks_calls == 2
        finally:
            await provider.close()


async def test_a_replayed_callback_records_nothing_more(m: Mfa) -> None:
    m.idp.next_login = COO
    request_id = await _request(m)
    url = await _held_link(m, request_id)
    async with m.browser.get(url, allow_redirects=False) as resp:
        to_idp = resp.headers["Location"]
    async with m.browser.get(to_idp, allow_redirects=False) as resp:
        callback = resp.headers["Location"]
    async with m.browser.get(callback) as resp:
        assert resp.status == 200
    async with m.browser.get(callback) as resp:  # the same state and code again
        assert resp.status == 409 and "already used" in await resp.text()
    assert len(await _decisions(m, request_id)) == 1
    assert m.idp.token_calls == 1  # the code was never presented twice
    assert [f["reason"] for f in await _events(m, request_id, "step_up_failed")] == ["replayed"]


async def test_a_forged_state_is_refused_and_audited(m: Mfa) -> None:
    async with m.browser.get(m.api.base + "/auth/callback?state=forged&code=abc") as resp:
        assert resp.status == 409
    assert [f["reason"] for f in await _events(m, "step_up", "step_up_failed")] == ["replayed"]
    async with m.browser.get(m.api.base + "/auth/callback") as resp:
        assert resp.status == 400 and "identity provider" in await resp.text()


async def test_an_expired_intent_cannot_be_used(m: Mfa) -> None:
    m.idp.next_login = COO
    request_id = await _request(m)
    url = await _held_link(m, request_id)
    async with m.api.container.engine.begin() as conn:  # ten minutes pass
        await conn.execute(update(step_up_intents).values(expires_at=step_up_intents.c.created_at))
    status, page = await _sign_in(m, url)
    assert status == 410 and "expired" in page
    assert m.idp.authorizations == []
    assert [f["reason"] for f in await _events(m, request_id, "step_up_failed")] == ["expired_intent"]


async def test_a_request_cancelled_meanwhile_gets_no_decision(m: Mfa) -> None:
    m.idp.next_login = COO
    request_id = await _request(m)
    url = await _held_link(m, request_id)
    resp = await m.api.post(f"/v1/requests/{request_id}/cancel", {"reason": "no longer needed"})
    assert resp.status == 200
    status, page = await _sign_in(m, url)
    assert status == 409 and "decided or expired meanwhile" in page
    assert await _decisions(m, request_id) == []
    view = await (await m.api.get(f"/v1/requests/{request_id}")).json()
    assert view["status"] == "cancelled"


async def test_an_unreachable_idp_records_nothing_and_the_link_still_works_later(m: Mfa) -> None:
    m.idp.next_login = COO
    request_id = await _request(m)
    url = await _held_link(m, request_id)
    m.idp.down = True
    status, page = await _sign_in(m, url)
    assert status == 502 and "could not reach your identity provider" in page
    assert await _decisions(m, request_id) == []
    assert [f["reason"] for f in await _events(m, request_id, "step_up_failed")] == ["idp_unreachable"]
    m.idp.down = False
    status, _ = await _sign_in(m, url)
    assert status == 200
    assert len(await _decisions(m, request_id)) == 1


async def test_someone_who_may_not_decide_is_refused_before_any_step_up(m: Mfa) -> None:
    request_id = await _request(m)
    await _click(m, request_id, user="U07FIN")
    assert m.api.fake is not None
    [call] = await m.api.fake.wait_for_calls("chat.postEphemeral", 1)
    assert "not an approver" in call.params["text"]
    assert "blocks" not in call.params or not call.params["blocks"]
    async with m.api.container.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(step_up_intents))).scalar_one() == 0


async def test_identities_cli_lists_and_unlinks_and_both_are_audited(m: Mfa) -> None:
    m.idp.next_login = COO
    assert (await _sign_in(m, await _held_link(m, await _request(m))))[0] == 200
    url = m.api.container.settings.database_url

    async def cli(*args: str) -> tuple[int, str]:
        result = await run_cli(url, *args)
        return result.returncode, result.stdout + result.stderr

    code, out = await cli("identities", "list", "--json")
    assert code == 0 and COO.sub in out and "U01COO" in out
    code, out = await cli("identities", "unlink", "U01COO")
    assert code == 0, out
    code, out = await cli("identities", "unlink", "U01COO")
    assert code == 1 and "no linked identity" in out
    [unlinked] = await _events(m, "identity:U01COO", "identity_unlinked")
    assert unlinked["subject"] == COO.sub
    # Unlinking also ends the freshness window: the next decision needs a new step-up.
    second = await _request(m)
    await _held_link(m, second, nth=2)


async def test_end_to_end_against_a_third_party_provider(database_url: str) -> None:
    """The same flow against `oidc-provider-mock` (authlib-based): nothing in it is ours."""
    from oidc_provider_mock import run_server_in_thread

    with run_server_in_thread() as server:
        issuer = f"http://localhost:{server.server_port}"
        async with mfa_service(database_url, issuer, "approvals", "any-secret") as api:
            api.key = await api.add_agent("payroll-bot", ["approve_payroll"])
            async with ClientSession() as browser:
                claims = {"email": "coo@example.com", "email_verified": True, "amr": ["pwd", "hwk"]}
                async with browser.put(f"{issuer}/users/provider-coo", json=claims) as resp:
                    assert resp.status == 204
                m = Mfa(api, DevIdentityProvider(), browser)
                request_id = await _request(m)
                url = await _held_link(m, request_id)
                async with browser.get(url, allow_redirects=False) as resp:
                    authorize = resp.headers["Location"]
                assert authorize.startswith(f"{issuer}/oauth2/authorize?")
                # The provider's consent form, submitted headlessly as the person signing in.
                async with browser.post(
                    authorize, data={"sub": "provider-coo", "action": "authorize"}
                ) as resp:
                    page = await resp.text()
                    assert resp.status == 200, page
                assert "Decision recorded" in page
            [decision] = await _decisions(m, request_id)
            assert decision.mfa["iss"] == issuer and decision.mfa["sub"] == "provider-coo"
            assert decision.mfa["amr"] == ["pwd", "hwk"]
            assert (await api.final(request_id))["status"] == "approved"


async def test_a_reject_with_its_reason_waits_for_the_step_up_too(m: Mfa) -> None:
    m.idp.next_login = COO
    request_id = await _request(m)
    assert m.api.fake is not None
    await _click(m, request_id, choice="reject_request")
    [opened] = await m.api.fake.wait_for_calls("views.open", 1)
    resp = await m.api.slack(
        view_submission(opened.params["view"]["private_metadata"], "Over budget", user="U01COO")
    )
    assert resp.status == 200
    [prompt] = await m.api.fake.wait_for_calls("chat.postEphemeral", 1)
    [button] = [e for b in prompt.params["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert "rejection" in prompt.params["text"]
    assert (await (await m.api.get(f"/v1/requests/{request_id}")).json())["status"] == "pending"
    status, page = await _sign_in(m, button["url"])
    assert status == 200 and "rejected" in page
    view = await m.api.final(request_id)
    assert (view["status"], view["reason"]) == ("rejected", "Over budget")
    [decision] = await _decisions(m, request_id)
    assert decision.decision == "reject" and decision.mfa["sub"] == COO.sub


@pytest.mark.parametrize("stored_by", ["this_version", "older_version"])
async def test_a_held_click_keeps_the_usergroups_that_made_the_clicker_an_approver(
    m: Mfa, stored_by: str
) -> None:
    """The groups Slack listed at click time go through the intent to the decision record. An intent
    held by an older version knew only "in some group": that is recorded as such, not guessed."""
    assert m.api.fake is not None
    m.api.fake.usergroups["S0PAYROLL"] = ["U01COO"]
    m.idp.next_login = COO
    request_id = await _request(m, "approve_bonus")
    url = await _held_link(m, request_id)
    async with m.api.container.engine.begin() as conn:
        [held] = (await conn.execute(select(step_up_intents.c.id, step_up_intents.c.click))).all()
        assert held.click["approver_groups"] == ["S0PAYROLL"]
        assert held.click["clicker"]["in_approver_group"] is True
        if stored_by == "older_version":
            old = {"clicker": held.click["clicker"], "action_ts": held.click["action_ts"]}
            await conn.execute(
                update(step_up_intents).where(step_up_intents.c.id == held.id).values(click=old)
            )
    m.api.fake.usergroups["S0PAYROLL"] = []  # left the group after clicking: the click-time answer counts
    status, page = await _sign_in(m, url)
    assert status == 200 and "approved" in page, page
    [recorded] = await _events(m, request_id, "decision_recorded")
    groups = ["S0PAYROLL"] if stored_by == "this_version" else ["(membership not recorded)"]
    assert recorded["authorised_as"] == {"user": False, "usergroups": groups}
