"""MFA step-up: a click held as a single-use intent until the approver proves a fresh login at the IdP.

The adapter runs the OpenID Connect flow and verifies the ID token; this module owns everything that
is stored: the intent's life (pending -> started -> verifying -> decided | failed, and verifying ->
pending again when the IdP could not be reached), the binding of a Slack user to one IdP identity,
the freshness window, and the decision with its MFA evidence. Each function runs inside the caller's
transaction and audits what it changes.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, replace
from typing import Any, Literal

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.events import append_event
from approvals.db import db_now, insert_ignoring_conflict, iso_utc
from approvals.requests.decisions import (
    MEMBERSHIP_NOT_RECORDED,
    Click,
    Clicker,
    Duplicate,
    Recorded,
    Refused,
    check_click,
    lock_request,
    record_click,
)
from approvals.tables import identity_links, requests, step_up_intents, step_ups

# How long a held click waits for its step-up (the "lives 10 minutes").
INTENT_LIFETIME = dt.timedelta(minutes=10)
# Clock skew we forgive between the IdP and us when judging auth_time against max_age.
AUTH_TIME_LEEWAY = dt.timedelta(seconds=30)
# How far ahead of ours the IdP's clock may run: an ID token's iat/exp, and an auth_time, are judged
# with it. A login "in the future" beyond it is refused, or it would stretch the reuse window.
IDP_CLOCK_SKEW = dt.timedelta(seconds=60)
# Chain for step-up failures that cannot be tied to a request (an unknown or forged state).
STEP_UP_CHAIN = "step_up"

FailureReason = Literal[
    "unknown_intent",
    "expired_intent",
    "replayed",
    "idp_unreachable",
    "cancelled",
    "invalid_token",
    "unknown_key",
    "stale_login",
    "weak_authentication",
    "wrong_identity",
    "email_mismatch",
    "identity_in_use",
    "not_pending",
    "already_decided",
    "not_approver",
    "self_approval",
    "mfa_unavailable",
    # Click refusals that come before any step-up; listed so every refusal reason is a failure reason.
    "unknown_user",
    "identity_unavailable",
]


def identity_chain(slack_user_id: str) -> str:
    return f"identity:{slack_user_id}"


@dataclass(frozen=True)
class MfaRequirement:
    """What a request's policy rule asks of a step-up: how fresh, and which methods count."""

    max_age: int
    amr: tuple[str, ...]
    acr: tuple[str, ...]

    @classmethod
    def of(cls, rule: dict[str, Any] | None) -> MfaRequirement | None:
        """The requirement in a rule snapshot; None when the rule does not ask for MFA."""
        mfa = (rule or {}).get("mfa") or {}
        if not mfa.get("required"):
            return None
        return cls(
            max_age=int(mfa.get("max_age", 600)),
            amr=tuple(mfa.get("amr") or ()),
            acr=tuple(mfa.get("acr") or ()),
        )

    def met_by(self, amr: list[str], acr: str | None) -> bool:
        """RFC 8176 `amr` shares a value with the policy's list, or `acr` is one the policy accepts."""
        return bool(set(amr) & set(self.amr)) or (acr is not None and acr in self.acr)

    def fresh(self, auth_time: dt.datetime, now: dt.datetime) -> bool:
        """The login happened within max_age of now (with a little clock-skew leeway), and not later
        than the IdP's clock skew allows: a step-up stored with a future auth_time never counts."""
        if auth_time > now + IDP_CLOCK_SKEW:
            return False
        return now - auth_time <= dt.timedelta(seconds=self.max_age) + AUTH_TIME_LEEWAY


@dataclass(frozen=True)
class VerifiedLogin:
    """The claims of an ID token the adapter has fully verified (signature, iss, aud, exp, nonce)."""

    issuer: str
    subject: str
    amr: list[str]
    acr: str | None
    auth_time: dt.datetime
    email: str | None
    email_verified: bool


@dataclass(frozen=True)
class Held:
    """The click waits for a step-up: send the approver to `intent_id`'s link."""

    intent_id: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class StepUpFailure:
    """A step-up that recorded no decision, and why."""

    reason: FailureReason
    detail: str = ""
    request_id: str | None = None


@dataclass(frozen=True)
class Intent:
    """A held click, as the OIDC adapter needs it."""

    id: str
    request_id: str
    approver_id: str
    decision: str
    status: str
    requirement: MfaRequirement
    nonce: str | None
    code_verifier: str | None
    created_at: dt.datetime


def new_intent_id() -> str:
    """Opaque and unguessable: it is the only thing the step-up link carries."""
    return secrets.token_urlsafe(32)


def evidence(login: VerifiedLogin, verified_at: dt.datetime, *, reused: bool) -> dict[str, Any]:
    """What a decision records as MFA evidence: who signed in, how, and when."""
    return {
        "iss": login.issuer,
        "sub": login.subject,
        "amr": login.amr,
        "acr": login.acr,
        "auth_time": iso_utc(login.auth_time),
        "verified_at": iso_utc(verified_at),
        "reused": reused,
    }


async def fresh_evidence(
    conn: AsyncConnection, user_id: str, requirement: MfaRequirement, issuer: str, now: dt.datetime
) -> dict[str, Any] | None:
    """Evidence from this user's last step-up when it still satisfies `requirement`; else None.

    `max_age: 0` means every decision needs its own login, so nothing is ever reused for it.
    """
    if requirement.max_age <= 0:
        return None
    row = (
        await conn.execute(
            select(step_ups, identity_links.c.subject.label("linked_subject"))
            .join(identity_links, identity_links.c.slack_user_id == step_ups.c.slack_user_id)
            .where(step_ups.c.slack_user_id == user_id)
        )
    ).first()
    if row is None or row.issuer != issuer or row.subject != row.linked_subject:
        return None
    login = VerifiedLogin(
        issuer=row.issuer,
        subject=row.subject,
        amr=list(row.amr or []),
        acr=row.acr,
        auth_time=row.auth_time,
        email=None,
        email_verified=False,
    )
    if not requirement.fresh(login.auth_time, now) or not requirement.met_by(login.amr, login.acr):
        return None
    return evidence(login, row.verified_at, reused=True)


async def hold_click(conn: AsyncConnection, click: Click, intent_id: str) -> Held | Refused | Duplicate:
    """Hold an authorised click as a pending intent; refuse it now if it could never count."""
    request = await lock_request(conn, click.request_id)
    verdict = await check_click(conn, click, request)
    if verdict is not None:
        return verdict
    now = await db_now(conn)
    expires_at = min(now + INTENT_LIFETIME, request.expires_at)
    await conn.execute(
        step_up_intents.insert().values(
            id=intent_id,
            request_id=click.request_id,
            approver_id=click.clicker.user_id,
            decision=click.choice,
            reason=click.reason,
            click=_click_record(click),
            status="pending",
            created_at=now,
            expires_at=expires_at,
        )
    )
    await append_event(
        conn,
        chain_id=click.request_id,
        kind="step_up_required",
        actor=f"slack:{click.clicker.user_id}",
        data={
            "user_id": click.clicker.user_id,
            "choice": click.choice,
            "action_ts": click.action_ts,
            "expires_at": iso_utc(expires_at),
        },
        now=now,
    )
    return Held(intent_id=intent_id, expires_at=expires_at)


async def begin_step_up(
    conn: AsyncConnection, intent_id: str, *, state: str, nonce: str, code_verifier: str
) -> Intent | StepUpFailure:
    """The approver opened the link: bind fresh state, nonce and PKCE verifier to the intent.

    Opening the link again (another browser, a reload) replaces them, so only the newest sign-in counts.
    """
    row = await _lock_intent(conn, step_up_intents.c.id == intent_id)
    if row is None:
        return StepUpFailure("unknown_intent", "no such sign-in link")
    failure = await _unusable(conn, row, allowed=("pending", "started"))
    if failure is not None:
        return failure
    await conn.execute(
        update(step_up_intents)
        .where(step_up_intents.c.id == intent_id)
        .values(status="started", state=state, nonce=nonce, code_verifier=code_verifier)
    )
    return await _intent(conn, row, status="started", nonce=nonce, code_verifier=code_verifier)


async def claim_callback(conn: AsyncConnection, state: str) -> Intent | StepUpFailure:
    """The IdP sent the browser back: take the intent for this state, once (a replay finds it used)."""
    row = await _lock_intent(conn, step_up_intents.c.state == state)
    if row is None:
        await append_event(
            conn,
            chain_id=STEP_UP_CHAIN,
            kind="step_up_failed",
            actor="browser",
            data={"reason": "replayed", "detail": "unknown state"},
        )
        return StepUpFailure("replayed", "this sign-in response is not one we are waiting for")
    failure = await _unusable(conn, row, allowed=("started",))
    if failure is not None:
        return failure
    await conn.execute(
        update(step_up_intents).where(step_up_intents.c.id == row.id).values(status="verifying")
    )
    return await _intent(conn, row, status="verifying")


async def fail_step_up(
    conn: AsyncConnection, intent_id: str, reason: FailureReason, detail: str = ""
) -> StepUpFailure:
    """End the intent without a decision, and audit why."""
    row = (await conn.execute(select(step_up_intents).where(step_up_intents.c.id == intent_id))).first()
    if row is None:
        return StepUpFailure("unknown_intent", detail)
    return await _fail(conn, row, reason, detail)


async def release_step_up(conn: AsyncConnection, intent_id: str, detail: str) -> StepUpFailure:
    """The IdP could not be reached during the callback: nothing was verified, so the intent goes back
    to pending and the same step-up link works again. State, nonce and PKCE verifier are dropped: the
    callback that failed cannot be replayed, only a new sign-in from the link counts.

    Only the callback that claimed the intent (status `verifying`) may release it.
    """
    row = await _lock_intent(conn, step_up_intents.c.id == intent_id)
    if row is None:
        return StepUpFailure("unknown_intent", "no such sign-in link")
    if row.status != "verifying":
        return StepUpFailure("replayed", "this sign-in was already used", row.request_id)
    await conn.execute(
        update(step_up_intents)
        .where(step_up_intents.c.id == row.id)
        .values(status="pending", state=None, nonce=None, code_verifier=None)
    )
    await _audit_failure(conn, row, "idp_unreachable", detail, retryable=True)
    return StepUpFailure("idp_unreachable", detail, row.request_id)


async def complete_step_up(
    conn: AsyncConnection, intent_id: str, login: VerifiedLogin
) -> Recorded | Duplicate | StepUpFailure:
    """A verified login for a claimed intent: bind or check the identity, then record the decision."""
    row = await _lock_intent(conn, step_up_intents.c.id == intent_id)
    if row is None or row.status != "verifying":
        return StepUpFailure("replayed", "this sign-in was already used")
    clicker = _clicker_of(row.click)
    failure = await _bind_identity(conn, row, clicker, login)
    if failure is not None:
        return failure
    now = await db_now(conn)
    await _remember_step_up(conn, clicker.user_id, login, now)
    click = Click(
        request_id=row.request_id,
        choice=row.decision,
        clicker=clicker,
        action_ts=row.click["action_ts"],
        reason=row.reason,
        mfa=evidence(login, now, reused=False),
    )
    outcome = await record_click(conn, click)
    if isinstance(outcome, Refused):
        return await _fail(conn, row, outcome.reason, f"the request is {outcome.status}", audit=False)
    await conn.execute(
        update(step_up_intents)
        .where(step_up_intents.c.id == row.id)
        .values(status="decided", finished_at=now)
    )
    return outcome


async def list_identities(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = (await conn.execute(select(identity_links).order_by(identity_links.c.slack_user_id))).all()
    return [
        {
            "slack_user_id": r.slack_user_id,
            "issuer": r.issuer,
            "subject": r.subject,
            "email": r.email,
            "linked_at": iso_utc(r.linked_at),
        }
        for r in rows
    ]


async def unlink_identity(conn: AsyncConnection, slack_user_id: str, *, actor: str) -> bool:
    """Forget a user's IdP binding (their next step-up links afresh by email); False if none."""
    row = (
        await conn.execute(select(identity_links).where(identity_links.c.slack_user_id == slack_user_id))
    ).first()
    if row is None:
        return False
    await conn.execute(delete(identity_links).where(identity_links.c.slack_user_id == slack_user_id))
    # A fresh step-up belongs to the identity that made it: it goes with the link.
    await conn.execute(delete(step_ups).where(step_ups.c.slack_user_id == slack_user_id))
    await append_event(
        conn,
        chain_id=identity_chain(slack_user_id),
        kind="identity_unlinked",
        actor=actor,
        data={"slack_user_id": slack_user_id, "issuer": row.issuer, "subject": row.subject},
    )
    return True


def _click_record(click: Click) -> dict[str, Any]:
    """The held click as stored on its intent, so the callback decides on what Slack said at click time.

    `approver_groups` sits beside `clicker`, which keeps the older shape (with its `in_approver_group`
    flag) so that a version reading only that shape can still finish the intent.
    """
    c = click.clicker
    return {
        "clicker": {
            "user_id": c.user_id,
            "team_id": c.team_id,
            "name": c.name,
            "email": c.email,
            "in_approver_group": bool(c.approver_groups),
        },
        "approver_groups": list(c.approver_groups),
        "action_ts": click.action_ts,
    }


def _clicker_of(record: dict[str, Any]) -> Clicker:
    """The clicker of a stored click. An intent held by an older version says only whether they were in
    one of the rule's groups, not which: then the groups are MEMBERSHIP_NOT_RECORDED, never a guess."""
    stored = record["clicker"]
    if "approver_groups" in record:
        groups = tuple(str(group) for group in record["approver_groups"])
    else:
        groups = (MEMBERSHIP_NOT_RECORDED,) if stored.get("in_approver_group") else ()
    return Clicker(
        user_id=stored["user_id"],
        team_id=stored.get("team_id"),
        name=stored.get("name"),
        email=stored.get("email"),
        approver_groups=groups,
    )


async def _lock_intent(conn: AsyncConnection, where: Any) -> Any:
    return (await conn.execute(select(step_up_intents).where(where).with_for_update())).first()


async def _intent(conn: AsyncConnection, row: Any, **changes: Any) -> Intent:
    rule = (
        await conn.execute(select(requests.c.policy_rule).where(requests.c.id == row.request_id))
    ).scalar()
    intent = Intent(
        id=row.id,
        request_id=row.request_id,
        approver_id=row.approver_id,
        decision=row.decision,
        status=row.status,
        # A request judged under an MFA rule keeps it; the fallback only guards a rule edited away.
        requirement=MfaRequirement.of(rule) or MfaRequirement(max_age=0, amr=("mfa",), acr=()),
        nonce=row.nonce,
        code_verifier=row.code_verifier,
        created_at=row.created_at,
    )
    return replace(intent, **changes)


async def _unusable(conn: AsyncConnection, row: Any, *, allowed: tuple[str, ...]) -> StepUpFailure | None:
    if row.status not in allowed:
        detail = "this sign-in link was already used" if row.status != "failed" else "this sign-in ended"
        await _audit_failure(conn, row, "replayed", detail)
        return StepUpFailure("replayed", detail, row.request_id)
    if await db_now(conn) >= row.expires_at:
        return await _fail(conn, row, "expired_intent", "the sign-in link has expired")
    return None


async def _fail(
    conn: AsyncConnection, row: Any, reason: FailureReason, detail: str, *, audit: bool = True
) -> StepUpFailure:
    now = await db_now(conn)
    await conn.execute(
        update(step_up_intents)
        .where(step_up_intents.c.id == row.id)
        .values(status="failed", failure=reason, finished_at=now)
    )
    if audit:  # a refusal by the click rules is audited by them already
        await _audit_failure(conn, row, reason, detail)
    return StepUpFailure(reason, detail, row.request_id)


async def _audit_failure(
    conn: AsyncConnection, row: Any, reason: FailureReason, detail: str, *, retryable: bool = False
) -> None:
    data: dict[str, Any] = {
        "user_id": row.approver_id,
        "choice": row.decision,
        "reason": reason,
        "detail": detail,
    }
    if retryable:  # the intent is still usable: an auditor should not read this as the end of it
        data["retryable"] = True
    await append_event(
        conn,
        chain_id=row.request_id,
        kind="step_up_failed",
        actor=f"slack:{row.approver_id}",
        data=data,
    )


async def _bind_identity(
    conn: AsyncConnection, row: Any, clicker: Clicker, login: VerifiedLogin
) -> StepUpFailure | None:
    """First step-up links by verified email; afterwards the IdP subject must be the linked one."""
    link = (
        await conn.execute(select(identity_links).where(identity_links.c.slack_user_id == clicker.user_id))
    ).first()
    if link is not None:
        if link.issuer != login.issuer or link.subject != login.subject:
            return await _fail(conn, row, "wrong_identity", "someone other than the linked person signed in")
        return None
    slack_email = (clicker.email or "").strip().casefold()
    idp_email = (login.email or "").strip().casefold()
    if not login.email_verified or not slack_email or idp_email != slack_email:
        return await _fail(
            conn,
            row,
            "email_mismatch",
            "the identity provider's verified email does not match the Slack profile's email",
        )
    now = await db_now(conn)
    inserted = await insert_ignoring_conflict(
        conn,
        identity_links,
        {
            "slack_user_id": clicker.user_id,
            "issuer": login.issuer,
            "subject": login.subject,
            "email": login.email,
            "linked_at": now,
        },
    )
    taken = (
        await conn.execute(
            select(identity_links.c.slack_user_id).where(
                identity_links.c.issuer == login.issuer, identity_links.c.subject == login.subject
            )
        )
    ).scalar()
    if inserted is None or taken != clicker.user_id:
        return await _fail(
            conn, row, "identity_in_use", "this identity is already linked to another Slack user"
        )
    await append_event(
        conn,
        chain_id=identity_chain(clicker.user_id),
        kind="identity_linked",
        actor=f"slack:{clicker.user_id}",
        data={
            "slack_user_id": clicker.user_id,
            "issuer": login.issuer,
            "subject": login.subject,
            "email": login.email,
            "request_id": row.request_id,
        },
        now=now,
    )
    return None


async def _remember_step_up(
    conn: AsyncConnection, user_id: str, login: VerifiedLogin, now: dt.datetime
) -> None:
    values = {
        "issuer": login.issuer,
        "subject": login.subject,
        "amr": login.amr,
        "acr": login.acr,
        "auth_time": login.auth_time,
        "verified_at": now,
    }
    inserted = await insert_ignoring_conflict(conn, step_ups, {"slack_user_id": user_id, **values})
    if inserted is None:
        await conn.execute(update(step_ups).where(step_ups.c.slack_user_id == user_id).values(**values))


async def note_step_up_problem(
    conn: AsyncConnection, intent_id: str, reason: FailureReason, detail: str
) -> StepUpFailure:
    """Audit a failed attempt that leaves the intent usable (the IdP was down when the link was opened)."""
    row = (await conn.execute(select(step_up_intents).where(step_up_intents.c.id == intent_id))).first()
    if row is None:
        return StepUpFailure("unknown_intent", "no such sign-in link")
    await _audit_failure(conn, row, reason, detail, retryable=True)
    return StepUpFailure(reason, detail, row.request_id)
