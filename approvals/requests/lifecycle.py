"""A request's lifecycle: its statuses, the moves between them, who makes each, and what each writes.

A request has one status (`requests.status`), a `Status`. Policy gives a new request its first one
(`initial_status`), and pending is the only status a request ever leaves:

    created, as its policy rule decides:
        allow             -> approved     final at once
        deny              -> rejected     final at once
        require_approval  -> pending      a card goes to the approvers

    pending -> approved    people approve: the rule's quorum of approvals is met
    pending -> rejected    a person rejects
    pending -> expired     the scheduler, once `expires_at` has passed with no decision
    pending -> cancelled   the agent withdraws it, or an operator cancels it

The four statuses other than pending are `FINAL`: nothing moves a request out of them. An approval
short of the quorum moves nothing (the card shows the count so far). After approval the agent may
report its outcome once (`outcome_status`: succeeded | failed), which is not a status.

Who makes each move, and how the row and its audit event record it:

    move                   who        decided_by  event actor
    (created) -> approved  policy     policy      policy
    (created) -> rejected  policy     policy      policy
    pending -> approved    people     human       slack:<user id>
    pending -> rejected    people     human       slack:<user id>
    pending -> expired     scheduler  system      scheduler
    pending -> cancelled   agent      agent       agent:<name>
    pending -> cancelled   operator   system      operator:<who>

The event's data is `{"decided_by": ...}` and, from policy, the rule's `reason`; from people,
`approvals` and `required` (the count and the quorum); from an operator, their `reason`. The row's
`reason` column holds the rule's reason (policy), None (people approve), the rejecting person's
reason or None, "no decision before expiry", "cancelled by the agent", or "cancelled by an
operator: <why>".

The use cases: approvals.requests.use_cases.create_request (policy), approvals.requests.decisions.record_click (people,
also after an MFA step-up), approvals.requests.use_cases.expire_due_requests (scheduler),
approvals.requests.use_cases.cancel_request (agent) and cancel_as_operator (operator).

A move out of pending is one conditional `UPDATE requests ... WHERE status = 'pending'`: of several
racing moves (a click, the expiry sweep, a cancel) exactly one changes the row, and only that one
writes what the new status owes. It sets the row's `status`, `decided_by`, `decided_at` (the
database's time) and `reason`, and then `finalise` writes, in the same transaction:

- the audit event `request_<status>` (`event_kind`) on the request's chain, actor and data as above;
- the outbox rows every final status owes (`final_delivery_rows`): the card update (kind
  `slack_update`, dedupe key `slack_update:<id>:<status>`, payload `{"status": <status>}`), and, if
  the agent gave a callback URL, its callback (kind `callback`, dedupe key `callback:<id>:<status>`,
  payload `{"event": "request.<status>"}`).

The expiry sweep writes those same events and rows for a whole batch at once instead of calling
`finalise` per request. A request policy decides at creation is written final from the start, in
the one intake statement (`decided_at` is its creation time): its `request_created`,
`policy_evaluated` and `request_<status>` events and, as no card was ever posted, only the agent's
callback. A pending one gets its card (`slack_notify`) instead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.events import append_event
from approvals.delivery.outbox import CALLBACK, SLACK_UPDATE, enqueue_many, outbox_row
from approvals.policies.policy_file import Decision
from approvals.tables import requests


class Status(StrEnum):
    """A request's status. Each member is the very string stored, sent and hashed ("pending", ...)."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


# Every status, in lifecycle order (for choices, schemas and reports that list them all).
STATUSES: tuple[Status, ...] = tuple(Status)

FINAL: frozenset[Status] = frozenset({Status.APPROVED, Status.REJECTED, Status.EXPIRED, Status.CANCELLED})

# The status policy gives a new request: decided at once (allow, deny), or pending people's decision.
_INITIAL: Mapping[Decision, Status] = MappingProxyType(
    {"allow": Status.APPROVED, "deny": Status.REJECTED, "require_approval": Status.PENDING}
)


def initial_status(decision: Decision) -> Status:
    """The status a new request is created in, by its policy decision."""
    return _INITIAL[decision]


def event_kind(status: Status) -> str:
    """The audit event kind that records a request reaching `status`: `request_<status>`."""
    return f"request_{status}"


async def finalise(
    conn: AsyncConnection,
    *,
    request_id: str,
    status: Status,
    actor: str,
    now: dt.datetime,
    data: dict[str, Any],
) -> None:
    """The audit event and deliveries every final state owes: the card update and the agent callback."""
    await append_event(conn, chain_id=request_id, kind=event_kind(status), actor=actor, data=data, now=now)
    callback_url = (
        await conn.execute(select(requests.c.callback_url).where(requests.c.id == request_id))
    ).scalar()
    await enqueue_many(
        conn,
        final_delivery_rows(request_id=request_id, status=status, callback_url=callback_url, now=now),
    )


def final_delivery_rows(
    *, request_id: str, status: Status, callback_url: str | None, now: dt.datetime
) -> list[dict[str, Any]]:
    """The outbox rows a final state owes: the card update, and the agent's callback if it gave a URL."""
    rows = [
        outbox_row(
            kind=SLACK_UPDATE,
            dedupe_key=f"{SLACK_UPDATE}:{request_id}:{status}",
            request_id=request_id,
            payload={"status": status},
            now=now,
        )
    ]
    if callback_url:
        rows.append(
            outbox_row(
                kind=CALLBACK,
                dedupe_key=f"{CALLBACK}:{request_id}:{status}",
                request_id=request_id,
                payload={"event": f"request.{status}"},
                now=now,
            )
        )
    return rows
