"""Slack's side of the wire for tests: payloads in Slack's documented shapes, signed with the v0 scheme."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import ClientResponse, ClientSession
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import select

from app.sandbox.slack_api import TEAM_ID, SandboxSlack
from approvals.tables import slack_messages
from tests.conftest import Api, start_service, stop_service

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
_ACTION_TS = itertools.count(1)

USERS = {
    "U01COO": {"name": "cora", "real_name": "Cora Coo", "email": "coo@example.com"},
    "U02CFO": {"name": "finn", "real_name": "Finn Cfo", "email": "cfo@example.com"},
    "U03CEO": {"name": "cleo", "real_name": "Cleo Ceo", "email": "ceo@example.com"},
    "U07FIN": {"name": "fay", "real_name": "Fay Finance", "email": "fay@example.com"},
    "U09REC": {"name": "rex", "real_name": "Rex Recruiter", "email": "recruiter@example.com"},
}


def signed_headers(
    body: str, *, secret: str = SIGNING_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": SignatureVerifier(secret).generate_signature(timestamp=ts, body=body),
        "Content-Type": "application/x-www-form-urlencoded",
    }


def next_action_ts() -> str:
    return f"{1_700_000_000 + next(_ACTION_TS)}.{next(_ACTION_TS):06d}"


def block_actions(
    request_id: str,
    action_id: str,
    *,
    user: str,
    channel: str = "C0HIRING",
    message_ts: str = "1.000100",
    action_ts: str | None = None,
    response_url: str = "http://127.0.0.1:9/none",
) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {
            "id": user,
            "username": USERS.get(user, {}).get("name", "x"),
            "name": "x",
            "team_id": TEAM_ID,
        },
        "api_app_id": "A0APP",
        "token": "legacy-verification-token",
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
        },
        "trigger_id": "1337.42.abcdef",
        "team": {"id": TEAM_ID, "domain": "example"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel, "name": "hiring"},
        "message": {
            "type": "message",
            "ts": message_ts,
            "blocks": [{"type": "header", "block_id": "h", "text": {"type": "plain_text", "text": "Offer"}}],
        },
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [
            {
                "action_id": action_id,
                "block_id": "decide",
                "value": request_id,
                "type": "button",
                "action_ts": action_ts or next_action_ts(),
            }
        ],
    }


def slash_command(text: str = "", *, user: str = "U01COO") -> dict[str, str]:
    """The form Slack posts for `/approvals` typed in #hiring."""
    return {
        "token": "t",
        "team_id": TEAM_ID,
        "user_id": user,
        "user_name": "cora",
        "command": "/approvals",
        "text": text,
        "channel_id": "C0HIRING",
        "response_url": "http://127.0.0.1:9/none",
        "trigger_id": "1.2.3",
        "api_app_id": "A0APP",
    }


def view_submission(
    private_metadata: str, reason: str, *, user: str, view_id: str = "V0001"
) -> dict[str, Any]:
    return {
        "type": "view_submission",
        "team": {"id": TEAM_ID, "domain": "example"},
        "user": {"id": user, "username": "x", "name": "x", "team_id": TEAM_ID},
        "api_app_id": "A0APP",
        "token": "legacy-verification-token",
        "trigger_id": "1337.43.abcdef",
        "view": {
            "id": view_id,
            "team_id": TEAM_ID,
            "type": "modal",
            "callback_id": "reject_reason",
            "private_metadata": private_metadata,
            "hash": "1.abc",
            "blocks": [],
            "state": {
                "values": {"reason_block": {"reason_input": {"type": "plain_text_input", "value": reason}}}
            },
        },
        "response_urls": [],
        "is_enterprise_install": False,
    }


@dataclass
class SlackApi(Api):
    fake: SandboxSlack | None = None

    async def slack(self, payload: dict[str, Any], **headers: str) -> ClientResponse:
        body = urlencode({"payload": json.dumps(payload)})
        return await self.session.post(
            self.url("/slack/events"), data=body, headers={**signed_headers(body), **headers}
        )

    async def slack_form(self, form: dict[str, str], **headers: str) -> ClientResponse:
        body = urlencode(form)
        return await self.session.post(
            self.url("/slack/events"), data=body, headers={**signed_headers(body), **headers}
        )

    async def slack_event(self, event: dict[str, Any]) -> ClientResponse:
        body = json.dumps(
            {
                "token": "t",
                "team_id": TEAM_ID,
                "api_app_id": "A0APP",
                "event": event,
                "type": "event_callback",
                "event_id": "Ev01",
                "event_time": int(time.time()),
            }
        )
        headers = signed_headers(body) | {"Content-Type": "application/json"}
        return await self.session.post(self.url("/slack/events"), data=body, headers=headers)

    async def posted(self, request_id: str) -> list[Any]:
        async with self.container.engine.connect() as conn:
            return list(
                await conn.execute(select(slack_messages).where(slack_messages.c.request_id == request_id))
            )

    async def final(self, request_id: str) -> dict[str, Any]:
        return dict(await (await self.get(f"/v1/requests/{request_id}?wait=10")).json())


async def slack_service(database_url: str, **overrides: Any) -> AsyncIterator[SlackApi]:
    async with SandboxSlack() as fake:
        fake.users.update(USERS)
        fake.usergroups["S0FINANCE"] = ["U07FIN"]
        container, server = await start_service(
            database_url,
            slack_bot_token="xoxb-test",
            slack_signing_secret=SIGNING_SECRET,
            slack_api_url=fake.api_url,
            **overrides,
        )
        try:
            async with ClientSession() as session:
                api = SlackApi(
                    session=session, base=str(server.make_url("")), key="", container=container, fake=fake
                )
                api.key = await api.add_agent(
                    "hiring-bot",
                    ["send_offer_letter", "refund_customer", "approve_invoice", "sign_contract", "read_*"],
                )
                yield api
        finally:
            await stop_service(container, server)
