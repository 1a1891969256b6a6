"""Agent callbacks from the outbox: the request's JSON, signed per Standard Webhooks, retried for 24 h."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from sqlalchemy import String, any_, bindparam, exists, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine

from app.delivery.webhooks import PinnedSessions, deliver, next_retry_delay
from app.dispatcher import Settlement
from app.metrics import Metrics
from app.ssrf import CallbackAllowList
from approvals.delivery.outbox import CALLBACK, Claimed
from approvals.requests.views import DECISION_VIEW_COLUMNS, VIEW_COLUMNS, render_request
from approvals.tables import agents, decisions, delivery_attempts, requests


def webhook_id(claimed: Claimed) -> str:
    """Stable across every retry of one delivery, so receivers can drop repeats."""
    return "msg_" + hashlib.sha256(claimed.dedupe_key.encode()).hexdigest()[:32]


# Callbacks in flight at once per process: they mostly wait on agents' servers. Reading what to send
# takes a pooled connection, so at most READS_AT_ONCE of them do that at a time.
CALLBACK_CONCURRENCY = 32
READS_AT_ONCE = 4

_IDS = bindparam("ids", type_=ARRAY(String))

# 410 Gone earlier: the agent asked us to stop; nothing more goes to this request's callback URL.
_GONE = (
    exists()
    .where(
        delivery_attempts.c.request_id == requests.c.id,
        delivery_attempts.c.kind == CALLBACK,
        delivery_attempts.c.result == "gone",
    )
    .label("gone")
)
_REQUEST_AND_SECRET = select(*VIEW_COLUMNS, agents.c.webhook_secret, _GONE).select_from(
    requests.join(agents, agents.c.id == requests.c.agent_id)
)
_DECISIONS = select(*DECISION_VIEW_COLUMNS).order_by(decisions.c.id)


class CallbackDelivery:
    """The outbox handler for `callback` rows.

    The dispatcher calls `prepare` with a whole leased batch first: what each callback sends is read
    in two statements for the batch instead of two per callback. `deliver` reads for itself whatever
    was not prepared (the batch read failed, say).
    """

    def __init__(self, *, engine: AsyncEngine, allow: CallbackAllowList, metrics: Metrics) -> None:
        self._engine = engine
        self._allow = allow
        self._metrics = metrics
        self._reads = asyncio.Semaphore(READS_AT_ONCE)
        self._prepared: dict[int, tuple[Any, list[Any]]] = {}  # outbox id -> (request row, decisions)
        self._sessions = PinnedSessions()

    async def close(self) -> None:
        await self._sessions.close()

    async def prepare(self, items: list[Claimed]) -> None:
        by_request = await self._load({item.request_id for item in items if item.request_id is not None})
        for item in items:
            if item.request_id in by_request:
                self._prepared[item.id] = by_request[item.request_id]

    async def _load(self, request_ids: set[str]) -> dict[str, tuple[Any, list[Any]]]:
        """Each request's row (with its agent's secret and whether its URL answered 410) and decisions."""
        if not request_ids:
            return {}
        ids = sorted(request_ids)
        async with self._reads, self._engine.connect() as conn:
            # One array parameter, so the statement has one shape whatever the batch size (an expanded
            # IN list is rendered anew for every count).
            params = {"ids": ids}
            rows = await conn.execute(_REQUEST_AND_SECRET.where(requests.c.id == any_(_IDS)), params)
            by_request: dict[str, tuple[Any, list[Any]]] = {row.id: (row, []) for row in rows}
            for decision in await conn.execute(
                _DECISIONS.where(decisions.c.request_id == any_(_IDS)), params
            ):
                by_request[decision.request_id][1].append(decision)
        return by_request

    async def deliver(self, item: Claimed) -> Settlement:
        assert item.request_id is not None
        prepared = self._prepared.pop(item.id, None)
        if prepared is None:  # not in a prepared batch (its read failed, say): read it alone
            prepared = (await self._load({item.request_id})).get(item.request_id, (None, []))
        row, decision_rows = prepared
        if row is None or not row.callback_url:
            return Settlement("failed", error="request or callback URL not found")
        if row.gone:
            return Settlement(
                "failed", target=row.callback_url, error="the callback URL answered 410 Gone before"
            )
        view = render_request(row, decision_rows)
        view.pop("deliveries", None)  # the attempt log is ours, not part of the event
        body = json.dumps(
            {"type": item.payload.get("event", "request.updated"), "data": view},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        result = await deliver(
            url=row.callback_url,
            body=body,
            msg_id=webhook_id(item),
            secret=row.webhook_secret,
            allow=self._allow,
            timestamp=int(time.time()),
            sessions=self._sessions,
        )
        self._metrics.callbacks.labels(result.result).inc()
        common = {"status_code": result.status_code, "target": row.callback_url, "error": result.error}
        if result.result == "delivered":
            return Settlement("delivered", **common)
        if result.result == "gone":
            return Settlement("gone", **common)
        if result.result == "failed":
            return Settlement("failed", **common)
        delay = next_retry_delay(item.attempt, retry_after=result.retry_after)
        if delay is None:
            return Settlement(
                "failed", **{**common, "error": f"gave up after {item.attempt} attempts: {result.error}"}
            )
        return Settlement("retry", retry_in=delay, **common)
