"""Slack's side of the wire for the sandbox: what Slack sends the service when a person acts.

A click, a modal submission, a slash command or opening App Home on the sandbox page becomes the
payload Slack documents for it, signed with the v0 scheme (slack_sdk's SignatureVerifier) and POSTed
over HTTP to the service's /slack/events, so the service's Bolt app verifies and handles it exactly as
it handles Slack's. What the service answers inline (a slash command's ephemeral list, a modal's
validation errors) is given back to the page as Slack would show it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from slack_sdk.signature import SignatureVerifier

from app.sandbox.slack_api import TEAM_ID, SandboxSlack
from app.sandbox.workspace import Workspace

APP_ID = "A0SANDBOX"
# What a person's browser may wait for; the service answers Slack within 3 s by design.
_TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass(frozen=True)
class Answer:
    """How the service took an interaction: `ok`, or why not (`error`), and a modal's field errors."""

    ok: bool
    error: str | None = None
    errors: dict[str, str] = field(default_factory=dict)


class SlackSide:
    """Sends signed interactions to the service on behalf of the sandbox's people."""

    def __init__(self, *, slack: SandboxSlack, workspace: Workspace, events_url: str, signing_secret: str):
        self._slack = slack
        self._workspace = workspace
        self._events_url = events_url
        self._signer = SignatureVerifier(signing_secret)
        self._session: aiohttp.ClientSession | None = None
        self._event_ids = 0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def click(
        self,
        *,
        user_id: str,
        conversation: str,
        message_ts: str,
        action_id: str,
        block_id: str,
        value: str,
        ephemeral_id: str | None = None,
    ) -> Answer:
        """A button click on a message (or on one of the person's ephemerals) as `block_actions`."""
        user = self._user(user_id)
        if ephemeral_id is not None:
            ephemeral = next((e for e in self._slack.ephemerals_for(user_id) if e.id == ephemeral_id), None)
            if ephemeral is None:
                return Answer(False, "That message is gone.")
            message: dict[str, Any] = {"type": "message", "ts": ephemeral.ts, "blocks": ephemeral.blocks}
            container = {"type": "message", "message_ts": ephemeral.ts, "is_ephemeral": True}
            conversation = ephemeral.channel
        else:
            found = next(
                (m for m in self._slack.messages_in(conversation) if m.get("ts") == message_ts), None
            )
            if found is None:
                return Answer(False, "That message is gone.")
            message = {k: v for k, v in found.items() if k != "metadata"}
            container = {"type": "message", "message_ts": message_ts, "is_ephemeral": False}
        if not _has_action(message.get("blocks"), action_id, block_id, value):
            return Answer(False, "That button is not on the message.")
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": {"id": user_id, "username": user.handle, "name": user.handle, "team_id": TEAM_ID},
            "api_app_id": APP_ID,
            "token": "sandbox",
            "container": {**container, "channel_id": conversation},
            "trigger_id": self._slack.new_trigger(user_id),
            "team": {"id": TEAM_ID, "domain": "sandbox"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": conversation, "name": self._channel_name(conversation)},
            "message": message,
            "state": {"values": {}},
            "response_url": self._slack.response_url_for(user_id, conversation),
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": block_id,
                    "value": value,
                    "type": "button",
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        status, _ = await self._post_form({"payload": json.dumps(payload)})
        return _answer(status)

    async def submit(self, *, user_id: str, view_id: str, values: dict[str, dict[str, str]]) -> Answer:
        """The open modal's submit button, as `view_submission` with the typed values as its state."""
        user = self._user(user_id)
        view = self._slack.modals.get(user_id)
        if view is None or view.get("id") != view_id:
            return Answer(False, "That dialog is closed.")
        state = {
            block: {action: {"type": "plain_text_input", "value": text} for action, text in inputs.items()}
            for block, inputs in values.items()
        }
        payload = {
            "type": "view_submission",
            "team": {"id": TEAM_ID, "domain": "sandbox"},
            "user": {"id": user_id, "username": user.handle, "name": user.handle, "team_id": TEAM_ID},
            "api_app_id": APP_ID,
            "token": "sandbox",
            "trigger_id": self._slack.new_trigger(user_id),
            "view": {**view, "state": {"values": state}, "hash": f"{view_id}.sandbox"},
            "response_urls": [],
            "is_enterprise_install": False,
        }
        status, body = await self._post_form({"payload": json.dumps(payload)})
        if status != 200:
            return _answer(status)
        answer = _json_or_none(body)
        if isinstance(answer, dict) and answer.get("response_action") == "errors":
            errors = answer.get("errors")
            errors = errors if isinstance(errors, dict) else {}
            return Answer(False, "Fix the highlighted fields.", {str(k): str(v) for k, v in errors.items()})
        self._slack.close_modal(user_id, view_id)
        return Answer(True)

    async def command(self, *, user_id: str, conversation: str, text: str) -> Answer:
        """A slash command typed in `conversation`; its inline answer shows as an ephemeral."""
        user = self._user(user_id)
        command, _, rest = text.strip().partition(" ")
        form = {
            "token": "sandbox",
            "team_id": TEAM_ID,
            "team_domain": "sandbox",
            "channel_id": conversation,
            "channel_name": self._channel_name(conversation),
            "user_id": user_id,
            "user_name": user.handle,
            "command": command,
            "text": rest.strip(),
            "api_app_id": APP_ID,
            "response_url": self._slack.response_url_for(user_id, conversation),
            "trigger_id": self._slack.new_trigger(user_id),
        }
        status, body = await self._post_form(form)
        if status != 200:
            return _answer(status)
        answer = _json_or_none(body)
        if isinstance(answer, dict) and (answer.get("text") or answer.get("blocks")):
            self._slack.add_ephemeral(
                conversation, user_id, str(answer.get("text") or ""), answer.get("blocks")
            )
        elif body.strip():
            self._slack.add_ephemeral(conversation, user_id, body.decode(errors="replace"), [])
        return Answer(True)

    async def open_home(self, *, user_id: str) -> Answer:
        """The person opened the app's Home tab: the `app_home_opened` event."""
        self._user(user_id)
        self._event_ids += 1
        body = json.dumps(
            {
                "token": "sandbox",
                "team_id": TEAM_ID,
                "api_app_id": APP_ID,
                "event": {
                    "type": "app_home_opened",
                    "user": user_id,
                    "channel": "D" + user_id[1:],
                    "tab": "home",
                    "event_ts": f"{time.time():.6f}",
                },
                "type": "event_callback",
                "event_id": f"EvSANDBOX{self._event_ids:06d}",
                "event_time": int(time.time()),
            }
        )
        status, _ = await self._post(body, "application/json")
        return _answer(status)

    # -- the wire -------------------------------------------------------------------------------------

    async def _post_form(self, form: dict[str, str]) -> tuple[int, bytes]:
        return await self._post(urlencode(form), "application/x-www-form-urlencoded")

    async def _post(self, body: str, content_type: str) -> tuple[int, bytes]:
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": str(self._signer.generate_signature(timestamp=timestamp, body=body)),
        }
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=_TIMEOUT)
        try:
            async with self._session.post(self._events_url, data=body.encode(), headers=headers) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 0, str(exc).encode()

    def _user(self, user_id: str) -> Any:
        try:
            return self._workspace.member(user_id)
        except KeyError:
            raise UnknownPerson(user_id) from None

    def _channel_name(self, conversation: str) -> str:
        for channel in self._workspace.channels:
            if channel.channel_id == conversation:
                return channel.name
        return "directmessage"


class UnknownPerson(Exception):
    """The sandbox has no such user."""


def _has_action(blocks: Any, action_id: str, block_id: str, value: str) -> bool:
    """Whether the message holds this button: the page may only press what the service put there."""
    for block in blocks if isinstance(blocks, list) else []:
        if not isinstance(block, dict) or block.get("block_id", "") != block_id:
            continue
        elements = block.get("elements")
        elements = list(elements) if isinstance(elements, list) else []
        if isinstance(block.get("accessory"), dict):
            elements.append(block["accessory"])
        for element in elements:
            if (
                isinstance(element, dict)
                and element.get("action_id") == action_id
                and str(element.get("value", "")) == value
            ):
                return True
    return False


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body.strip() else None
    except ValueError:
        return None


def _answer(status: int) -> Answer:
    if status == 200:
        return Answer(True)
    if status == 0:
        return Answer(False, "The service did not answer.")
    return Answer(False, f"The service answered HTTP {status}.")
