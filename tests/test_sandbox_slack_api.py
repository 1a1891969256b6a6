"""The fake Slack Web API answers slack_sdk's real client the way Slack does, faults included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientSession
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from app.sandbox.slack_api import SandboxSlack


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # slack_sdk honours HTTP(S)_PROXY: a proxy in the environment would swallow calls to 127.0.0.1.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake() -> AsyncIterator[SandboxSlack]:
    async with SandboxSlack() as server:
        yield server


@pytest.fixture
def client(fake: SandboxSlack) -> AsyncWebClient:
    return AsyncWebClient(token="xoxb-test", base_url=fake.api_url)


async def test_auth_test_identifies_the_bot(client: AsyncWebClient, fake: SandboxSlack) -> None:
    answer = await client.auth_test()
    assert (answer["team_id"], answer["user_id"], answer["bot_id"]) == ("T0TEAM", "UBOT", "BBOT")
    assert fake.calls_to("auth.test")[0].token == "xoxb-test"


async def test_posting_records_the_blocks_and_returns_increasing_timestamps(
    client: AsyncWebClient, fake: SandboxSlack
) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}]
    first = await client.chat_postMessage(channel="C0HIRING", text="hi", blocks=blocks)
    second = await client.chat_postMessage(channel="C0HIRING", text="again")
    assert first["channel"] == "C0HIRING"
    assert first["ts"] == "1700000000.000100"
    assert float(second["ts"]) > float(first["ts"])
    assert fake.calls_to("chat.postMessage")[0].params["blocks"] == blocks


async def test_a_message_to_a_user_lands_in_their_dm(client: AsyncWebClient) -> None:
    answer = await client.chat_postMessage(channel="U01COO", text="hi")
    assert answer["channel"] == "D01COO"
    opened = await client.conversations_open(users=["U02CFO"])
    assert opened["channel"]["id"] == "D02CFO"


async def test_form_bodies_have_their_json_fields_decoded(fake: SandboxSlack, client: AsyncWebClient) -> None:
    blocks = [{"type": "divider"}]
    await client.api_call(
        "chat.update", params={"channel": "C1", "ts": "1.2", "blocks": '[{"type": "divider"}]'}
    )
    assert fake.calls_to("chat.update")[0].params["blocks"] == blocks


async def test_update_ephemeral_permalink_and_views_answer_ok(client: AsyncWebClient) -> None:
    updated = await client.chat_update(channel="C1", ts="1700000000.000100", text="done")
    assert (updated["channel"], updated["ts"]) == ("C1", "1700000000.000100")
    assert (await client.chat_postEphemeral(channel="C1", user="U1", text="no"))["message_ts"]
    link = await client.chat_getPermalink(channel="C1", message_ts="1700000000.000100")
    assert link["permalink"] == "https://example.slack.com/archives/C1/p1700000000000100"
    opened = await client.views_open(trigger_id="t", view={"type": "modal", "title": {}, "blocks": []})
    assert opened["view"]["id"].startswith("V")
    assert (await client.views_publish(user_id="U1", view={"type": "home", "blocks": []}))["ok"]


async def test_users_and_groups_come_from_the_configured_directory(
    client: AsyncWebClient, fake: SandboxSlack
) -> None:
    fake.users["U01COO"] = {"name": "coo", "real_name": "Casey Oh", "email": "coo@example.com"}
    fake.usergroups["S0FIN"] = ["U01COO", "U02CFO"]
    user = (await client.users_info(user="U01COO"))["user"]
    assert user["profile"]["email"] == "coo@example.com"
    assert (user["id"], user["team_id"], user["real_name"]) == ("U01COO", "T0TEAM", "Casey Oh")
    assert (await client.usergroups_users_list(usergroup="S0FIN"))["users"] == ["U01COO", "U02CFO"]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.users_info(user="U404"), "user_not_found"),
        (lambda c: c.usergroups_users_list(usergroup="S404"), "no_such_subteam"),
        (lambda c: c.api_call("admin.everything"), "unknown_method"),
    ],
)
async def test_unknown_things_answer_ok_false(
    client: AsyncWebClient, call: Callable[[AsyncWebClient], Awaitable[Any]], error: str
) -> None:
    with pytest.raises(SlackApiError) as raised:
        await call(client)
    assert raised.value.response["error"] == error


async def test_a_rate_limit_is_a_429_with_retry_after_then_clears(
    client: AsyncWebClient, fake: SandboxSlack
) -> None:
    fake.fail("chat.postMessage", retry_after=7)
    with pytest.raises(SlackApiError) as raised:
        await client.chat_postMessage(channel="C1", text="hi")
    assert raised.value.response.status_code == 429
    assert raised.value.response.headers["Retry-After"] == "7"
    assert raised.value.response["error"] == "ratelimited"
    assert (await client.chat_postMessage(channel="C1", text="hi"))["ok"]
    assert [call.failed for call in fake.calls_to("chat.postMessage")] == [True, False]


async def test_server_errors_are_consumed_in_order(client: AsyncWebClient, fake: SandboxSlack) -> None:
    fake.fail("chat.update", times=2, status=500)
    fake.fail("chat.update", status=503)
    statuses = []
    for _ in range(4):
        try:
            await client.chat_update(channel="C1", ts="1.1", text="x")
            statuses.append(200)
        except SlackApiError as error:
            statuses.append(error.response.status_code)
    assert statuses == [500, 500, 503, 200]


async def test_an_error_forever_keeps_failing(client: AsyncWebClient, fake: SandboxSlack) -> None:
    fake.fail("chat.postMessage", error="channel_not_found", times=None)
    for _ in range(3):
        with pytest.raises(SlackApiError) as raised:
            await client.chat_postMessage(channel="C404", text="hi")
        assert raised.value.response.status_code == 200
        assert raised.value.response["error"] == "channel_not_found"


async def test_response_url_posts_are_recorded(fake: SandboxSlack) -> None:
    webhook = AsyncWebhookClient(fake.response_url("r1"))
    answer = await webhook.send(text="You are not an approver for this request.", response_type="ephemeral")
    assert answer.status_code == 200
    assert fake.responses == [
        {"text": "You are not an approver for this request.", "response_type": "ephemeral"}
    ]
    assert fake.responses_to("r1") == fake.responses
    assert fake.responses_to("r2") == []


async def test_wait_for_calls_returns_once_they_arrive(client: AsyncWebClient, fake: SandboxSlack) -> None:
    async def post_later() -> None:
        for _ in range(2):
            await asyncio.sleep(0.01)
            await client.chat_postMessage(channel="C1", text="hi")

    task = asyncio.create_task(post_later())
    calls = await fake.wait_for_calls("chat.postMessage", 2, timeout=5)
    assert len(calls) == 2
    await task


async def test_wait_for_calls_times_out_when_they_do_not(fake: SandboxSlack) -> None:
    with pytest.raises(TimeoutError, match=r"expected 1 calls to chat\.update"):
        await fake.wait_for_calls("chat.update", 1, timeout=0.05)


async def test_with_a_required_token_other_tokens_are_refused_as_slack_does(fake: SandboxSlack) -> None:
    fake.required_token = "xoxb-sandbox-right"
    for token, error in (("xoxb-wrong", "invalid_auth"), ("", "not_authed")):
        with pytest.raises(SlackApiError) as refused:
            await AsyncWebClient(token=token or None, base_url=fake.api_url).chat_postMessage(
                channel="C0HIRING", text="forged"
            )
        assert refused.value.response["error"] == error
    assert fake.messages_in("C0HIRING") == []
    right = AsyncWebClient(token="xoxb-sandbox-right", base_url=fake.api_url)
    assert (await right.chat_postMessage(channel="C0HIRING", text="card"))["ok"] is True


async def test_malformed_bodies_and_arguments_get_slack_errors_not_500s(fake: SandboxSlack) -> None:
    async with ClientSession() as session:
        async with session.post(
            fake.api_url + "chat.postMessage", data=b"{not json", headers={"Content-Type": "application/json"}
        ) as resp:
            assert (resp.status, await resp.json()) == (200, {"ok": False, "error": "invalid_json"})
        async with session.get(fake.api_url + "conversations.history?channel=C0HIRING&limit=many") as resp:
            assert (resp.status, await resp.json()) == (200, {"ok": False, "error": "invalid_arguments"})
