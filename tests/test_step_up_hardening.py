"""Step-up and click robustness (issue 16, items 7-9), end to end on both databases.

- an ID token's `auth_time` must be an instant no later than the IdP's clock skew allows; anything
  else ends the intent with `step_up_failed` and a clear 4xx page, never a 500 or an intent left
  `verifying`, and a step-up stored with a future `auth_time` is never reused;
- a clicker Slack cannot resolve is asked about with exponential back-off, a bounded number of times,
  then the click is refused with `click_refused` (at once when Slack says there is no such user);
- the IdP's token endpoint down at the callback (503, connection refused) proves nothing: the same
  step-up link works again once the IdP is back, and of two tabs' callbacks only one decides.

The service runs over real HTTP with the fake Slack (app/sandbox/slack_api.py) and the test IdP
(app/sandbox/identity_provider.py); faults come from their own hooks. "Time passes" by moving stored times back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest
from sqlalchemy import select, update

from app.slack.clicks import MAX_IDENTITY_ATTEMPTS, identity_retry_delay
from approvals.db import db_now
from approvals.tables import slack_clicks, step_up_intents, step_ups
from tests.eventually import eventually
from tests.test_step_up import (
    COO,
    Mfa,
    _click,
    _decisions,
    _events,
    _held_link,
    _request,
    _sign_in,
)
from tests.test_step_up import m as m  # the fixture: the step-up service, its IdP and a browser


async def _intent(m: Mfa, request_id: str) -> Any:
    async with m.api.container.engine.connect() as conn:
        [row] = await conn.execute(select(step_up_intents).where(step_up_intents.c.request_id == request_id))
        return row


async def _status(m: Mfa, request_id: str) -> str:
    return str((await (await m.api.get(f"/v1/requests/{request_id}")).json())["status"])


async def _to_callback(m: Mfa, url: str) -> str:
    """Open the step-up link and sign in at the IdP, stopping before the browser reaches our callback."""
    async with m.browser.get(url, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        to_idp = resp.headers["Location"]
    async with m.browser.get(to_idp, allow_redirects=False) as resp:
        assert resp.status == 302
        return resp.headers["Location"]


async def _callback(m: Mfa, callback: str) -> tuple[int, str]:
    async with m.browser.get(callback) as resp:
        return resp.status, await resp.text()


# -- item 7: auth_time ------------------------------------------------------------------------------


@pytest.mark.parametrize(("ahead", "accepted"), [(3600, False), (30, True)])
async def test_a_login_in_the_future_is_refused_beyond_the_clock_skew(
    m: Mfa, ahead: int, accepted: bool
) -> None:
    """An hour ahead would have kept the step-up "fresh" for an hour more; 30 s is ordinary clock skew."""
    m.idp.next_login = COO
    m.idp.claim_overrides = {"auth_time": int(time.time()) + ahead}
    request_id = await _request(m)
    status, page = await _sign_in(m, await _held_link(m, request_id))
    if accepted:
        assert status == 200 and "Decision recorded" in page, page
        assert len(await _decisions(m, request_id)) == 1
        return
    assert status == 403 and "Nothing was recorded" in page, page
    assert await _decisions(m, request_id) == []
    [failure] = await _events(m, request_id, "step_up_failed")
    assert failure["reason"] == "invalid_token" and "later than now" in failure["detail"]
    assert (await _intent(m, request_id)).status == "failed"
    async with m.api.container.engine.connect() as conn:  # nothing kept that a later click could reuse
        assert list(await conn.execute(select(step_ups))) == []
    assert await _status(m, request_id) == "pending"


@pytest.mark.parametrize(
    "auth_time",
    [10**20, -(10**20), 10**400, 1e300, float("nan"), float("inf"), float("-inf"), "yesterday", True, [1]],
    ids=["huge", "huge-negative", "beyond-float", "1e300", "nan", "inf", "-inf", "string", "bool", "list"],
)
async def test_an_absurd_auth_time_gets_a_clear_page_and_ends_the_intent(m: Mfa, auth_time: Any) -> None:
    m.idp.next_login = COO
    m.idp.claim_overrides = {"auth_time": auth_time}
    request_id = await _request(m)
    url = await _held_link(m, request_id)
    status, page = await _sign_in(m, url)
    assert status == 403 and "Nothing was recorded" in page, page
    assert (await _intent(m, request_id)).status == "failed"  # not stuck in `verifying`
    [failure] = await _events(m, request_id, "step_up_failed")
    assert failure["reason"] in {"invalid_token", "stale_login"}
    assert await _decisions(m, request_id) == []
    # The link is spent, and says so.
    status, page = await _sign_in(m, url)
    assert status == 409 and "already used" in page


async def test_a_stored_step_up_from_the_future_is_not_reused(m: Mfa) -> None:
    """One an older version accepted would otherwise count as fresh until its auth_time passed."""
    m.idp.next_login = COO
    first = await _request(m)
    assert (await _sign_in(m, await _held_link(m, first)))[0] == 200
    async with m.api.container.engine.begin() as conn:
        now = await db_now(conn)
        await conn.execute(update(step_ups).values(auth_time=now + dt.timedelta(days=1)))
    second = await _request(m)
    await _held_link(m, second, nth=2)  # held for a new step-up, not decided on the stored one
    assert await _decisions(m, second) == []
    assert await _status(m, second) == "pending"


# -- item 9: the IdP down at the callback -----------------------------------------------------------


@pytest.mark.parametrize("outage", ["503", "404", "connection_refused"])
async def test_an_idp_outage_at_the_callback_leaves_the_link_usable(m: Mfa, outage: str) -> None:
    """503, or a 404 page that is not an OAuth error (a proxy, a misrouted request), proves nothing."""
    m.idp.next_login = COO
    request_id = await _request(m)
    url = await _held_link(m, request_id)
    callback = await _to_callback(m, url)
    if outage != "connection_refused":
        m.idp.token_status = int(outage)
    else:
        await m.idp.stop_listening()

    status, page = await _callback(m, callback)
    assert status == 502 and "could not reach your identity provider" in page, page
    assert "link still works" in page and "Nothing was recorded" in page
    intent = await _intent(m, request_id)
    assert (intent.status, intent.state) == ("pending", None)
    [failure] = await _events(m, request_id, "step_up_failed")
    assert (failure["reason"], failure["retryable"]) == ("idp_unreachable", True)
    assert await _decisions(m, request_id) == []

    if outage != "connection_refused":
        m.idp.token_status = None
    else:
        await m.idp.listen_again()
    # The failed callback itself is spent (its state is dropped); the link from Slack is not.
    status, _ = await _callback(m, callback)
    assert status == 409
    status, page = await _sign_in(m, url)
    assert status == 200 and "Decision recorded" in page, page
    [decision] = await _decisions(m, request_id)
    assert decision.approver_id == "U01COO" and decision.mfa["sub"] == COO.sub
    assert (await m.api.final(request_id))["status"] == "approved"
    assert (await _intent(m, request_id)).status == "decided"


async def test_of_two_tabs_callbacks_only_one_decides(m: Mfa) -> None:
    """The link opened in two tabs: only the newest sign-in's callback counts, and only once, even when
    the callbacks arrive together (the older tab's, and the newer one's twice)."""
    m.idp.next_login = COO
    request_id = await _request(m)
    url = await _held_link(m, request_id)
    older = await _to_callback(m, url)
    newer = await _to_callback(m, url)
    answers = await asyncio.gather(_callback(m, older), _callback(m, newer), _callback(m, newer))
    assert sorted(status for status, _ in answers) == [200, 409, 409]
    assert len(await _decisions(m, request_id)) == 1
    assert m.idp.token_calls == 1
    assert (await _intent(m, request_id)).status == "decided"


# -- item 8: a clicker Slack cannot resolve ----------------------------------------------------------


async def _click_row(m: Mfa, request_id: str) -> Any:
    async with m.api.container.engine.connect() as conn:
        [row] = await conn.execute(select(slack_clicks).where(slack_clicks.c.request_id == request_id))
        return row


async def _age_click(m: Mfa, request_id: str, *, due: bool) -> dt.datetime:
    """Time passes: the click is old enough for the stranded-click sweep and, with `due`, its next
    attempt has come. Returns the database's clock at that moment."""
    async with m.api.container.engine.begin() as conn:
        now = await db_now(conn)
        values: dict[str, Any] = {"created_at": now - dt.timedelta(hours=1)}
        if due:
            values["next_attempt_at"] = now - dt.timedelta(seconds=1)
        await conn.execute(update(slack_clicks).where(slack_clicks.c.request_id == request_id).values(values))
        return now


async def _attempts(m: Mfa, request_id: str, count: int) -> Any:
    async def counted() -> Any:
        row = await _click_row(m, request_id)
        return row if row.attempts >= count else None

    return await eventually(counted, what=f"attempt {count} to be counted")


async def test_a_clicker_slack_keeps_failing_on_is_retried_with_back_off_then_refused(m: Mfa) -> None:
    fake, slack = m.api.fake, m.api.container.slack
    assert fake is not None and slack is not None
    clicks = slack.clicks
    request_id = await _request(m)
    fake.fail("users.info", times=None, status=503)
    async with m.api.container.engine.connect() as conn:
        before = await db_now(conn)
    await _click(m, request_id)
    row = await _attempts(m, request_id, 1)
    assert row.status == "pending"
    assert (
        identity_retry_delay(1)
        <= row.next_attempt_at - before
        <= identity_retry_delay(1) + dt.timedelta(seconds=5)
    )
    # Old enough for the sweep, but not due: however often it runs, Slack is not asked again.
    await _age_click(m, request_id, due=False)
    for _ in range(20):
        assert await clicks.process_stranded() == 0
    assert len(fake.calls_to("users.info")) == 1

    delays = [row.next_attempt_at - before]
    for attempt in range(2, MAX_IDENTITY_ATTEMPTS + 1):
        now = await _age_click(m, request_id, due=True)
        assert await clicks.process_stranded() == 1
        row = await _attempts(m, request_id, attempt)
        if attempt < MAX_IDENTITY_ATTEMPTS:
            assert row.status == "pending"
            delays.append(row.next_attempt_at - now)
    # Each wait doubles (5 s, 10 s, 20 s, 40 s with the shipped settings).
    for attempt, delay in enumerate(delays, start=1):
        assert (
            identity_retry_delay(attempt) <= delay <= identity_retry_delay(attempt) + dt.timedelta(seconds=5)
        )
    assert [identity_retry_delay(n) for n in range(1, 5)] == [
        dt.timedelta(seconds=s) for s in (5, 10, 20, 40)
    ]

    async def refused() -> Any:
        return await _events(m, request_id, "click_refused")

    [event] = await eventually(refused, what="the click to be refused")
    assert (event["reason"], event["user_id"], event["choice"]) == (
        "identity_unavailable",
        "U01COO",
        "approve",
    )
    assert (await _click_row(m, request_id)).status == "done"
    assert len(fake.calls_to("users.info")) == MAX_IDENTITY_ATTEMPTS
    [note] = await fake.wait_for_calls("chat.postEphemeral", 1)
    assert note.params["user"] == "U01COO" and "after several tries" in note.params["text"]
    # Done: later sweeps leave it alone, and the request still waits for a decision.
    await _age_click(m, request_id, due=True)
    assert await clicks.process_stranded() == 0
    assert len(fake.calls_to("users.info")) == MAX_IDENTITY_ATTEMPTS
    assert await _status(m, request_id) == "pending" and await _decisions(m, request_id) == []


async def test_a_clicker_slack_does_not_know_is_refused_at_once(m: Mfa) -> None:
    fake, slack = m.api.fake, m.api.container.slack
    assert fake is not None and slack is not None
    clicks = slack.clicks
    request_id = await _request(m)
    fake.fail("users.info", times=None, error="user_not_found")
    await _click(m, request_id)

    async def refused() -> Any:
        return await _events(m, request_id, "click_refused")

    [event] = await eventually(refused, what="the click to be refused")
    assert (event["reason"], event["user_id"]) == ("unknown_user", "U01COO")
    row = await _click_row(m, request_id)
    assert (row.status, row.attempts) == ("done", 1)
    await _age_click(m, request_id, due=True)
    assert await clicks.process_stranded() == 0
    assert len(fake.calls_to("users.info")) == 1
    async with m.api.container.engine.connect() as conn:
        assert list(await conn.execute(select(step_up_intents))) == []  # refused before any step-up
    assert await _status(m, request_id) == "pending"


# -- NUL and unencodable text reaching the step-up routes ------------------------------------------


async def test_text_the_database_cannot_store_gets_a_page_not_a_500(m: Mfa) -> None:
    """A NUL in the link's intent id or the callback's state would reach a SQL parameter (a 500 on
    PostgreSQL); an IdP's error description with one would reach the audit event."""
    base = m.api.base.rstrip("/")
    async with m.browser.get(f"{base}/auth/step-up/abc%00def", allow_redirects=False) as resp:
        assert resp.status == 404, await resp.text()
    async with m.browser.get(f"{base}/auth/callback?state=ab%00c&code=x") as resp:
        assert resp.status == 400, await resp.text()

    m.idp.next_login = COO
    request_id = await _request(m)
    callback = await _to_callback(m, await _held_link(m, request_id))
    state = callback.split("state=", 1)[1].split("&", 1)[0]
    refused = (
        f"{callback.split('?', 1)[0]}?state={state}&error=access_denied&error_description=no%00pe%ED%A0%80"
    )
    status, page = await _callback(m, refused)
    assert status == 400 and "Sign-in cancelled" in page, page
    [failure] = await _events(m, request_id, "step_up_failed")
    assert "\x00" not in failure["detail"] and failure["detail"].startswith("nope")
    assert (await _intent(m, request_id)).status == "failed"


@pytest.mark.parametrize("claim", ["sub", "email", "acr"])
async def test_an_id_token_claim_that_cannot_be_stored_ends_the_intent(m: Mfa, claim: str) -> None:
    """A NUL in a claim kept as evidence would fail the decision's transaction (a 500, the intent
    left `verifying`): the token is refused like any other bad one."""
    m.idp.next_login = COO
    m.idp.claim_overrides = {claim: "x\x00y"}
    request_id = await _request(m)
    status, page = await _sign_in(m, await _held_link(m, request_id))
    assert status == 403 and "Nothing was recorded" in page, page
    assert (await _intent(m, request_id)).status == "failed"
    [failure] = await _events(m, request_id, "step_up_failed")
    assert failure["reason"] == "invalid_token" and claim in failure["detail"]
    assert await _decisions(m, request_id) == []
