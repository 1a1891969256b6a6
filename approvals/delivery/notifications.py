"""Where a request was shown to people: card destinations, posted messages, and failures to post."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.events import append_event
from approvals.db import db_now, insert_ignoring_conflict
from approvals.tables import requests, slack_messages


def card_destinations(rule: dict[str, Any] | None, dm_users: list[str]) -> list[str]:
    """The policy's channel, and each approver's DM when `dm_approvers` is on; no duplicates."""
    if not rule:
        return []
    destinations = [rule["channel"]] if rule.get("channel") else []
    if rule.get("dm_approvers"):
        destinations += [user for user in dm_users if user not in destinations]
    return destinations


async def record_message(
    conn: AsyncConnection,
    *,
    request_id: str,
    destination: str,
    channel: str,
    ts: str,
    permalink: str | None,
) -> bool:
    """Remember a posted card (once per destination) and audit the notification."""
    now = await db_now(conn)
    row = await insert_ignoring_conflict(
        conn,
        slack_messages,
        {
            "request_id": request_id,
            "destination": destination,
            "channel": channel,
            "ts": ts,
            "permalink": permalink,
            "created_at": now,
        },
    )
    if row is None:
        return False
    await append_event(
        conn,
        chain_id=request_id,
        kind="notification_posted",
        actor="slack",
        data={"destination": destination, "channel": channel, "ts": ts, "permalink": permalink},
    )
    return True


async def message_for(conn: AsyncConnection, request_id: str, destination: str) -> Any:
    return (
        await conn.execute(
            select(slack_messages).where(
                slack_messages.c.request_id == request_id, slack_messages.c.destination == destination
            )
        )
    ).first()


async def messages_of(conn: AsyncConnection, request_id: str) -> list[Any]:
    """Every card posted for a request, in posting order."""
    rows = await conn.execute(
        select(slack_messages).where(slack_messages.c.request_id == request_id).order_by(slack_messages.c.id)
    )
    return list(rows)


async def record_notification_failure(
    conn: AsyncConnection, *, request_id: str, destination: str, error: str
) -> None:
    """A card that cannot be delivered says so on the request and in its audit chain."""
    message = f"slack: {error} posting to {destination}"
    await conn.execute(update(requests).where(requests.c.id == request_id).values(delivery_error=message))
    await append_event(
        conn,
        chain_id=request_id,
        kind="notification_failed",
        actor="slack",
        data={"destination": destination, "error": error},
    )
