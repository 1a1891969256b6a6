"""Reminder DMs from the outbox: one row fans out to one DM per approver who has not acted yet."""

from __future__ import annotations

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.dispatcher import Settlement
from app.slack.cards import escape_mrkdwn
from app.slack.delivery import classify
from app.slack.directory import SlackDirectory
from approvals.delivery.outbox import Claimed, enqueue
from approvals.requests.reminders import reminder_due, reminder_targets

SLACK_REMIND_DM = "slack_remind_dm"


class SlackReminders:
    """Handlers for `slack_remind` (fan out) and `slack_remind_dm` (one DM, once).

    Who is reminded is approvals.requests.reminders' choice; this lists user groups' members with
    Slack, renders the DM and sends it.
    """

    def __init__(self, *, engine: AsyncEngine, client: AsyncWebClient, directory: SlackDirectory) -> None:
        self._engine = engine
        self._client = client
        self._directory = directory

    async def fan_out(self, item: Claimed) -> Settlement:
        assert item.request_id is not None
        async with self._engine.connect() as conn:
            targets = await reminder_targets(conn, item.request_id)
        people = await self._directory.people(list(targets.users), list(targets.usergroups))
        waiting = targets.of(people)
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
            due = await reminder_due(conn, item.request_id, user)
        if due is None:
            return Settlement("skipped", target=user, error="no longer awaits this approver")
        expiry = int(due.expires_at.timestamp())
        link = due.card_permalink
        text = (
            f"Reminder ({item.payload.get('reminder')} of {item.payload.get('of')}): "
            f"\u201c{escape_mrkdwn(due.title)}\u201d awaits your decision; it expires "
            f"<!date^{expiry}^{{date_short_pretty}} at {{time}}|{due.expires_at.isoformat()}>."
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
