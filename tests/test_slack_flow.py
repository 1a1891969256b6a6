"""The Slack approval flow end to end: real signed HTTP to /slack/events, real slack_sdk to a fake Slack."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from approvals.identity.auditors import add_auditor_key
from approvals.tables import audit_events, decisions, requests, slack_clicks
from tests.conftest import TEST_POLICIES, offer
from tests.eventually import eventually
from tests.slack_helpers import SlackApi, block_actions, slack_service, slash_command, view_submission


@pytest.fixture
async def slack(database_url: str) -> AsyncIterator[SlackApi]:
    async for api in slack_service(database_url):
        yield api


async def _pending_card(slack: SlackApi, cards: int = 1, **overrides: Any) -> tuple[str, Any]:
    created = await (await slack.post("/v1/requests", offer(**overrides))).json()
    assert slack.fake is not None
    await slack.fake.wait_for_calls("chat.postMessage", cards)
    await slack.container.dispatcher.run_until_idle()
    messages = await slack.posted(created["id"])
    assert len(messages) == cards
    return created["id"], messages[0]


async def _events(slack: SlackApi, request_id: str, kind: str) -> list[dict[str, Any]]:
    async with slack.container.engine.connect() as conn:
        rows = await conn.execute(
            select(audit_events.c.data)
            .where(audit_events.c.chain_id == request_id, audit_events.c.kind == kind)
            .order_by(audit_events.c.seq)
        )
        return [r.data for r in rows]


async def _decision_count(slack: SlackApi, request_id: str) -> int:
    async with slack.container.engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    select(func.count()).select_from(decisions).where(decisions.c.request_id == request_id)
                )
            ).scalar_one()
        )


def _mrkdwn_texts(node: Any) -> list[str]:
    """Every mrkdwn text in a block tree: the only place Slack parses mentions, links and dates."""
    if isinstance(node, dict):
        own = [node["text"]] if node.get("type") == "mrkdwn" and isinstance(node.get("text"), str) else []
        return own + [t for value in node.values() for t in _mrkdwn_texts(value)]
    if isinstance(node, list):
        return [t for item in node for t in _mrkdwn_texts(item)]
    return []


def _buttons(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for b in blocks if b["type"] == "actions" for e in b["elements"]]


async def test_a_pending_request_posts_one_card_with_buttons_carrying_only_the_id(slack: SlackApi) -> None:
    request_id, message = await _pending_card(slack)
    assert slack.fake is not None
    [call] = slack.fake.calls_to("chat.postMessage")
    assert call.params["channel"] == "C0HIRING"
    assert [b["value"] for b in _buttons(call.params["blocks"])] == [request_id, request_id]
    assert message.channel == "C0HIRING"
    assert message.permalink.startswith("https://example.slack.com/archives/C0HIRING/")
    assert "185000" not in json.dumps(call.params["blocks"])  # params.salary is redacted by the policy


async def test_approve_records_the_decision_with_identity_and_updates_the_card(slack: SlackApi) -> None:
    request_id, message = await _pending_card(slack)
    resp = await slack.slack(
        block_actions(
            request_id, "approve_request", user="U01COO", message_ts=message.ts, action_ts="1700000100.000001"
        )
    )
    assert resp.status == 200
    view = await slack.final(request_id)
    assert view["status"] == "approved"
    assert view["decided_by"] == "human"
    [decision] = view["decisions"]
    assert decision["approver"] == {"id": "U01COO", "name": "Cora Coo", "email": "coo@example.com"}
    async with slack.container.engine.connect() as conn:
        row = (await conn.execute(select(decisions).where(decisions.c.request_id == request_id))).one()
    assert (row.team_id, row.action_ts, row.policy_version_id) == (
        "T0TEAM",
        "1700000100.000001",
        slack.container.policies.version,
    )
    assert slack.fake is not None
    [update] = await slack.fake.wait_for_calls("chat.update", 1)
    assert (update.params["channel"], update.params["ts"]) == (message.channel, message.ts)
    assert _buttons(update.params["blocks"]) == []
    assert "U01COO" in json.dumps(update.params["blocks"])
    [recorded] = await _events(slack, request_id, "decision_recorded")
    assert recorded["authorised_as"] == {"user": True, "usergroups": []}


async def test_reject_opens_a_modal_and_records_the_reason(slack: SlackApi) -> None:
    request_id, _ = await _pending_card(slack)
    assert slack.fake is not None
    await slack.slack(block_actions(request_id, "reject_request", user="U01COO"))
    [opened] = await slack.fake.wait_for_calls("views.open", 1)
    assert opened.params["trigger_id"] == "1337.42.abcdef"
    metadata = opened.params["view"]["private_metadata"]
    resp = await slack.slack(view_submission(metadata, "Salary above band", user="U01COO"))
    assert resp.status == 200
    view = await slack.final(request_id)
    assert (view["status"], view["reason"]) == ("rejected", "Salary above band")
    assert view["decisions"][0]["reason"] == "Salary above band"


async def test_an_empty_reason_is_refused_in_the_modal_and_nothing_is_recorded(slack: SlackApi) -> None:
    request_id, _ = await _pending_card(slack)
    metadata = json.dumps({"request_id": request_id, "action_ts": "1.2", "channel_id": "C0HIRING"})
    resp = await slack.slack(view_submission(metadata, "   ", user="U01COO"))
    assert resp.status == 200
    body = await resp.json()
    assert body["response_action"] == "errors"
    assert "reason_block" in body["errors"]
    assert await _decision_count(slack, request_id) == 0


async def test_a_non_approver_is_told_and_the_refusal_is_audited(slack: SlackApi) -> None:
    request_id, _ = await _pending_card(slack)
    await slack.slack(block_actions(request_id, "approve_request", user="U03CEO"))
    assert slack.fake is not None
    [ephemeral] = await slack.fake.wait_for_calls("chat.postEphemeral", 1)
    assert ephemeral.params["user"] == "U03CEO"
    assert "not an approver" in ephemeral.params["text"]
    [refused] = await _events(slack, request_id, "click_refused")
    assert refused["reason"] == "not_approver"
    assert refused["authorised_as"] == {"user": False, "usergroups": []}
    assert (await (await slack.get(f"/v1/requests/{request_id}")).json())["status"] == "pending"


async def test_a_request_whose_rule_asks_for_mfa_is_never_decided_without_an_idp(slack: SlackApi) -> None:
    """A request judged under a policy file that asked for MFA, decided by a process with no IdP."""
    request_id, _ = await _pending_card(slack)
    async with slack.container.engine.begin() as conn:
        rule = (
            await conn.execute(select(requests.c.policy_rule).where(requests.c.id == request_id))
        ).scalar()
        rule = {**rule, "mfa": {"required": True, "max_age": 600, "amr": ["mfa"]}}
        await conn.execute(update(requests).where(requests.c.id == request_id).values(policy_rule=rule))
    await slack.slack(block_actions(request_id, "approve_request", user="U01COO"))
    assert slack.fake is not None
    [ephemeral] = await slack.fake.wait_for_calls("chat.postEphemeral", 1)
    assert "single sign-on is not configured" in ephemeral.params["text"]
    [refused] = await _events(slack, request_id, "click_refused")
    assert (refused["reason"], refused["authorised_as"]) == (
        "mfa_unavailable",
        {"user": True, "usergroups": []},
    )
    assert await _decision_count(slack, request_id) == 0


async def test_the_requesters_principal_cannot_approve(slack: SlackApi) -> None:
    request_id, _ = await _pending_card(slack, on_behalf_of="COO@example.com")
    await slack.slack(block_actions(request_id, "approve_request", user="U01COO"))
    assert slack.fake is not None
    await slack.fake.wait_for_calls("chat.postEphemeral", 1)
    assert [e["reason"] for e in await _events(slack, request_id, "click_refused")] == ["self_approval"]
    assert await _decision_count(slack, request_id) == 0


async def test_a_usergroup_member_can_approve(slack: SlackApi) -> None:
    created = await (await slack.post("/v1/requests", offer(action="approve_invoice"))).json()
    await slack.slack(block_actions(created["id"], "approve_request", user="U07FIN", channel="C0FIN"))
    assert (await slack.final(created["id"]))["status"] == "approved"
    assert slack.fake is not None
    assert [c.params["usergroup"] for c in slack.fake.calls_to("usergroups.users.list")] == ["S0FINANCE"]


async def _chain_event(slack: SlackApi, request_id: str, kind: str) -> dict[str, Any]:
    """The one event of that kind in the chain, as an auditor reads it from GET /v1/audit/chains/{id}."""
    async with slack.container.engine.begin() as conn:
        auditor = (await add_auditor_key(conn, name="auditor")).api_key
    chain = await (await slack.get(f"/v1/audit/chains/{request_id}", key=auditor)).json()
    [found] = [e["data"] for e in chain["events"] if e["kind"] == kind]
    # The chain's summary of clicks carries the same basis as the event it summarises.
    for click in chain["clicks"]:
        if click["kind"] == kind:
            assert click["authorised_as"] == found.get("authorised_as")
    return dict(found)


async def test_the_chain_names_the_usergroup_that_made_a_member_an_approver(slack: SlackApi) -> None:
    created = await (await slack.post("/v1/requests", offer(action="approve_invoice"))).json()
    await slack.slack(block_actions(created["id"], "approve_request", user="U07FIN", channel="C0FIN"))
    assert (await slack.final(created["id"]))["status"] == "approved"
    recorded = await _chain_event(slack, created["id"], "decision_recorded")
    assert recorded["user_id"] == "U07FIN"
    assert recorded["authorised_as"] == {"user": False, "usergroups": ["S0FINANCE"]}


BUDGET_POLICY = """
  - action: approve_budget
    decision: require_approval
    approvers: {users: [U01COO], usergroups: [S0FINANCE, S0EXEC, S0OPS]}
    channel: C0FIN
    expires_in: 1h
"""


async def test_every_basis_is_recorded_and_each_group_is_asked_once(database_url: str) -> None:
    """Named directly and in two of three groups: all of it is recorded; membership comes from the same
    cached usergroups.users.list answers (one call per group), not one call per click."""
    async for slack in slack_service(database_url, policies_text=TEST_POLICIES + BUDGET_POLICY):
        assert slack.fake is not None
        slack.fake.usergroups |= {"S0EXEC": ["U01COO"], "S0OPS": ["U07FIN", "U01COO"]}
        slack.key = await slack.add_agent("budget-bot", ["approve_budget"])
        body = offer(action="approve_budget", title="Q3 budget")
        first, second = [(await (await slack.post("/v1/requests", body)).json())["id"] for _ in range(2)]
        await slack.slack(block_actions(first, "approve_request", user="U01COO", channel="C0FIN"))
        assert (await slack.final(first))["status"] == "approved"
        await slack.slack(block_actions(second, "approve_request", user="U07FIN", channel="C0FIN"))
        assert (await slack.final(second))["status"] == "approved"
        [by_coo] = await _events(slack, first, "decision_recorded")
        assert by_coo["authorised_as"] == {"user": True, "usergroups": ["S0EXEC", "S0OPS"]}
        [by_fin] = await _events(slack, second, "decision_recorded")
        assert by_fin["authorised_as"] == {"user": False, "usergroups": ["S0FINANCE", "S0OPS"]}
        asked = [c.params["usergroup"] for c in slack.fake.calls_to("usergroups.users.list")]
        assert sorted(asked) == ["S0EXEC", "S0FINANCE", "S0OPS"]


async def test_two_of_two_quorum_needs_two_distinct_approvers(slack: SlackApi) -> None:
    created = await (await slack.post("/v1/requests", offer(action="refund_customer"))).json()
    assert slack.fake is not None
    posts = await slack.fake.wait_for_calls("chat.postMessage", 3)
    assert sorted(c.params["channel"] for c in posts) == ["U01COO", "U02CFO", "U03CEO"]  # dm_approvers
    await slack.slack(block_actions(created["id"], "approve_request", user="U01COO"))
    partial = await slack.fake.wait_for_calls("chat.update", 3)
    assert "1 of 2" in json.dumps(partial[0].params["blocks"])
    assert (await (await slack.get(f"/v1/requests/{created['id']}")).json())["status"] == "pending"
    await slack.slack(block_actions(created["id"], "approve_request", user="U02CFO"))
    view = await slack.final(created["id"])
    assert view["status"] == "approved"
    assert [d["approver"]["id"] for d in view["decisions"]] == ["U01COO", "U02CFO"]


async def test_one_reject_in_a_quorum_rejects(slack: SlackApi) -> None:
    created = await (await slack.post("/v1/requests", offer(action="refund_customer"))).json()
    await slack.slack(block_actions(created["id"], "approve_request", user="U01COO"))
    metadata = json.dumps({"request_id": created["id"], "action_ts": "9.9", "channel_id": "D02CFO"})
    await slack.slack(view_submission(metadata, "Not refundable", user="U02CFO"))
    view = await slack.final(created["id"])
    assert view["status"] == "rejected"


async def test_double_clicks_and_slack_retries_record_nothing_new(slack: SlackApi) -> None:
    request_id, _ = await _pending_card(slack, cards=3, action="refund_customer")
    click = block_actions(request_id, "approve_request", user="U01COO", action_ts="1700000200.000001")
    for headers in ({}, {}, {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}):
        assert (await slack.slack(click, **headers)).status == 200
    # The click is decided after the ack: wait for it, then check the repeats added nothing.
    await eventually(lambda: _events(slack, request_id, "decision_recorded"), what="the click to be decided")
    await slack.container.dispatcher.run_until_idle()
    events_before = await _events(slack, request_id, "decision_recorded")
    assert len(events_before) == 1
    assert await _decision_count(slack, request_id) == 1
    assert await _events(slack, request_id, "click_refused") == []
    # A second, distinct click by the same person is refused as already decided.
    await slack.slack(block_actions(request_id, "approve_request", user="U01COO"))
    assert slack.fake is not None
    await slack.fake.wait_for_calls("chat.postEphemeral", 1)
    assert [e["reason"] for e in await _events(slack, request_id, "click_refused")] == ["already_decided"]


@pytest.mark.parametrize("problem", ["stale", "forged", "unsigned"])
async def test_bad_signatures_are_401_and_record_nothing(slack: SlackApi, problem: str) -> None:
    from urllib.parse import urlencode

    from tests.slack_helpers import signed_headers

    request_id, _ = await _pending_card(slack)
    body = urlencode({"payload": json.dumps(block_actions(request_id, "approve_request", user="U01COO"))})
    headers = {
        "stale": signed_headers(body, timestamp=int(time.time()) - 6 * 60),
        "forged": signed_headers(body, secret="not-the-secret"),
        "unsigned": {"Content-Type": "application/x-www-form-urlencoded"},
    }[problem]
    resp = await slack.session.post(slack.url("/slack/events"), data=body, headers=headers)
    assert resp.status == 401
    assert await _decision_count(slack, request_id) == 0


@pytest.mark.parametrize("end", ["cancel", "expire"])
async def test_clicks_on_finished_requests_are_refused_as_not_pending(slack: SlackApi, end: str) -> None:
    request_id, _ = await _pending_card(slack)
    if end == "cancel":
        await slack.post(f"/v1/requests/{request_id}/cancel")
    else:
        from app.scheduler import expire_requests_job

        async with slack.container.engine.begin() as conn:
            await conn.execute(update(requests).values(expires_at=func.current_timestamp()))
        assert await expire_requests_job(slack.container) == 1
    await slack.slack(block_actions(request_id, "approve_request", user="U01COO"))
    assert slack.fake is not None
    [ephemeral] = await slack.fake.wait_for_calls("chat.postEphemeral", 1)
    assert "no longer pending" in ephemeral.params["text"]
    assert [e["reason"] for e in await _events(slack, request_id, "click_refused")] == ["not_pending"]
    updates = await slack.fake.wait_for_calls("chat.update", 1)
    assert _buttons(updates[-1].params["blocks"]) == []


async def test_a_429_storm_posts_the_card_exactly_once_after_retry_after(database_url: str) -> None:
    async for slack in slack_service(database_url, run_scheduler=True, scheduler_interval_seconds=0.2):
        assert slack.fake is not None
        slack.fake.fail("chat.postMessage", times=3, status=429, retry_after=1)
        created = await (await slack.post("/v1/requests", offer())).json()
        calls = await slack.fake.wait_for_calls("chat.postMessage", 4, timeout=30)
        await slack.container.dispatcher.run_until_idle()
        assert [c.failed for c in calls] == [True, True, True, False]
        assert len(await slack.posted(created["id"])) == 1
        view = await (await slack.get(f"/v1/requests/{created['id']}")).json()
        posts = [d for d in view["deliveries"] if d["kind"] == "slack_post"]
        assert [(d["status_code"], d["result"]) for d in posts] == [(429, "retry")] * 3 + [(200, "delivered")]
        from datetime import datetime

        times = [datetime.fromisoformat(d["at"].replace("Z", "+00:00")) for d in posts]
        assert all((b - a).total_seconds() >= 0.9 for a, b in itertools.pairwise(times))


async def test_channel_not_found_is_not_retried_and_the_request_says_so(slack: SlackApi) -> None:
    assert slack.fake is not None
    slack.fake.fail("chat.postMessage", error="channel_not_found", times=None)
    created = await (await slack.post("/v1/requests", offer())).json()
    await slack.fake.wait_for_calls("chat.postMessage", 1)
    await slack.container.dispatcher.run_until_idle()
    view = await (await slack.get(f"/v1/requests/{created['id']}")).json()
    assert view["delivery_error"] == "slack: channel_not_found posting to C0HIRING"
    assert [e["error"] for e in await _events(slack, created["id"], "notification_failed")] == [
        "channel_not_found"
    ]
    assert len(slack.fake.calls_to("chat.postMessage")) == 1
    metrics = await (await slack.session.get(slack.url("/metrics"))).text()
    assert 'approvals_slack_delivery_failures_total{error="channel_not_found"} 1.0' in metrics


async def test_injection_in_agent_text_reaches_slack_escaped(slack: SlackApi) -> None:
    evil = "<!channel> <@U01COO> <https://evil.example|Approve here> <!date^1^{date}|x> *APPROVED*"
    _request_id, _ = await _pending_card(slack, title=evil[:200], summary=evil, params={"note": evil})
    assert slack.fake is not None
    blocks = slack.fake.calls_to("chat.postMessage")[0].params["blocks"]
    mrkdwn = " ".join(_mrkdwn_texts(blocks))
    assert "&lt;!channel&gt;" in mrkdwn  # the params are there, escaped
    for token in ("<!channel>", "<@U01COO>", "<https://evil.example", "<!date^1^"):
        assert token not in mrkdwn


async def test_sixty_kilobytes_of_params_make_a_valid_truncated_card(slack: SlackApi) -> None:
    from slack_sdk.models.blocks import Block

    params = {f"field_{i}": "x" * 600 for i in range(100)}
    await _pending_card(slack, params=params)
    assert slack.fake is not None
    blocks = slack.fake.calls_to("chat.postMessage")[0].params["blocks"]
    assert len(blocks) <= 50
    assert "truncated" in json.dumps(blocks)
    for block in blocks:
        assert Block.parse(block) is not None
        Block.parse(block).to_dict()  # type: ignore[union-attr]  # raises on a Block Kit limit


async def test_slash_command_lists_what_awaits_the_caller(slack: SlackApi) -> None:
    _request_id, _ = await _pending_card(slack)
    form = slash_command()
    resp = await slack.slack_form(form)
    assert resp.status == 200
    body = await resp.json()
    assert body["response_type"] == "ephemeral"
    assert "Send offer letter to J. Doe" in json.dumps(body["blocks"])
    other = await (await slack.slack_form(form | {"user_id": "U09REC"})).json()
    assert "Send offer letter" not in json.dumps(other["blocks"])


async def test_app_home_shows_the_same_list_when_opened(slack: SlackApi) -> None:
    await _pending_card(slack)
    resp = await slack.slack_event(
        {"type": "app_home_opened", "user": "U01COO", "channel": "D01", "tab": "home", "event_ts": "1.2"}
    )
    assert resp.status == 200
    assert slack.fake is not None
    [published] = await slack.fake.wait_for_calls("views.publish", 1)
    assert published.params["user_id"] == "U01COO"
    assert "Send offer letter to J. Doe" in json.dumps(published.params["view"])


async def test_a_burst_of_clicks_is_stored_in_shared_writes_and_each_counts_once(slack: SlackApi) -> None:
    """Clicks arriving together share transactions (group commit); a retry inside the same batch is
    still recognised, and every stored click is decided."""
    ids = [(await (await slack.post("/v1/requests", offer())).json())["id"] for _ in range(6)]
    assert slack.fake is not None
    await slack.fake.wait_for_calls("chat.postMessage", len(ids))
    clicks = [
        block_actions(request_id, "approve_request", user="U01COO", action_ts=f"1700000200.{n:06d}")
        for n, request_id in enumerate(ids)
    ]
    inserts: list[int] = []

    def count(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.startswith("INSERT INTO slack_clicks"):
            inserts.append(len(params) if isinstance(params, list) else 1)

    # On PostgreSQL the inbox writes through the autocommit pool (its write is one statement).
    engines = [e.sync_engine for e in (slack.container.engine, slack.container.single_statements) if e]
    for engine in engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        # Each click twice, all at once: Slack retries (or a double-submit) racing the original.
        answers = await asyncio.gather(*(slack.slack(click) for click in clicks + clicks))
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", count)
    assert 1 <= len(inserts) < 2 * len(clicks)  # some writes carried several clicks
    assert {a.status for a in answers} == {200}
    for request_id in ids:
        assert (await slack.final(request_id))["status"] == "approved"
        assert await _decision_count(slack, request_id) == 1
    async with slack.container.engine.connect() as conn:
        stored = (await conn.execute(select(func.count()).select_from(slack_clicks))).scalar_one()
    assert stored == len(ids)
