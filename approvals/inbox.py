"""The click inbox: an interaction is stored before Slack is acknowledged, then decided exactly once."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.db import db_now, insert_ignoring_conflict, is_postgres
from approvals.tables import slack_clicks


async def store_click(
    conn: AsyncConnection, *, dedupe_key: str, request_id: str, payload: dict[str, Any]
) -> int | None:
    """Keep a click; None when the same interaction (a Slack retry or replay) is already kept."""
    now = await db_now(conn)
    row = await insert_ignoring_conflict(
        conn,
        slack_clicks,
        {
            "dedupe_key": dedupe_key,
            "request_id": request_id,
            "payload": payload,
            "status": "pending",
            "attempts": 0,
            "created_at": now,
        },
    )
    return None if row is None else int(row.id)


async def read_click(conn: AsyncConnection, click_id: int) -> Any:
    return (await conn.execute(select(slack_clicks).where(slack_clicks.c.id == click_id))).first()


async def claim_click(conn: AsyncConnection, click_id: int) -> Any:
    """Lock a pending click for deciding; None when it is done or another process holds it."""
    query = select(slack_clicks).where(slack_clicks.c.id == click_id, slack_clicks.c.status == "pending")
    if is_postgres(conn):
        query = query.with_for_update(skip_locked=True)
    return (await conn.execute(query)).first()


async def finish_click(conn: AsyncConnection, click_id: int) -> None:
    now = await db_now(conn)
    await conn.execute(
        update(slack_clicks).where(slack_clicks.c.id == click_id).values(status="done", processed_at=now)
    )


async def count_attempt(conn: AsyncConnection, click_id: int) -> None:
    await conn.execute(
        update(slack_clicks).where(slack_clicks.c.id == click_id).values(attempts=slack_clicks.c.attempts + 1)
    )


async def stranded_clicks(conn: AsyncConnection, *, older_than: dt.timedelta, limit: int = 100) -> list[int]:
    """Clicks stored but not decided for a while: their process died after the ack."""
    now = await db_now(conn)
    rows = await conn.execute(
        select(slack_clicks.c.id)
        .where(slack_clicks.c.status == "pending", slack_clicks.c.created_at <= now - older_than)
        .order_by(slack_clicks.c.id)
        .limit(limit)
    )
    return [int(r.id) for r in rows]
