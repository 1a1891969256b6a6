"""Bolt listeners: Approve and Reject clicks, the reason modal, `/approvals`, and App Home.

Each listener parses, stores or reads, acknowledges inside Slack's 3 seconds, and works after.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import structlog
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncEngine

from app.failpoints import failpoint
from app.slack.cards import build_home_view, build_pending_list, build_reject_modal
from app.slack.clicks import ClickProcessor
from app.slack.directory import SlackDirectory
from app.slack.ids import MAX_REASON, REASON_BLOCK, REASON_INPUT, SLASH_COMMAND, ActionId, CallbackId
from app.storable_text import unstorable
from approvals.requests.awaiting import pending_requests
from approvals.requests.decisions import approver_ids

log = structlog.get_logger("approvals.slack")
REQUEST_ID = re.compile(r"req_[0-9a-f]{24}")


def _click_payload(body: dict[str, Any], choice: str) -> dict[str, Any]:
    action = body["actions"][0]
    container = body.get("container") or {}
    return {
        "choice": choice,
        "user_id": body["user"]["id"],
        "team_id": (body.get("team") or {}).get("id") or body["user"].get("team_id"),
        "action_ts": action["action_ts"],
        "channel_id": container.get("channel_id") or (body.get("channel") or {}).get("id"),
        "message_ts": container.get("message_ts"),
    }


async def waiting_for(engine: AsyncEngine, directory: SlackDirectory, user_id: str) -> list[dict[str, Any]]:
    """Pending requests this user may decide (listed as a user, or a member of a listed group)."""
    async with engine.connect() as conn:
        pending = await pending_requests(conn)
    mine = []
    for item in pending:
        users, groups = approver_ids(item["policy_rule"])
        if user_id in users or await directory.in_any_group(user_id, groups):
            mine.append(item)
    return mine


def register(
    app: AsyncApp, *, engine: AsyncEngine, clicks: ClickProcessor, directory: SlackDirectory
) -> None:
    """Attach every listener to the Bolt app."""

    @app.action(ActionId.APPROVE.value)
    async def approve(ack: AsyncAck, body: dict[str, Any]) -> None:
        request_id = str(body["actions"][0].get("value", ""))
        if not REQUEST_ID.fullmatch(request_id):
            await ack()
            return
        payload = _click_payload(body, "approve")
        dedupe = f"action:{payload['team_id']}:{payload['user_id']}:{payload['action_ts']}"
        click_id = await clicks.accept(dedupe_key=dedupe, request_id=request_id, payload=payload)
        await ack()  # only now: the click is stored and survives a crash
        failpoint("after_click_ack")  # crash-safety tests only; inert unless APPROVALS_FAILPOINT is set
        if click_id is not None:
            clicks.submit(click_id)

    @app.action(ActionId.REJECT.value)
    async def reject(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        request_id = str(body["actions"][0].get("value", ""))
        if not REQUEST_ID.fullmatch(request_id):
            return
        payload = _click_payload(body, "reject")
        title = ""
        for block in (body.get("message") or {}).get("blocks") or []:
            if block.get("type") == "header":
                title = str(block.get("text", {}).get("text", ""))
                break
        modal = build_reject_modal(request_id, title or "this request")
        modal["private_metadata"] = json.dumps(
            {"request_id": request_id, "action_ts": payload["action_ts"], "channel_id": payload["channel_id"]}
        )
        await client.views_open(trigger_id=body["trigger_id"], view=modal)

    @app.action(ActionId.VERIFY_SSO.value)
    async def verify_link_opened(ack: AsyncAck) -> None:
        await ack()  # the browser follows the button's URL; nothing to do here

    @app.view(CallbackId.REJECT_MODAL.value)
    async def reject_reason(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        value = view["state"]["values"].get(REASON_BLOCK, {}).get(REASON_INPUT, {}).get("value") or ""
        if not value.strip():
            await ack(response_action="errors", errors={REASON_BLOCK: "Say why you reject this request."})
            return
        if len(value) > MAX_REASON:
            await ack(
                response_action="errors", errors={REASON_BLOCK: f"Keep it under {MAX_REASON} characters."}
            )
            return
        if unstorable(value) is not None:
            # Said in the modal, where the approver can fix it: stored, a NUL would fail the decision's
            # write on PostgreSQL after the click was acknowledged.
            await ack(
                response_action="errors",
                errors={REASON_BLOCK: "Remove the control characters (such as NUL) from the reason."},
            )
            return
        try:
            meta = json.loads(view.get("private_metadata") or "{}")
            request_id = str(meta["request_id"])
        except (ValueError, KeyError, TypeError):
            await ack()
            return
        if not REQUEST_ID.fullmatch(request_id):
            await ack()
            return
        payload = {
            "choice": "reject",
            "reason": value.strip(),
            "user_id": body["user"]["id"],
            "team_id": (body.get("team") or {}).get("id") or body["user"].get("team_id"),
            "action_ts": str(meta.get("action_ts") or view["id"]),
            "channel_id": meta.get("channel_id"),
        }
        click_id = await clicks.accept(
            dedupe_key=f"view:{view['id']}", request_id=request_id, payload=payload
        )
        await ack()
        if click_id is not None:
            clicks.submit(click_id)

    @app.command(SLASH_COMMAND)
    async def list_pending(ack: AsyncAck, command: dict[str, Any]) -> None:
        items = await waiting_for(engine, directory, command["user_id"])
        now = dt.datetime.now(dt.UTC)
        await ack(
            response_type="ephemeral",
            text=f"{len(items)} awaiting your decision",
            blocks=build_pending_list(items, now=now),
        )

    @app.event("app_home_opened")
    async def home(event: dict[str, Any], client: AsyncWebClient) -> None:
        if event.get("tab", "home") != "home":
            return
        items = await waiting_for(engine, directory, event["user"])
        await client.views_publish(
            user_id=event["user"], view=build_home_view(items, now=dt.datetime.now(dt.UTC))
        )
