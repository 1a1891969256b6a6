"""Human decisions: a click, authorised at click time against the request's policy rule, recorded once.

The adapter (Slack) supplies who clicked, as Slack knows them at that moment, and which of the rule's
user groups they are in; everything else (pending, approver list, self-approval, quorum) is decided
here, in one transaction, with the request row locked.

Every `decision_recorded` and `click_refused` event says on what basis the clicker was an approver:
`"authorised_as": {"user": <listed in the rule's users>, "usergroups": [<the rule's groups they were in>]}`,
membership as Slack reported it at click time. Both empty/false on a `not_approver` refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.events import append_event
from approvals.db import db_now, insert_ignoring_conflict
from approvals.delivery.outbox import SLACK_UPDATE, enqueue
from approvals.errors import NotFound
from approvals.requests.lifecycle import Status, finalise
from approvals.requests.principals import is_requester, stored_requester
from approvals.tables import decisions, requests

Choice = Literal["approve", "reject"]
RefusalReason = Literal[
    "not_approver",
    "self_approval",
    "not_pending",
    "already_decided",
    "mfa_unavailable",
    # Slack could not tell who clicked: it knows no such user, or kept failing to answer.
    "unknown_user",
    "identity_unavailable",
]


@dataclass(frozen=True)
class Clicker:
    """The person behind a click, as Slack described them at click time."""

    user_id: str
    team_id: str | None
    name: str | None
    email: str | None
    # The rule's user groups (ids as the rule names them) Slack listed this person in at click time.
    approver_groups: tuple[str, ...] = ()


# Stands in for the groups of a click held for step-up by a version that recorded only "in some group".
MEMBERSHIP_NOT_RECORDED = "(membership not recorded)"


@dataclass(frozen=True)
class Click:
    request_id: str
    choice: Choice
    clicker: Clicker
    action_ts: str
    reason: str | None = None
    mfa: dict[str, Any] | None = None


@dataclass(frozen=True)
class Recorded:
    """The decision counted; `status` is the request's status after it."""

    status: str
    approvals: int
    required: int


@dataclass(frozen=True)
class Refused:
    reason: RefusalReason
    status: str


@dataclass(frozen=True)
class Duplicate:
    """The very same click again (a Slack retry or replay): nothing new is recorded."""

    status: str


def approver_ids(rule: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """The users and user groups a request's rule names as approvers (including escalation)."""
    if not rule:
        return [], []
    users = list(rule.get("approvers", {}).get("users", []))
    groups = list(rule.get("approvers", {}).get("usergroups", []))
    escalation = rule.get("escalated_to") or {}
    return users + list(escalation.get("users", [])), groups + list(escalation.get("usergroups", []))


def authorised_as(clicker: Clicker, rule: dict[str, Any] | None) -> dict[str, Any]:
    """On what basis the clicker was an approver at click time, for the audit record.

    `user`: named in the rule's users (escalation included); `usergroups`: the rule's groups Slack listed
    them in when they clicked (MEMBERSHIP_NOT_RECORDED for a click held by a version that kept no list).
    """
    users, _groups = approver_ids(rule)
    return {"user": clicker.user_id in users, "usergroups": list(clicker.approver_groups)}


def _is_self(click: Click, request: Any) -> bool:
    """Whether the clicker is the request's requester: identities compared, never free text.

    The clicker's Slack user ID against the requester's, and Slack's email for them against the
    requester's mailbox, both normalised by approvals.requests.principals.
    """
    requester = stored_requester(request.on_behalf_of, request.requester_email, request.requester_slack_id)
    if requester is None:
        # Free text from before migration 0011 that holds no identity: compared as it was then.
        principal = request.on_behalf_of.strip().casefold()
        return bool(principal) and principal in {
            (click.clicker.email or "").strip().casefold(),
            click.clicker.user_id.casefold(),
        }
    return is_requester(requester, user_id=click.clicker.user_id, email=click.clicker.email)


async def lock_request(conn: AsyncConnection, request_id: str) -> Any:
    """The request row, locked against concurrent decisions (NO KEY UPDATE: we never change its id)."""
    query = select(requests).where(requests.c.id == request_id).with_for_update(key_share=True)
    request = (await conn.execute(query)).first()
    if request is None:
        raise NotFound("request_not_found", f"no request {request_id!r}", "request_id")
    return request


async def check_click(conn: AsyncConnection, click: Click, request: Any) -> Refused | Duplicate | None:
    """The click-time rules (pending, approver, not self, once each); refusals are audited here."""
    previous = (
        await conn.execute(
            select(decisions.c.action_ts).where(
                decisions.c.request_id == click.request_id, decisions.c.approver_id == click.clicker.user_id
            )
        )
    ).first()
    if previous is not None and previous.action_ts == click.action_ts:
        return Duplicate(status=request.status)

    users, _groups = approver_ids(request.policy_rule)
    refusal: RefusalReason | None = None
    if request.status != Status.PENDING:
        refusal = "not_pending"
    elif previous is not None:
        refusal = "already_decided"
    elif click.clicker.user_id not in users and not click.clicker.approver_groups:
        refusal = "not_approver"
    elif _is_self(click, request) and not (request.policy_rule or {}).get("allow_self_approval"):
        refusal = "self_approval"
    if refusal is None:
        return None
    return await refuse(conn, click, refusal, request)


async def refuse(conn: AsyncConnection, click: Click, reason: RefusalReason, request: Any) -> Refused:
    """Audit a refused click with its reason (`request`: its row, as `lock_request` gave it)."""
    await append_event(
        conn,
        chain_id=click.request_id,
        kind="click_refused",
        actor=f"slack:{click.clicker.user_id}",
        data={
            **_identity(click),
            "authorised_as": authorised_as(click.clicker, request.policy_rule),
            "choice": click.choice,
            "reason": reason,
            "status": request.status,
        },
    )
    return Refused(reason=reason, status=request.status)


async def record_click(conn: AsyncConnection, click: Click) -> Recorded | Refused | Duplicate:
    """Authorise and record one approve/reject; refusals are audited with their reason."""
    request = await lock_request(conn, click.request_id)
    verdict = await check_click(conn, click, request)
    if verdict is not None:
        return verdict

    now = await db_now(conn)
    inserted = await insert_ignoring_conflict(
        conn,
        decisions,
        {
            "request_id": click.request_id,
            "approver_id": click.clicker.user_id,
            "decision": click.choice,
            "reason": click.reason,
            "approver_name": click.clicker.name,
            "approver_email": click.clicker.email,
            "team_id": click.clicker.team_id,
            "action_ts": click.action_ts,
            "policy_version_id": request.policy_version_id,
            "mfa": click.mfa,
            "created_at": now,
        },
    )
    if inserted is None:  # the same person's click got in first (the request's lock rules it out: a guard)
        return Refused(reason="already_decided", status=request.status)
    await append_event(
        conn,
        chain_id=click.request_id,
        kind="decision_recorded",
        actor=f"slack:{click.clicker.user_id}",
        data={
            **_identity(click),
            "authorised_as": authorised_as(click.clicker, request.policy_rule),
            "choice": click.choice,
            "reason": click.reason,
            "policy_version": request.policy_version_id,
            "mfa": click.mfa,
        },
    )
    approvals = int(
        (
            await conn.execute(
                select(func.count())
                .select_from(decisions)
                .where(decisions.c.request_id == click.request_id, decisions.c.decision == "approve")
            )
        ).scalar_one()
    )
    required = int(request.required_approvals)
    if click.choice == "reject" or approvals >= required:
        status = Status.REJECTED if click.choice == "reject" else Status.APPROVED
        reason = click.reason if click.choice == "reject" else None
        result = await conn.execute(
            update(requests)
            .where(requests.c.id == click.request_id, requests.c.status == Status.PENDING)
            .values(status=status, decided_by="human", decided_at=now, reason=reason)
        )
        if result.rowcount == 1:
            await finalise(
                conn,
                request_id=click.request_id,
                status=status,
                actor=f"slack:{click.clicker.user_id}",
                now=now,
                data={"decided_by": "human", "approvals": approvals, "required": required},
            )
        return Recorded(status=status, approvals=approvals, required=required)
    await enqueue(
        conn,
        kind=SLACK_UPDATE,
        dedupe_key=f"{SLACK_UPDATE}:{click.request_id}:approval:{approvals}",
        request_id=click.request_id,
        payload={"status": "partial", "approvals": approvals},
        now=now,
    )
    return Recorded(status=Status.PENDING, approvals=approvals, required=required)


def _identity(click: Click) -> dict[str, Any]:
    return {
        "user_id": click.clicker.user_id,
        "team_id": click.clicker.team_id,
        "user_name": click.clicker.name,
        "email": click.clicker.email,
        "action_ts": click.action_ts,
    }
