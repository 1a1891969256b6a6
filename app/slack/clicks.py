"""Deciding stored clicks: resolve the clicker with Slack, then let the domain decide in one transaction.

This module only translates: who clicked (Slack's users and user groups), what to tell them (an
ephemeral note, or a step-up link), and when to try again. Whether the click is refused, recorded or
held for an MFA step-up is approvals.requests.click_rules.decide_click.

A clicker Slack cannot resolve is asked about again with exponential back-off (the schedule is kept on
the click's row), and after MAX_IDENTITY_ATTEMPTS the click is refused with a `click_refused` event
(`identity_unavailable`); Slack saying there is no such user refuses it at once (`unknown_user`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncEngine

from app.database import connection_for
from app.oidc.routes import step_up_url
from app.slack.cards import ephemeral_text, step_up_prompt
from app.slack.directory import SlackDirectory, UnknownSlackUser
from approvals.errors import NotFound
from approvals.identity.step_up import Held
from approvals.requests.click_inbox import (
    NewClick,
    claim_click,
    count_attempt,
    finish_click,
    read_click,
    store_clicks,
    stranded_clicks,
)
from approvals.requests.click_rules import ClickOutcome, approver_groups, decide_click, refuse_click
from approvals.requests.decisions import Click, Clicker, RefusalReason, Refused

log = structlog.get_logger("approvals.slack")

# Defaults of ClickProcessor's limits. A click still undecided after STRANDED_AFTER belongs to a
# process that died after acking it.
STRANDED_AFTER = dt.timedelta(seconds=5)
DECIDING_AT_ONCE = 4
# Clicks waiting to be decided are kept as ids: a backlog costs an int each, where a listener
# suspended until its turn kept Bolt's whole request alive (thousands of them made every full
# garbage collection stop the event loop, acks included, for a few hundred ms). Beyond this many,
# a stored click waits in the inbox for the stranded-click sweep instead.
MAX_WAITING = 10_000
# A clicker Slack cannot resolve (users.info failing) is asked about at most this many times, the
# n-th retry IDENTITY_RETRY_FIRST * 2**(n-1) after the failure before it, at most IDENTITY_RETRY_MAX.
MAX_IDENTITY_ATTEMPTS = 5
IDENTITY_RETRY_FIRST = dt.timedelta(seconds=5)
IDENTITY_RETRY_MAX = dt.timedelta(minutes=5)


def identity_retry_delay(failed_attempts: int) -> dt.timedelta:
    """How long after its `failed_attempts`-th failure (1, 2, ...) a click is tried again."""
    doublings = min(max(failed_attempts - 1, 0), 16)  # bounded: the cap is reached long before
    return min(IDENTITY_RETRY_FIRST * (1 << doublings), IDENTITY_RETRY_MAX)


@dataclass(frozen=True)
class StepUpLinks:
    """What a click needs to know of the configured IdP: whose logins count, and where to send people."""

    issuer: str
    public_url: str


class ClickInbox:
    """Group commit for clicks: the ones that arrive while a write is in flight go in the next one.

    One writer, one short transaction per batch: a burst of clicks costs a few INSERTs instead of one
    transaction (and one pooled connection) each, which is what keeps acks quick under load. Nothing
    waits on purpose: a lone click is written at once.
    """

    def __init__(
        self, engine: AsyncEngine, max_batch: int = 100, single_statements: AsyncEngine | None = None
    ) -> None:
        self._engine = engine
        self._single = single_statements
        self._max_batch = max_batch
        self._waiting: list[tuple[NewClick, asyncio.Future[int | None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def store(self, click: NewClick) -> int | None:
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((click, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())
        return await future

    async def _write(self) -> None:
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            try:
                # On PostgreSQL (the one backend with a single-statement pool) store_clicks is one statement.
                async with connection_for(self._engine, self._single, one_statement=True) as conn:
                    ids = await store_clicks(conn, [click for click, _ in batch])
            except BaseException as exc:  # every waiter learns its click was not kept
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("stopped"))
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), stored in zip(batch, ids, strict=True):
                if not future.done():
                    future.set_result(stored)


class ClickProcessor:
    """Store-then-ack, decide-after: Slack never resends an acked interaction, so we keep it first.

    Limits: `deciding_at_once` clicks are decided at a time; at most `max_waiting` wait (as ids) for
    a worker, the others wait in the inbox for `process_stranded`, which takes clicks left undecided
    for `stranded_after`.
    """

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        client: AsyncWebClient,
        directory: SlackDirectory,
        after_commit: Callable[[str], None],
        step_up: StepUpLinks | None = None,
        single_statements: AsyncEngine | None = None,
        deciding_at_once: int = DECIDING_AT_ONCE,
        max_waiting: int = MAX_WAITING,
        stranded_after: dt.timedelta = STRANDED_AFTER,
    ) -> None:
        self._step_up = step_up
        self._engine = engine
        self._client = client
        self._directory = directory
        self._after_commit = after_commit
        self._deciding_at_once = deciding_at_once
        self._max_waiting = max_waiting
        self._stranded_after = stranded_after
        # Deciding costs far more than storing: bounded, so a burst of clicks never delays new acks.
        self._deciding = asyncio.Semaphore(deciding_at_once)
        self._inbox = ClickInbox(engine, single_statements=single_statements)
        self._waiting: deque[int] = deque()
        self._queued: set[int] = set()  # waiting or being decided by a worker
        self._workers: set[asyncio.Task[None]] = set()
        self._closed = False
        self._full = False

    async def accept(self, *, dedupe_key: str, request_id: str, payload: dict[str, Any]) -> int | None:
        """Keep the click; None when it is a Slack retry or a replay. Returns once it is committed."""
        return await self._inbox.store(NewClick(dedupe_key, request_id, payload))

    def submit(self, click_id: int) -> None:
        """Have a stored click decided soon by one of `deciding_at_once` workers; returns at once."""
        if self._closed or click_id in self._queued:
            return
        if len(self._queued) >= self._max_waiting:
            if not self._full:
                log.warning("click_queue_full", waiting=len(self._queued))  # the sweep takes the rest
            self._full = True
            return
        self._full = False
        self._queued.add(click_id)
        self._waiting.append(click_id)
        if len(self._workers) < self._deciding_at_once:
            worker = asyncio.get_running_loop().create_task(self._work())
            self._workers.add(worker)

    def close(self) -> None:
        """Take no more clicks (at shutdown): the ones queued wait in the inbox for the next start."""
        self._closed = True
        self._waiting.clear()
        self._queued.clear()

    async def _work(self) -> None:
        try:
            while self._waiting:
                click_id = self._waiting.popleft()
                try:
                    await self._decide_or_drop(click_id)
                except Exception:  # the click stays in the inbox: the stranded-click sweep tries again
                    log.exception("click_not_decided", click_id=click_id)
                finally:
                    self._queued.discard(click_id)
        finally:
            # Here, not in a done callback a loop turn later: a click submitted in between would
            # otherwise find every worker slot taken by workers that have already stopped.
            task = asyncio.current_task()
            if task is not None:
                self._workers.discard(task)

    async def _decide_or_drop(self, click_id: int) -> None:
        try:
            await self.process(click_id)
        except NotFound:
            # Its request does not exist (a forged id that looked right): nothing can ever decide
            # it, so it leaves the inbox instead of coming back to every sweep.
            log.warning("click_for_unknown_request", click_id=click_id)
            async with self._engine.begin() as conn:
                await finish_click(conn, click_id)

    async def process(self, click_id: int) -> ClickOutcome | None:
        """Decide one stored click; None when another process has it or it is already decided."""
        async with self._deciding:
            return await self._process(click_id)

    async def _process(self, click_id: int) -> ClickOutcome | None:
        async with self._engine.connect() as conn:
            stored = await read_click(conn, click_id)
            if stored is None or stored.status != "pending":
                return None
            groups = await approver_groups(conn, stored.request_id)
        payload = dict(stored.payload)
        try:
            clicker = await self._directory.clicker(payload["user_id"], payload.get("team_id"), list(groups))
        except (UnknownSlackUser, SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            return await self._unresolved(stored, payload, exc)
        click = _click_of(stored.request_id, payload, clicker)
        issuer = self._step_up.issuer if self._step_up is not None else None
        async with self._engine.begin() as conn:
            if await claim_click(conn, click_id) is None:
                return None
            outcome = await decide_click(conn, click, mfa_issuer=issuer)
            await finish_click(conn, click_id)
        self._after_commit(stored.request_id)
        if isinstance(outcome, Refused):
            await self._tell(payload, ephemeral_text(outcome.reason))
        elif isinstance(outcome, Held):
            # Held only when an issuer was given, so the links are configured.
            assert self._step_up is not None
            url = step_up_url(self._step_up.public_url, outcome.intent_id)
            text, blocks = step_up_prompt(url, click.choice, outcome.expires_at)
            await self._tell(payload, text, blocks, dm_fallback=True)
        log.info(
            "click_decided",
            request_id=stored.request_id,
            user=clicker.user_id,
            choice=click.choice,
            outcome=type(outcome).__name__,
            detail=getattr(outcome, "reason", getattr(outcome, "status", None)),
        )
        return outcome

    async def _unresolved(self, stored: Any, payload: dict[str, Any], exc: Exception) -> Refused | None:
        """Slack could not say who clicked: count the attempt and back off, or refuse the click when
        Slack knows no such user or the attempts are used up. None while the click waits for a retry.
        """
        failed = int(stored.attempts) + 1
        final = isinstance(exc, UnknownSlackUser) or failed >= MAX_IDENTITY_ATTEMPTS
        retry_in = identity_retry_delay(failed)
        async with self._engine.begin() as conn:
            # Conditional on the count read before asking Slack: of two processes that asked at once,
            # one counts the failure and the other leaves the click to it.
            if not await count_attempt(conn, stored.id, seen=int(stored.attempts), retry_in=retry_in):
                return None
            if not final:
                log.warning(
                    "click_identity_unavailable",
                    click_id=stored.id,
                    attempts=failed,
                    retry_in=retry_in.total_seconds(),
                    error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                )
                return None
            reason: RefusalReason = (
                "unknown_user" if isinstance(exc, UnknownSlackUser) else "identity_unavailable"
            )
            # Who clicked, as far as the payload says: Slack gave no name, email or groups.
            unresolved = Clicker(
                user_id=payload["user_id"], team_id=payload.get("team_id"), name=None, email=None
            )
            outcome = await refuse_click(conn, _click_of(stored.request_id, payload, unresolved), reason)
            await finish_click(conn, stored.id)
        self._after_commit(stored.request_id)
        log.warning(
            "click_refused", click_id=stored.id, request_id=stored.request_id, reason=reason, attempts=failed
        )
        await self._tell(payload, ephemeral_text(reason))
        return outcome

    async def _tell(
        self,
        payload: dict[str, Any],
        text: str,
        blocks: list[dict[str, Any]] | None = None,
        *,
        dm_fallback: bool = False,
    ) -> None:
        """An ephemeral note to the clicker; best effort, the audit event is the record.

        A step-up link must reach the approver even when we lack the channel: then it goes by DM.
        """
        channel = payload.get("channel_id")
        if not channel and not dm_fallback:
            return
        try:
            if channel:
                await self._client.chat_postEphemeral(
                    channel=channel, user=payload["user_id"], text=text, blocks=blocks
                )
            else:
                await self._client.chat_postMessage(channel=payload["user_id"], text=text, blocks=blocks)
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("ephemeral_failed", error=str(exc))

    async def process_stranded(self) -> int:
        """Queue clicks whose process died between the ack and the decision (or that waited long);
        returns how many were not queued here already."""
        async with self._engine.connect() as conn:
            ids = await stranded_clicks(conn, older_than=self._stranded_after)
        new = [click_id for click_id in ids if click_id not in self._queued]
        for click_id in new:
            self.submit(click_id)
        return len(new)


def _click_of(request_id: str, payload: dict[str, Any], clicker: Clicker) -> Click:
    """The click as the domain takes it, from the payload the listener stored."""
    return Click(
        request_id=request_id,
        choice=payload["choice"],
        clicker=clicker,
        action_ts=payload["action_ts"],
        reason=payload.get("reason"),
    )
