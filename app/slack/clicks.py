"""Deciding stored clicks: resolve the clicker with Slack, then record the decision in one transaction."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.slack.cards import ephemeral_text
from app.slack.directory import SlackDirectory
from approvals.decisions import Click, Duplicate, Recorded, Refused, approver_ids, record_click
from approvals.inbox import claim_click, count_attempt, finish_click, read_click, store_click, stranded_clicks
from approvals.tables import requests

log = structlog.get_logger("approvals.slack")

# A click still undecided after this long belongs to a process that died after acking it.
STRANDED_AFTER = dt.timedelta(seconds=5)
DECIDING_AT_ONCE = 4


class ClickProcessor:
    """Store-then-ack, decide-after: Slack never resends an acked interaction, so we keep it first."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        client: AsyncWebClient,
        directory: SlackDirectory,
        after_commit: Callable[[str], None],
    ) -> None:
        self._engine = engine
        self._client = client
        self._directory = directory
        self._after_commit = after_commit
        # Deciding costs far more than storing: bounded, so a burst of clicks never delays new acks.
        self._deciding = asyncio.Semaphore(DECIDING_AT_ONCE)

    async def accept(self, *, dedupe_key: str, request_id: str, payload: dict[str, Any]) -> int | None:
        """Keep the click (one short INSERT); None when it is a Slack retry or a replay."""
        async with self._engine.begin() as conn:
            return await store_click(conn, dedupe_key=dedupe_key, request_id=request_id, payload=payload)

    async def process(self, click_id: int) -> Recorded | Refused | Duplicate | None:
        """Decide one stored click; None when another process has it or it is already decided."""
        async with self._deciding:
            return await self._process(click_id)

    async def _process(self, click_id: int) -> Recorded | Refused | Duplicate | None:
        async with self._engine.connect() as conn:
            stored = await read_click(conn, click_id)
            if stored is None or stored.status != "pending":
                return None
            rule = (
                await conn.execute(select(requests.c.policy_rule).where(requests.c.id == stored.request_id))
            ).scalar()
        payload = dict(stored.payload)
        _users, groups = approver_ids(rule)
        try:
            clicker = await self._directory.clicker(payload["user_id"], payload.get("team_id"), groups)
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("click_identity_unavailable", click_id=click_id, error=str(exc))
            async with self._engine.begin() as conn:
                await count_attempt(conn, click_id)
            return None  # the stranded-click sweep tries again
        click = Click(
            request_id=stored.request_id,
            choice=payload["choice"],
            clicker=clicker,
            action_ts=payload["action_ts"],
            reason=payload.get("reason"),
        )
        async with self._engine.begin() as conn:
            if await claim_click(conn, click_id) is None:
                return None
            outcome = await record_click(conn, click)
            await finish_click(conn, click_id)
        self._after_commit(stored.request_id)
        if isinstance(outcome, Refused):
            await self._tell(payload, ephemeral_text(outcome.reason))
        log.info(
            "click_decided",
            request_id=stored.request_id,
            user=clicker.user_id,
            choice=click.choice,
            outcome=type(outcome).__name__,
            detail=getattr(outcome, "reason", getattr(outcome, "status", None)),
        )
        return outcome

    async def _tell(self, payload: dict[str, Any], text: str) -> None:
        """An ephemeral note to the clicker; best effort, the audit event is the record."""
        channel = payload.get("channel_id")
        if not channel:
            return
        try:
            await self._client.chat_postEphemeral(channel=channel, user=payload["user_id"], text=text)
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("ephemeral_failed", error=str(exc))

    async def process_stranded(self) -> int:
        """Decide clicks whose process died between the ack and the decision."""
        async with self._engine.connect() as conn:
            ids = await stranded_clicks(conn, older_than=STRANDED_AFTER)
        done = 0
        for click_id in ids:
            if await self.process(click_id) is not None:
                done += 1
        return done
