"""The transactional outbox: side effects (Slack posts, agent callbacks) written with the state change."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.db import insert_ignoring_conflict
from approvals.tables import outbox

SLACK_NOTIFY = "slack_notify"
SLACK_UPDATE = "slack_update"
CALLBACK = "callback"


async def enqueue(
    conn: AsyncConnection,
    *,
    kind: str,
    dedupe_key: str,
    request_id: str | None,
    payload: dict[str, Any],
    now: dt.datetime,
) -> bool:
    """Queue one delivery in the caller's transaction; False when that delivery was already queued."""
    inserted = await insert_ignoring_conflict(
        conn,
        outbox,
        {
            "kind": kind,
            "dedupe_key": dedupe_key,
            "request_id": request_id,
            "payload": payload,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        },
    )
    return inserted is not None
