"""Slack side effects from the outbox: fan a request out to its destinations, post cards, update them."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import aiohttp
import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.dispatcher import Settlement, backoff
from app.metrics import Metrics
from app.slack.cards import build_card
from app.slack.directory import SlackDirectory
from approvals.delivery.notifications import (
    card_destinations,
    message_for,
    messages_of,
    record_message,
    record_notification_failure,
)
from approvals.delivery.outbox import SLACK_POST, Claimed, enqueue
from approvals.requests.decisions import approver_ids
from approvals.requests.views import load_request_view
from approvals.tables import agents, outbox, requests

log = structlog.get_logger("approvals.slack")

# Errors no retry can fix: the operator must act (invite the bot, fix the channel or the token).
PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "invalid_auth",
        "account_inactive",
        "is_archived",
        "user_not_found",
        "token_revoked",
        "missing_scope",
        "not_authed",
        "cannot_dm_bot",
    }
)
MAX_ATTEMPTS = 20

# Every card carries Slack message metadata naming its request and destination, so a post repeated
# after a crash (Slack accepted it, the process died before recording it) can find the card it already
# made instead of making a second live one. Reading it back needs channels:history, groups:history
# and im:history.
CARD_EVENT_TYPE = "approval_card"
# How far before the outbox row's creation the history search starts: room for clock skew between the
# database server and Slack.
RECONCILE_LOOKBACK = dt.timedelta(minutes=2)
HISTORY_PAGE_SIZE = 200
HISTORY_MAX_PAGES = 10
# The history lookup cannot run (scope not granted yet, bot not in the channel): post as before, the
# post itself then reports any real problem with the destination.
LOOKUP_UNAVAILABLE = frozenset(
    {"missing_scope", "not_in_channel", "channel_not_found", "not_allowed_token_type", "method_not_supported"}
)


def card_metadata(request_id: str, destination: str) -> dict[str, Any]:
    """The Slack message metadata that marks a card as ours, for one request and destination."""
    return {
        "event_type": CARD_EVENT_TYPE,
        "event_payload": {"request_id": request_id, "destination": destination},
    }


def is_card_of(
    message: dict[str, Any], *, request_id: str, destination: str, bot_user_id: str | None, bot_id: str | None
) -> bool:
    """A message from our bot whose metadata marks it as this request's card for this destination."""
    from_us = (bot_id is not None and message.get("bot_id") == bot_id) or (
        bot_user_id is not None and message.get("user") == bot_user_id
    )
    metadata = message.get("metadata") or {}
    payload = metadata.get("event_payload") or {}
    return (
        from_us
        and metadata.get("event_type") == CARD_EVENT_TYPE
        and payload.get("request_id") == request_id
        and payload.get("destination", destination) == destination
    )


def classify(exc: Exception, attempt: int) -> Settlement:
    """Turn a Slack or network failure into retry-later or failed-for-good."""
    if isinstance(exc, SlackApiError):
        status = exc.response.status_code
        error = str(exc.response.get("error") or f"http_{status}")
        if status == 429:
            retry_after = float(
                exc.response.headers.get("Retry-After", exc.response.headers.get("retry-after", 1))
            )
            return Settlement("retry", retry_in=max(retry_after, 1.0), error="ratelimited", status_code=429)
        if error in PERMANENT_ERRORS:
            return Settlement("failed", error=error, status_code=status)
        if attempt >= MAX_ATTEMPTS:
            return Settlement("failed", error=error, status_code=status)
        return Settlement("retry", retry_in=backoff(attempt), error=error, status_code=status)
    if isinstance(exc, aiohttp.ClientError | TimeoutError) and attempt < MAX_ATTEMPTS:
        return Settlement("retry", retry_in=backoff(attempt), error=f"{type(exc).__name__}: {exc}")
    raise exc


class SlackDelivery:
    """The outbox handlers for slack_notify, slack_post and slack_update rows."""

    def __init__(
        self, *, engine: AsyncEngine, client: AsyncWebClient, directory: SlackDirectory, metrics: Metrics
    ) -> None:
        self._engine = engine
        self._client = client
        self._directory = directory
        self._metrics = metrics
        self._bot: tuple[str | None, str | None] | None = None

    async def _card(self, request_id: str) -> tuple[str, list[dict[str, Any]]] | None:
        async with self._engine.connect() as conn:
            view = await load_request_view(conn, request_id)
            row = (
                await conn.execute(
                    select(agents.c.name, agents.c.owner, requests.c.policy_rule)
                    .select_from(requests.join(agents, agents.c.id == requests.c.agent_id))
                    .where(requests.c.id == request_id)
                )
            ).first()
        if view is None or row is None:
            return None
        redact = list((row.policy_rule or {}).get("redact", []))
        return build_card(view, agent_name=row.name, agent_owner=row.owner, redact=redact)

    async def notify(self, item: Claimed) -> Settlement:
        """Queue one post per destination, so a failure at one never re-posts another."""
        assert item.request_id is not None
        async with self._engine.connect() as conn:
            rule = (
                await conn.execute(select(requests.c.policy_rule).where(requests.c.id == item.request_id))
            ).scalar()
        if item.payload.get("escalation"):
            # Escalation: the added approvers each get the card in a DM, whatever the policy's channel.
            added = (rule or {}).get("escalated_to") or {}
            destinations = await self._directory.people(
                list(added.get("users", [])), list(added.get("usergroups", []))
            )
        else:
            users, groups = approver_ids(rule)
            dm_users = (
                await self._directory.people(users, groups) if rule and rule.get("dm_approvers") else users
            )
            destinations = card_destinations(rule, dm_users)
        request_id = item.request_id

        async def queue_posts(conn: AsyncConnection) -> None:
            for destination in destinations:
                await enqueue(
                    conn,
                    kind=SLACK_POST,
                    dedupe_key=f"{SLACK_POST}:{request_id}:{destination}",
                    request_id=request_id,
                    payload={"destination": destination},
                )

        return Settlement("delivered", target=",".join(destinations), then=queue_posts)

    async def post(self, item: Claimed) -> Settlement:
        """Post the card to one destination, once; remember where it landed.

        A repeated attempt first asks Slack whether an earlier one already posted the card (found by its
        metadata) and records that card instead: a crash between Slack's answer and our commit, or a
        timeout after Slack accepted the post, never leaves two live cards.
        """
        assert item.request_id is not None
        destination = str(item.payload["destination"])
        async with self._engine.connect() as conn:
            if await message_for(conn, item.request_id, destination) is not None:
                return Settlement("skipped", target=destination, error="already posted")
            queued_at = (
                (await conn.execute(select(outbox.c.created_at).where(outbox.c.id == item.id))).scalar()
                if item.attempt > 1
                else None
            )
        if item.attempt > 1:
            # An earlier attempt may have posted and died before recording it (or timed out after Slack
            # accepted it): look for that card before making another.
            try:
                found = await self._find_posted(item.request_id, destination, since=queued_at)
            except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
                if isinstance(exc, SlackApiError) and exc.response.get("error") in LOOKUP_UNAVAILABLE:
                    log.warning(
                        "slack_card_lookup_unavailable",
                        request_id=item.request_id,
                        destination=destination,
                        error=exc.response.get("error"),
                    )
                    found = None
                else:
                    outcome = replace(classify(exc, item.attempt), target=destination)
                    if outcome.result == "failed":
                        return self._failed(item.request_id, destination, outcome)
                    return replace(outcome, error=f"looking for an earlier card: {outcome.error}")
            if found is not None:
                channel, ts = found
                log.info("slack_card_reconciled", request_id=item.request_id, channel=channel, ts=ts)
                return await self._posted(item.request_id, destination, channel, ts)
        card = await self._card(item.request_id)
        if card is None:
            return Settlement("failed", target=destination, error="request not found")
        text, blocks = card
        try:
            response = await self._client.chat_postMessage(
                channel=destination,
                text=text,
                blocks=blocks,
                metadata=card_metadata(item.request_id, destination),
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            outcome = classify(exc, item.attempt)
            if outcome.result == "failed":
                return self._failed(item.request_id, destination, outcome)
            return Settlement(
                outcome.result,
                retry_in=outcome.retry_in,
                error=outcome.error,
                status_code=outcome.status_code,
                target=destination,
            )
        self._metrics.slack_cards_posted.inc()
        return await self._posted(item.request_id, destination, str(response["channel"]), str(response["ts"]))

    async def _posted(self, request_id: str, destination: str, channel: str, ts: str) -> Settlement:
        """Settle a post whose card is live at channel/ts: record it with the attempt."""
        permalink = await self._permalink(channel, ts)

        async def remember(conn: AsyncConnection) -> None:
            await record_message(
                conn,
                request_id=request_id,
                destination=destination,
                channel=channel,
                ts=ts,
                permalink=permalink,
            )

        return Settlement("delivered", target=destination, status_code=200, then=remember)

    async def _bot_identity(self) -> tuple[str | None, str | None]:
        """Our bot's user id and bot id (auth.test), asked once."""
        if self._bot is None:
            response = await self._client.auth_test()
            user_id, bot_id = response.get("user_id"), response.get("bot_id")
            self._bot = (str(user_id) if user_id else None, str(bot_id) if bot_id else None)
        return self._bot

    async def _find_posted(
        self, request_id: str, destination: str, *, since: dt.datetime | None
    ) -> tuple[str, str] | None:
        """(channel, ts) of this request's card already posted to `destination`, if Slack has one."""
        channel = destination
        if destination[:1] in ("U", "W"):
            # A card for a user went to the bot's DM with them: history is read from that channel.
            opened = await self._client.conversations_open(users=destination)
            channel = str(opened["channel"]["id"])
        bot_user_id, bot_id = await self._bot_identity()
        oldest = None
        if since is not None:
            start = since if since.tzinfo is not None else since.replace(tzinfo=dt.UTC)
            oldest = f"{(start - RECONCILE_LOOKBACK).timestamp():.6f}"
        cursor: str | None = None
        for _ in range(HISTORY_MAX_PAGES):
            response = await self._client.conversations_history(
                channel=channel,
                oldest=oldest,
                include_all_metadata=True,
                limit=HISTORY_PAGE_SIZE,
                cursor=cursor,
            )
            for message in response.get("messages") or []:
                if is_card_of(
                    message,
                    request_id=request_id,
                    destination=destination,
                    bot_user_id=bot_user_id,
                    bot_id=bot_id,
                ):
                    return channel, str(message["ts"])
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if not response.get("has_more") or cursor is None:
                return None
        log.warning("slack_card_lookup_truncated", request_id=request_id, channel=channel)
        return None

    def _failed(self, request_id: str, destination: str, outcome: Settlement) -> Settlement:
        self._metrics.slack_delivery_failures.labels(outcome.error or "unknown").inc()
        log.error(
            "slack_card_undeliverable", request_id=request_id, destination=destination, error=outcome.error
        )

        async def mark(conn: AsyncConnection) -> None:
            await record_notification_failure(
                conn, request_id=request_id, destination=destination, error=outcome.error or "unknown"
            )

        return Settlement(
            "failed", error=outcome.error, status_code=outcome.status_code, target=destination, then=mark
        )

    async def _permalink(self, channel: str, ts: str) -> str | None:
        try:
            response = await self._client.chat_getPermalink(channel=channel, message_ts=ts)
            return str(response["permalink"])
        except (SlackApiError, aiohttp.ClientError, TimeoutError):
            return None  # a card without a link is still a card

    async def update(self, item: Claimed) -> Settlement:
        """Redraw every card of the request from its current state (state, who, when, why)."""
        assert item.request_id is not None
        async with self._engine.connect() as conn:
            messages = await messages_of(conn, item.request_id)
        if not messages:
            return Settlement("skipped", error="no cards posted")
        card = await self._card(item.request_id)
        if card is None:
            return Settlement("failed", error="request not found")
        text, blocks = card
        for message in messages:
            try:
                await self._client.chat_update(
                    channel=message.channel, ts=message.ts, text=text, blocks=blocks
                )
            except SlackApiError as exc:
                if exc.response.get("error") in (
                    "message_not_found",
                    "cant_update_message",
                    "channel_not_found",
                ):
                    log.warning("slack_card_gone", request_id=item.request_id, channel=message.channel)
                    continue
                return classify(exc, item.attempt)
            except (aiohttp.ClientError, TimeoutError) as exc:
                return classify(exc, item.attempt)
        return Settlement("delivered", target=",".join(m.channel for m in messages), status_code=200)
