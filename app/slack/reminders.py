"""Reminder DMs from the outbox: one row fans out to one DM per approver who has not acted yet."""

from __future__ import annotations

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.dispatcher import Settlement
from app.slack.cards import escape_mrkdwn
from app.slack.delivery import classify
from app.slack.directory import SlackDirectory
from approvals.delivery.notifications import messages_of
from approvals.delivery.outbox import Claimed, enqueue
from approvals.requests.decisions import approver_ids
from approvals.requests.lifecycle import Status
from approvals.tables import decisions, requests

SLACK_REMIND_DM = "slack_remind_dm"


class SlackReminders:
    """Handlers for `slack_remind` (fan out) and `slack_remind_dm` (one DM, once)."""

    def __init__(self, *, engine: AsyncEngine, client: AsyncWebClient, directory: SlackDirectory) -> None:
        self._engine = engine
        self._client = client
        self._directory = directory

    async def fan_out(self, item: Claimed) -> Settlement:
        assert item.request_id is not None
        async with self._engine.connect() as conn:
            rule = (
                await conn.execute(select(requests.c.policy_rule).where(requests.c.id == item.request_id))
            ).scalar()
            decided = set(
                (
                    await conn.execute(
                        select(decisions.c.approver_id).where(decisions.c.request_id == item.request_id)
                    )
                ).scalars()
            )
        users, groups = approver_ids(rule)
        waiting = [user for user in await self._directory.people(users, groups) if user not in decided]
        request_id, reminder = item.request_id, item.payload.get("reminder", 1)

        async def queue(conn: AsyncConnection) -> None:
            for user in waiting:
                await enqueue(
                    conn,
                    kind=SLACK_REMIND_DM,
                    dedupe_key=f"{SLACK_REMIND_DM}:{request_id}:{reminder}:{user}",
                    request_id=request_id,
                    payload={**item.payload, "user": user},
                )

        return Settlement("delivered", target=",".join(waiting), then=queue)

    async def direct_message(self, item: Claimed) -> Settlement:
        assert item.request_id is not None
        user = str(item.payload["user"])
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(requests.c.title, requests.c.status, requests.c.expires_at).where(
                        requests.c.id == item.request_id
                    )
                )
            ).first()
            cards = await messages_of(conn, item.request_id)
        if row is None or row.status != Status.PENDING:
            return Settlement("skipped", target=user, error="no longer pending")
        link = next((c.permalink for c in cards if c.permalink), None)
        expiry = int(row.expires_at.timestamp())
        text = (
            f"Reminder ({item.payload.get('reminder')} of {item.payload.get('of')}): "
            f"\u201c{escape_mrkdwn(row.title)}\u201d awaits your decision; it expires "
            f"<!date^{expiry}^{{date_short_pretty}} at {{time}}|{row.expires_at.isoformat()}>."
            + (f" <{link}|Open the card>" if link else "")
        )
        try:
            await self._client.chat_postMessage(channel=user, text=text)
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            outcome = classify(exc, item.attempt)
            return Settlement(
                outcome.result,
                retry_in=outcome.retry_in,
                error=outcome.error,
                status_code=outcome.status_code,
                target=user,
            )
        return Settlement("delivered", target=user, status_code=200)
