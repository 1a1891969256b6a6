"""What awaits people: pending requests with their rules and card links, for `/approvals` and App Home."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.db import iso_utc
from approvals.requests.lifecycle import Status
from approvals.tables import agents, requests, slack_messages

MAX_LISTED = 500


async def pending_requests(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Pending requests, soonest expiry first, each with its rule and the link to its first card."""
    rows = (
        await conn.execute(
            select(
                requests.c.id,
                requests.c.title,
                requests.c.action,
                requests.c.expires_at,
                requests.c.policy_rule,
                agents.c.name.label("agent_name"),
            )
            .select_from(requests.join(agents, agents.c.id == requests.c.agent_id))
            .where(requests.c.status == Status.PENDING)
            .order_by(requests.c.expires_at)
            .limit(MAX_LISTED)
        )
    ).all()
    links: dict[str, str] = {}
    if rows:
        for message in await conn.execute(
            select(slack_messages.c.request_id, slack_messages.c.permalink)
            .where(slack_messages.c.request_id.in_([r.id for r in rows]))
            .order_by(slack_messages.c.id)
        ):
            if message.permalink:
                links.setdefault(message.request_id, message.permalink)
    return [
        {
            "id": r.id,
            "title": r.title,
            "action": r.action,
            "agent_name": r.agent_name,
            "expires_at": iso_utc(r.expires_at),
            "policy_rule": r.policy_rule,
            "permalink": links.get(r.id),
        }
        for r in rows
    ]
