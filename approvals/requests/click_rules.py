"""What an approver's click comes to: refused, recorded now, or held until a fresh MFA login.

The adapter does two things around these rules. Before the transaction it asks its directory who
clicked and which of `approver_groups` they are in (a slow call, so no row is locked meanwhile). Then,
in the transaction that takes the click from the inbox, it calls `decide_click` and turns the outcome
into messages. Everything in between is decided here, against the request row locked:

1. the request's rule asks for no MFA: the click-time rules (`decisions.check_click`) and the record;
2. it asks for MFA but no identity provider is configured (a request judged under an older policy
   file): refused, `mfa_unavailable`, never decided without MFA;
3. the approver's last step-up still meets the rule's `MfaRequirement`: recorded with that evidence;
4. otherwise: held as a step-up intent (`Held`), which the approver completes at the IdP.
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.db import db_now
from approvals.errors import NotFound
from approvals.identity.step_up import Held, MfaRequirement, fresh_evidence, hold_click, new_intent_id
from approvals.requests.decisions import (
    Click,
    Duplicate,
    Recorded,
    RefusalReason,
    Refused,
    approver_ids,
    lock_request,
    record_click,
    refuse,
)
from approvals.tables import requests

ClickOutcome = Recorded | Refused | Duplicate | Held


async def approver_groups(conn: AsyncConnection, request_id: str) -> tuple[str, ...]:
    """The user groups whose members may decide the request (escalation included): the ones the
    adapter asks its directory about before `decide_click`. NotFound when there is no such request."""
    row = (await conn.execute(select(requests.c.policy_rule).where(requests.c.id == request_id))).first()
    if row is None:
        raise NotFound("request_not_found", f"no request {request_id!r}", "request_id")
    _users, groups = approver_ids(row.policy_rule)
    return tuple(groups)


async def decide_click(conn: AsyncConnection, click: Click, *, mfa_issuer: str | None) -> ClickOutcome:
    """Refuse, record or hold one click, in the caller's transaction; every outcome is audited.

    `mfa_issuer`: the identity provider whose logins count as step-ups, None when none is configured.
    NotFound when the request does not exist.
    """
    request = await lock_request(conn, click.request_id)
    requirement = MfaRequirement.of(request.policy_rule)
    if requirement is None:
        return await record_click(conn, click)
    if mfa_issuer is None:
        return await refuse(conn, click, "mfa_unavailable", request)
    now = await db_now(conn)
    evidence = await fresh_evidence(conn, click.clicker.user_id, requirement, mfa_issuer, now)
    if evidence is not None:
        return await record_click(conn, replace(click, mfa=evidence))
    return await hold_click(conn, click, new_intent_id())


async def refuse_click(conn: AsyncConnection, click: Click, reason: RefusalReason) -> Refused:
    """Refuse a click before any rule is applied (the adapter could not tell who clicked), audited."""
    return await refuse(conn, click, reason, await lock_request(conn, click.request_id))
