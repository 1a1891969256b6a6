"""The click inbox: an interaction is stored before Slack is acknowledged, then decided exactly once.

A click whose clicker could not be resolved is tried again later: each failed attempt is counted on
the row with the time of the next one (`next_attempt_at`), so the schedule holds across restarts and
replicas, and the stranded-click sweep leaves the click alone until then.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.events import canonical_text
from approvals.db import array_literal, db_now
from approvals.tables import slack_clicks


@dataclass(frozen=True)
class NewClick:
    dedupe_key: str
    request_id: str
    payload: dict[str, Any]


async def store_clicks(conn: AsyncConnection, clicks: list[NewClick]) -> list[int | None]:
    """Keep several clicks in one statement; for each, its id, or None when it was already kept.
    That is all it runs (the statement reads the clock itself).

    A key seen twice in the batch counts once: the later copy is a retry of the earlier one.
    """
    first: dict[str, int] = {}
    unique: list[NewClick] = []
    for index, click in enumerate(clicks):
        if click.dedupe_key not in first:
            first[click.dedupe_key] = index
            unique.append(click)
    # Columns as arrays into one cached statement that stamps the rows with the database's clock
    # itself: building a multi-row VALUES statement anew for every batch cost more than a
    # millisecond of CPU, and reading the clock first another round trip.
    params = {
        "keys": array_literal([click.dedupe_key for click in unique]),
        "request_ids": array_literal([click.request_id for click in unique]),
        "payloads": array_literal([canonical_text(click.payload) for click in unique]),
    }
    rows = await conn.execute(_STORE, params)
    kept = {row.dedupe_key: int(row.id) for row in rows}
    return [
        kept.get(click.dedupe_key) if first[click.dedupe_key] == index else None
        for index, click in enumerate(clicks)
    ]


_STORE = text(
    """INSERT INTO slack_clicks (dedupe_key, request_id, payload, status, attempts, created_at)
SELECT u.dedupe_key, u.request_id, u.payload, 'pending', 0, pg_catalog.clock_timestamp()
FROM unnest(CAST(:keys AS text[]), CAST(:request_ids AS text[]), CAST(:payloads AS json[]))
    AS u(dedupe_key, request_id, payload)
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING id, dedupe_key
"""
)


async def read_click(conn: AsyncConnection, click_id: int) -> Any:
    return (await conn.execute(select(slack_clicks).where(slack_clicks.c.id == click_id))).first()


async def claim_click(conn: AsyncConnection, click_id: int) -> Any:
    """Lock a pending click for deciding; None when it is done or another process holds it."""
    query = select(slack_clicks).where(slack_clicks.c.id == click_id, slack_clicks.c.status == "pending")
    return (await conn.execute(query.with_for_update(skip_locked=True))).first()


async def finish_click(conn: AsyncConnection, click_id: int) -> None:
    now = await db_now(conn)
    await conn.execute(
        update(slack_clicks).where(slack_clicks.c.id == click_id).values(status="done", processed_at=now)
    )


async def count_attempt(conn: AsyncConnection, click_id: int, *, seen: int, retry_in: dt.timedelta) -> bool:
    """Count one failed attempt and put the next one `retry_in` from now; False when the click is done
    or another process counted an attempt since this one read `seen` (then that one decides its fate)."""
    now = await db_now(conn)
    counted = await conn.execute(
        update(slack_clicks)
        .where(
            slack_clicks.c.id == click_id,
            slack_clicks.c.status == "pending",
            slack_clicks.c.attempts == seen,
        )
        .values(attempts=seen + 1, next_attempt_at=now + retry_in)
    )
    return counted.rowcount == 1


async def stranded_clicks(conn: AsyncConnection, *, older_than: dt.timedelta, limit: int = 100) -> list[int]:
    """Clicks stored but not decided for a while (their process died after the ack, or Slack could not
    say who clicked), and not waiting for a later attempt."""
    now = await db_now(conn)
    rows = await conn.execute(
        select(slack_clicks.c.id)
        .where(
            slack_clicks.c.status == "pending",
            slack_clicks.c.created_at <= now - older_than,
            or_(slack_clicks.c.next_attempt_at.is_(None), slack_clicks.c.next_attempt_at <= now),
        )
        # Fewest attempts first: clicks that keep failing (Slack down for them) never hide the others.
        .order_by(slack_clicks.c.attempts, slack_clicks.c.id)
        .limit(limit)
    )
    return [int(r.id) for r in rows]
