"""Agent callbacks from the outbox: the request's JSON, signed per Standard Webhooks, retried for 24 h."""

from __future__ import annotations

import hashlib
import json
import time

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.delivery.webhooks import deliver, next_retry_delay
from app.dispatcher import Settlement
from app.metrics import Metrics
from app.ssrf import CallbackAllowList
from approvals.outbox import CALLBACK, Claimed
from approvals.request_views import load_request_view
from approvals.tables import agents, delivery_attempts, requests


def webhook_id(claimed: Claimed) -> str:
    """Stable across every retry of one delivery, so receivers can drop repeats."""
    return "msg_" + hashlib.sha256(claimed.dedupe_key.encode()).hexdigest()[:32]


class CallbackDelivery:
    """The outbox handler for `callback` rows."""

    def __init__(self, *, engine: AsyncEngine, allow: CallbackAllowList, metrics: Metrics) -> None:
        self._engine = engine
        self._allow = allow
        self._metrics = metrics

    async def deliver(self, item: Claimed) -> Settlement:
        assert item.request_id is not None
        async with self._engine.connect() as conn:
            view = await load_request_view(conn, item.request_id)
            row = (
                await conn.execute(
                    select(agents.c.webhook_secret, requests.c.callback_url)
                    .select_from(requests.join(agents, agents.c.id == requests.c.agent_id))
                    .where(requests.c.id == item.request_id)
                )
            ).first()
            gone = (
                await conn.execute(
                    select(delivery_attempts.c.id).where(
                        delivery_attempts.c.request_id == item.request_id,
                        delivery_attempts.c.kind == CALLBACK,
                        delivery_attempts.c.result == "gone",
                    )
                )
            ).first()
        if view is None or row is None or not row.callback_url:
            return Settlement("failed", error="request or callback URL not found")
        if gone is not None:
            # 410 Gone: the agent asked us to stop; nothing more goes to this request's callback URL.
            return Settlement(
                "failed", target=row.callback_url, error="the callback URL answered 410 Gone before"
            )
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
