"""Reminders and escalation: at each `remind_at` point, nudge approvers who have not acted; at the last
one, add the policy's `escalate_to` approvers. Each step happens once, whichever replica runs the sweep.

Who is reminded is decided here too (`reminder_targets`, `reminder_due`); the adapter expands user
groups into people, renders the reminder and sends it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, cast, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.events import append_event
from approvals.db import db_now
from approvals.delivery.notifications import messages_of
from approvals.delivery.outbox import SLACK_NOTIFY, enqueue
from approvals.durations import parse_duration
from approvals.requests.decisions import approver_ids
from approvals.requests.lifecycle import Status
from approvals.tables import decisions, requests

SLACK_REMIND = "slack_remind"


def first_reminder(rule: dict[str, Any] | None, lifetime: dt.timedelta) -> dt.timedelta | None:
    """How long after its creation a request's first reminder is due; None when its rule has none."""
    offsets = remind_offsets(rule or {}, lifetime)
    return offsets[0] if offsets else None


def remind_offsets(rule: dict[str, Any], lifetime: dt.timedelta) -> list[dt.timedelta]:
    """When each reminder is due, after creation: `50%` of the lifetime, or a duration like `2h`."""
    offsets = []
    for point in rule.get("remind_at") or []:
        text = str(point).strip()
        if text.endswith("%"):
            offsets.append(lifetime * (int(text[:-1]) / 100))
        else:
            offsets.append(dt.timedelta(seconds=parse_duration(text)))
    return sorted(offsets)


async def schedule_missing_reminders(conn: AsyncConnection) -> int:
    """Make due at once every pending request whose rule has reminders but that has no
    next_reminder_at: one written by an older version (a replica still serving during a rolling
    upgrade, after migration 0009 ran). The sweep then works out what is owed. Run at start."""
    rule_text = cast(requests.c.policy_rule, Text)
    result = await conn.execute(
        update(requests)
        .where(
            requests.c.status == Status.PENDING,
            requests.c.next_reminder_at.is_(None),
            # Rules are stored as canonical JSON: an empty list is exactly this text.
            rule_text.like('%"remind_at":[%'),
            rule_text.not_like('%"remind_at":[]%'),
        )
        .values(next_reminder_at=requests.c.created_at)
    )
    return int(result.rowcount or 0)


async def send_due_reminders(conn: AsyncConnection, *, limit: int = 500) -> int:
    """Queue every reminder (and escalation) that has come due; returns how many steps were taken.

    Only requests whose `next_reminder_at` has passed are read, most overdue first, and each is moved
    on to its next point (or None): a request is visited once per point, however many are pending.
    """
    now = await db_now(conn)
    query = (
        select(requests.c.id, requests.c.policy_rule, requests.c.created_at, requests.c.expires_at)
        .where(requests.c.status == Status.PENDING, requests.c.next_reminder_at <= now)
        .order_by(requests.c.next_reminder_at)
        .limit(limit)
        .with_for_update(skip_locked=True, key_share=True)  # see expire_due_requests
    )
    steps = 0
    for row in (await conn.execute(query)).all():
        rule = dict(row.policy_rule or {})
        offsets = remind_offsets(rule, row.expires_at - row.created_at)
        upcoming = [row.created_at + offset for offset in offsets if now < row.created_at + offset]
        await conn.execute(
            update(requests)
            .where(requests.c.id == row.id)
            .values(next_reminder_at=upcoming[0] if upcoming else None)
        )
        for index, offset in enumerate(offsets):
            if now < row.created_at + offset:
                break
            queued = await enqueue(
                conn,
                kind=SLACK_REMIND,
                dedupe_key=f"{SLACK_REMIND}:{row.id}:{index}",
                request_id=row.id,
                payload={"reminder": index + 1, "of": len(offsets)},
                now=now,
            )
            if not queued:
                continue
            steps += 1
            await append_event(
                conn,
                chain_id=row.id,
                kind="reminder_sent",
                actor="scheduler",
                data={"reminder": index + 1, "of": len(offsets)},
                now=now,
            )
            last = index == len(offsets) - 1
            if last and rule.get("escalate_to") and not rule.get("escalated_to"):
                rule["escalated_to"] = rule["escalate_to"]
                await conn.execute(update(requests).where(requests.c.id == row.id).values(policy_rule=rule))
                await append_event(
                    conn,
                    chain_id=row.id,
                    kind="escalated",
                    actor="scheduler",
                    data={"added_approvers": rule["escalate_to"]},
                    now=now,
                )
                # Tell the added approvers with a card of their own (a DM each).
                await enqueue(
                    conn,
                    kind=SLACK_NOTIFY,
                    dedupe_key=f"{SLACK_NOTIFY}:{row.id}:escalation",
                    request_id=row.id,
                    payload={"escalation": True},
                    now=now,
                )
    return steps


@dataclass(frozen=True)
class ReminderTargets:
    """Whom a reminder is for: while the request awaits decisions, the approvers its rule names
    (escalation included) who have not acted. Members of `usergroups` are people only the adapter's
    directory can list."""

    awaiting: bool
    users: tuple[str, ...]
    usergroups: tuple[str, ...]
    acted: frozenset[str]

    def of(self, people: Iterable[str]) -> list[str]:
        """Of `people` (the users, then the groups' members, as the directory listed them), those to
        remind, each once, in the order given: nobody once the request is decided, expired or gone,
        else everyone who has not approved or rejected yet."""
        if not self.awaiting:
            return []
        return [person for person in dict.fromkeys(people) if person not in self.acted]


NOBODY = ReminderTargets(awaiting=False, users=(), usergroups=(), acted=frozenset())


async def reminder_targets(conn: AsyncConnection, request_id: str) -> ReminderTargets:
    """Who a request's reminder goes to (see ReminderTargets)."""
    row = (
        await conn.execute(
            select(requests.c.policy_rule, requests.c.status).where(requests.c.id == request_id)
        )
    ).first()
    if row is None or row.status != Status.PENDING:
        return NOBODY
    acted = await conn.execute(select(decisions.c.approver_id).where(decisions.c.request_id == request_id))
    users, groups = approver_ids(row.policy_rule)
    return ReminderTargets(
        awaiting=True, users=tuple(users), usergroups=tuple(groups), acted=frozenset(acted.scalars())
    )


@dataclass(frozen=True)
class DueReminder:
    """What one approver's reminder says: which request, until when, and where its card is."""

    title: str
    expires_at: dt.datetime
    card_permalink: str | None


async def reminder_due(conn: AsyncConnection, request_id: str, approver_id: str) -> DueReminder | None:
    """The reminder to send `approver_id` now, or None when the request no longer awaits them: it is
    decided or expired, or they acted since the reminder was fanned out."""
    row = (
        await conn.execute(
            select(requests.c.title, requests.c.status, requests.c.expires_at).where(
                requests.c.id == request_id
            )
        )
    ).first()
    if row is None or row.status != Status.PENDING:
        return None
    acted = await conn.execute(
        select(decisions.c.id).where(
            decisions.c.request_id == request_id, decisions.c.approver_id == approver_id
        )
    )
    if acted.first() is not None:
        return None
    cards = await messages_of(conn, request_id)
    link = next((card.permalink for card in cards if card.permalink), None)
    return DueReminder(title=row.title, expires_at=row.expires_at, card_permalink=link)
