"""Request use cases for agents: create (policy-judged, idempotent), read, cancel, report the outcome."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.batches import append_to_chains
from approvals.audit.events import NewEvent, append_event, canonical_json
from approvals.db import db_now, insert_ignoring_conflict
from approvals.delivery.outbox import (
    CALLBACK,
    SLACK_NOTIFY,
    SLACK_UPDATE,
    enqueue,
    enqueue_many,
    outbox_values,
)
from approvals.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound
from approvals.identity.agents import Principal, agent_chain
from approvals.identity.keys import new_id
from approvals.policies.policy_file import Rule, evaluate
from approvals.policies.versions import ActivePolicies
from approvals.requests.intake_statement import EXPIRES_AT, insert_new_request
from approvals.requests.lifecycle import (
    FINAL,
    Status,
    event_kind,
    final_delivery_rows,
    finalise,
    initial_status,
)
from approvals.requests.principals import NotAPrincipal, Requester, parse_requester
from approvals.requests.reminders import first_reminder
from approvals.requests.views import load_request_view, render_request
from approvals.tables import idempotency_keys, requests

DEFAULT_LIFETIME_SECONDS = 24 * 3600
_NO_OUTCOME = {
    "outcome_status": None,
    "outcome_detail": None,
    "outcome_external_ref": None,
    "outcome_at": None,
    "delivery_error": None,
}


@dataclass(frozen=True)
class NewRequest:
    """A validated request body (the HTTP adapter checks types, sizes and URLs before this)."""

    action: str
    title: str
    summary: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    on_behalf_of: str = ""
    links: list[str] = field(default_factory=list)
    callback_url: str | None = None
    expires_in: int | None = None
    # Who on_behalf_of is, resolved to a Slack user by the adapter where it can; None: parsed here.
    # Not part of what the agent asked for, so not in payload_sha256.
    requester: Requester | None = None

    def identity(self) -> Requester:
        """The requester as an identity; InvalidInput for text that names nobody."""
        if self.requester is not None:
            return self.requester
        try:
            return parse_requester(self.on_behalf_of)
        except NotAPrincipal as error:
            raise InvalidInput("invalid_field", f"on_behalf_of: {error}", "on_behalf_of") from None

    def with_requester(self, requester: Requester) -> NewRequest:
        return replace(self, requester=requester)

    def payload_sha256(self) -> str:
        """A hash of exactly what the agent asked for, kept in the chain."""
        body = {
            "action": self.action,
            "title": self.title,
            "summary": self.summary,
            "params": self.params,
            "on_behalf_of": self.on_behalf_of,
            "links": self.links,
            "callback_url": self.callback_url,
            "expires_in": self.expires_in,
        }
        return hashlib.sha256(canonical_json(body)).hexdigest()


@dataclass(frozen=True)
class Created:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False
    # Outbox kinds this transaction queued: the caller wakes a dispatcher only for work it can do.
    enqueued: frozenset[str] = frozenset()


@dataclass(frozen=True)
class KeyInUse:
    """Another transaction holds this Idempotency-Key: read its stored answer after this one ends."""


def is_one_statement(principal: Principal, new: NewRequest, idempotency_key: str | None) -> bool:
    """Whether create_request will write in exactly one statement, which then needs no transaction
    around it: a new request without an Idempotency-Key (whose claim comes first), for an action the
    agent may ask for (a refusal is audited in several)."""
    return idempotency_key is None and principal.may_request(new.action)


async def create_request(
    conn: AsyncConnection,
    *,
    principal: Principal,
    new: NewRequest,
    policies: ActivePolicies,
    idempotency_key: str | None = None,
) -> Created | KeyInUse | DomainError:
    """Judge a new request against policy and store it with its audit events and outbox rows.

    Refusals that must leave a trace (an action outside the allowlist) are returned, not raised,
    so the caller commits the audit event before answering.
    """
    assert principal.agent_id is not None
    # PostgreSQL stamps a new request with its own clock in the one statement that writes it; the
    # clock is read first only where something else needs the time before that (a key).
    now = await db_now(conn) if idempotency_key is not None else None
    payload_sha256 = new.payload_sha256()
    if idempotency_key is not None:
        # This INSERT waits for any concurrent holder of the key to finish.
        claimed = await insert_ignoring_conflict(
            conn,
            idempotency_keys,
            {
                "agent_id": principal.agent_id,
                "key": idempotency_key,
                "body_sha256": payload_sha256,
                "created_at": now,
            },
        )
        if claimed is None:
            return KeyInUse()

    if not principal.may_request(new.action):
        await append_event(
            conn,
            chain_id=agent_chain(principal.agent_id),
            kind="action_refused",
            actor=f"agent:{principal.agent_name}",
            data={"action": new.action, "reason": "not_in_allowlist", "payload_sha256": payload_sha256},
            now=now,
        )
        if idempotency_key is not None:
            await conn.execute(
                idempotency_keys.delete().where(
                    idempotency_keys.c.agent_id == principal.agent_id,
                    idempotency_keys.c.key == idempotency_key,
                )
            )
        return Forbidden(
            "action_not_allowed",
            f"agent {principal.agent_name!r} may not request action {new.action!r}",
            "action",
        )

    evaluation = evaluate(policies.policy_set, new.action)
    rule = evaluation.rule
    requester = new.identity()
    _check_resolved(rule, requester, new.on_behalf_of)
    max_lifetime = rule.expires_in if rule is not None else DEFAULT_LIFETIME_SECONDS
    lifetime = min(new.expires_in or max_lifetime, max_lifetime)
    status = initial_status(evaluation.decision)
    final = status in FINAL
    request_id = new_id("req_")
    values: dict[str, Any] = {
        "id": request_id,
        "agent_id": principal.agent_id,
        "action": new.action,
        "title": new.title,
        "summary": new.summary,
        "params": new.params,
        "payload_sha256": payload_sha256,
        "on_behalf_of": new.on_behalf_of,
        "requester_email": requester.mailbox,
        "requester_slack_id": requester.slack_user_id,
        "links": new.links,
        "callback_url": new.callback_url,
        "status": status,
        "decided_by": "policy" if final else None,
        "reason": evaluation.reason if final else None,
        "policy_name": evaluation.policy_name,
        "policy_version_id": policies.version,
        "policy_rule": policies.rule_snapshot(evaluation.rule_index),
        "required_approvals": rule.required_approvals if rule is not None else 1,
    }
    events = [
        NewEvent(
            "request_created",
            f"agent:{principal.agent_name}",
            {
                "agent_id": principal.agent_id,
                "agent": principal.agent_name,
                "action": new.action,
                "on_behalf_of": new.on_behalf_of,
                "requester": requester.audit_data(),
                "payload_sha256": payload_sha256,
                "callback_url": new.callback_url,
                "expires_in_requested": new.expires_in,
                "expires_at": EXPIRES_AT,
                "idempotency_key": idempotency_key,
            },
        ),
        NewEvent(
            "policy_evaluated",
            "policy",
            {
                "inputs": {"action": new.action, "agent": principal.agent_name},
                "policy": evaluation.policy_name,
                "policy_version": policies.version,
                "policy_sha256": policies.sha256,
                "rule_index": evaluation.rule_index,
                "decision": evaluation.decision,
                "reason": evaluation.reason,
            },
        ),
    ]
    if final:
        events.append(
            NewEvent(event_kind(status), "policy", {"decided_by": "policy", "reason": evaluation.reason})
        )
    # A new request's deliveries: its card, or (decided by policy) the agent's callback.
    deliveries: list[tuple[str, str, dict[str, Any]]] = []
    if not final:
        deliveries.append((SLACK_NOTIFY, f"{SLACK_NOTIFY}:{request_id}", {}))
    elif new.callback_url:
        deliveries.append((CALLBACK, f"{CALLBACK}:{request_id}:{status}", {"event": f"request.{status}"}))
    outbox_rows = [
        outbox_values(kind=kind, dedupe_key=key, request_id=request_id, payload=payload)
        for kind, key, payload in deliveries
    ]
    reminder = None if final else first_reminder(values["policy_rule"], dt.timedelta(seconds=lifetime))
    stamped = await insert_new_request(
        conn,
        request=values,
        lifetime_seconds=lifetime,
        final=final,
        outbox_rows=outbox_rows,
        events=events,
        first_reminder=reminder,
    )
    created_at, expires_at = stamped.created_at, stamped.expires_at
    values.update(created_at=created_at, expires_at=expires_at, decided_at=created_at if final else None)

    # A brand-new request has no decisions or deliveries: render it without reading it back.
    view = render_request(SimpleNamespace(**values, **_NO_OUTCOME), [])
    if idempotency_key is not None:
        await conn.execute(
            update(idempotency_keys)
            .where(
                idempotency_keys.c.agent_id == principal.agent_id, idempotency_keys.c.key == idempotency_key
            )
            .values(request_id=request_id, response_status=201, response_body=view)
        )
    return Created(201, view, enqueued=frozenset(kind for kind, _, _ in deliveries))


def _check_resolved(rule: Rule | None, requester: Requester, on_behalf_of: str) -> None:
    """Refuse, before anything is written, a requester the rule needs as a Slack user and who is not."""
    if rule is None or not rule.requester_must_resolve or requester.resolved:
        return
    why = {
        "not_found": "Slack has no user with this email",
        "unavailable": "Slack could not be asked",
    }.get(requester.resolution, "Slack is not configured to look it up")
    raise InvalidInput(
        "requester_unresolved",
        f"on_behalf_of {on_behalf_of!r} is not a Slack user ({why}), and policy rule "
        f"{rule.display_name!r} requires one (requester_must_resolve): send the requester's Slack "
        "email or user ID",
        "on_behalf_of",
    )


async def replay_idempotent(
    conn: AsyncConnection, *, principal: Principal, new: NewRequest, idempotency_key: str
) -> Created | DomainError | None:
    """The stored answer for a repeated key: the first response, a 409 for another body, or None (retry)."""
    row = (
        await conn.execute(
            select(idempotency_keys).where(
                idempotency_keys.c.agent_id == principal.agent_id, idempotency_keys.c.key == idempotency_key
            )
        )
    ).first()
    if row is None or row.response_status is None:
        return None
    if row.body_sha256 != new.payload_sha256():
        return Conflict(
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
            "Idempotency-Key",
        )
    return Created(int(row.response_status), dict(row.response_body), replayed=True)


async def get_request(conn: AsyncConnection, *, principal: Principal, request_id: str) -> dict[str, Any]:
    """A request the agent owns; another agent's request is indistinguishable from a missing one."""
    owner = (await conn.execute(select(requests.c.agent_id).where(requests.c.id == request_id))).first()
    if owner is None or owner.agent_id != principal.agent_id:
        raise NotFound("request_not_found", f"no request {request_id!r}", "id")
    view = await load_request_view(conn, request_id)
    assert view is not None
    return view


async def _owned_status(conn: AsyncConnection, principal: Principal, request_id: str) -> Any:
    row = (
        await conn.execute(
            select(requests.c.agent_id, requests.c.status, requests.c.outcome_status).where(
                requests.c.id == request_id
            )
        )
    ).first()
    if row is None or row.agent_id != principal.agent_id:
        raise NotFound("request_not_found", f"no request {request_id!r}", "id")
    return row


async def cancel_request(conn: AsyncConnection, *, principal: Principal, request_id: str) -> dict[str, Any]:
    """Withdraw a pending request; only one final state ever wins (a conditional UPDATE decides)."""
    await _owned_status(conn, principal, request_id)
    withdrawn = await _withdraw(
        conn,
        request_id,
        decided_by="agent",
        reason="cancelled by the agent",
        actor=f"agent:{principal.agent_name}",
        event_data={"decided_by": "agent"},
    )
    if not withdrawn:
        current = await _owned_status(conn, principal, request_id)
        raise Conflict("not_pending", f"request is already {current.status}", "status")
    view = await load_request_view(conn, request_id)
    assert view is not None
    return view


MAX_OPERATOR_REASON = 500


async def cancel_as_operator(
    conn: AsyncConnection, *, request_id: str, operator: str, reason: str
) -> dict[str, Any]:
    """An operator withdraws a pending request (`approvals requests cancel`), saying why: the card and
    the agent are told, as for any final state, and the audit event names the operator."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput("missing_reason", "say why the request is cancelled (--reason)", "reason")
    if len(reason) > MAX_OPERATOR_REASON:
        raise InvalidInput(
            "reason_too_long", f"keep the reason under {MAX_OPERATOR_REASON} characters", "reason"
        )
    status = select(requests.c.status).where(requests.c.id == request_id)
    if (await conn.execute(status)).first() is None:
        raise NotFound("request_not_found", f"no request {request_id!r}", "id")
    withdrawn = await _withdraw(
        conn,
        request_id,
        decided_by="system",
        reason=f"cancelled by an operator: {reason}",
        actor=f"operator:{operator}",
        event_data={"decided_by": "system", "reason": reason},
    )
    if not withdrawn:  # decided meanwhile, or long ago: say what it is now
        raise Conflict("not_pending", f"request is already {(await conn.execute(status)).scalar()}", "status")
    view = await load_request_view(conn, request_id)
    assert view is not None
    return view


async def _withdraw(
    conn: AsyncConnection,
    request_id: str,
    *,
    decided_by: str,
    reason: str,
    actor: str,
    event_data: dict[str, Any],
) -> bool:
    """Cancel a request if it is still pending, with the event and deliveries every final state owes;
    False when it was not pending (a conditional UPDATE decides, so only one final state ever wins)."""
    now = await db_now(conn)
    result = await conn.execute(
        update(requests)
        .where(requests.c.id == request_id, requests.c.status == Status.PENDING)
        .values(status=Status.CANCELLED, decided_by=decided_by, decided_at=now, reason=reason)
    )
    if result.rowcount != 1:
        return False
    await finalise(
        conn, request_id=request_id, status=Status.CANCELLED, actor=actor, now=now, data=event_data
    )
    return True


@dataclass(frozen=True)
class Outcome:
    status: str  # succeeded | failed
    detail: str = ""
    external_ref: str | None = None


async def record_outcome(
    conn: AsyncConnection, *, principal: Principal, request_id: str, outcome: Outcome
) -> dict[str, Any]:
    """Close the chain with what the agent did after approval; accepted once, and only after approval."""
    await _owned_status(conn, principal, request_id)
    now = await db_now(conn)
    result = await conn.execute(
        update(requests)
        .where(
            requests.c.id == request_id,
            requests.c.status == Status.APPROVED,
            requests.c.outcome_status.is_(None),
        )
        .values(
            outcome_status=outcome.status,
            outcome_detail=outcome.detail,
            outcome_external_ref=outcome.external_ref,
            outcome_at=now,
        )
    )
    if result.rowcount != 1:
        current = await _owned_status(conn, principal, request_id)
        if current.status != Status.APPROVED:
            raise Conflict(
                "not_approved",
                f"an outcome needs an approved request; this one is {current.status}",
                "status",
            )
        raise Conflict(
            "outcome_already_recorded", "the outcome of this request was already recorded", "status"
        )
    await append_event(
        conn,
        chain_id=request_id,
        kind="outcome_recorded",
        actor=f"agent:{principal.agent_name}",
        data={"status": outcome.status, "detail": outcome.detail, "external_ref": outcome.external_ref},
    )
    await enqueue(
        conn,
        kind=SLACK_UPDATE,
        dedupe_key=f"{SLACK_UPDATE}:{request_id}:outcome",
        request_id=request_id,
        payload={"status": "outcome"},
        now=now,
    )
    callback = (
        await conn.execute(select(requests.c.callback_url).where(requests.c.id == request_id))
    ).scalar()
    if callback:
        await enqueue(
            conn,
            kind=CALLBACK,
            dedupe_key=f"{CALLBACK}:{request_id}:outcome",
            request_id=request_id,
            payload={"event": "request.outcome"},
            now=now,
        )
    view = await load_request_view(conn, request_id)
    assert view is not None
    return view


EXPIRED_EVENT = NewEvent(event_kind(Status.EXPIRED), "scheduler", {"decided_by": "system"})
_EXPIRED = {"status": Status.EXPIRED, "decided_by": "system", "reason": "no decision before expiry"}

# Claim, expire and lock the chain heads of a batch in one statement. The time is the
# database's, read once for the batch (clock_timestamp() changes from row to row). NO KEY UPDATE:
# rows being referenced by a concurrent insert (a card, a decision) hold a key-share lock, which a
# plain FOR UPDATE would skip, and the sweep would miss a due request for a tick. The claim is a
# MATERIALIZED CTE, run once: as a subquery in UPDATE ... FROM the planner may rescan it for every
# row it joins, claiming and expiring far more than `limit` rows. The heads are locked in chain id
# order (the ORDER BY runs before the lock), as append_to_chains locks them, so two batches cannot
# deadlock on them; looked up by an array, they come from the primary key. The limit is written into
# the text (one statement per limit): were it a parameter, the generic plan PostgreSQL may switch a
# prepared statement to would guess a tenth of the table for it and join by reading every request.
_EXPIRE_BATCH = """
    WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS now),
    due AS MATERIALIZED (
        SELECT id FROM requests
         WHERE status = 'pending' AND expires_at <= (SELECT now FROM clock)
         ORDER BY expires_at LIMIT %d
           FOR NO KEY UPDATE SKIP LOCKED
    ),
    expired AS (
        UPDATE requests AS r
           SET status = :status, decided_by = :decided_by, decided_at = (SELECT now FROM clock),
               reason = :reason
          FROM due
         WHERE r.id = due.id AND r.status = 'pending'
        RETURNING r.id, r.callback_url, r.decided_at AS now
    ),
    heads AS (
        SELECT chain_id, seq, hash FROM chain_heads
         WHERE chain_id = ANY (ARRAY(SELECT id FROM expired))
         ORDER BY chain_id
           FOR UPDATE
    )
    SELECT e.id, e.callback_url, e.now, heads.seq, heads.hash
      FROM expired AS e LEFT JOIN heads ON heads.chain_id = e.id
"""


@functools.cache
def _expire_batch(limit: int) -> Any:
    return text(_EXPIRE_BATCH % int(limit)).columns(now=requests.c.decided_at.type)


async def expire_due_requests(conn: AsyncConnection, *, limit: int = 500) -> list[str]:
    """Expire pending requests past their deadline, each exactly once, claiming rows other replicas skip.

    Set-based: the batch is claimed and expired together, and the audit events and outbox rows of the
    whole batch are written together (the same rows `finalise` writes for one request), in five
    statements per batch whatever its size: claim-expire-lock, the events, the heads, the card
    updates, the callbacks.
    """
    expired = (await conn.execute(_expire_batch(limit), _EXPIRED)).all()
    if not expired:
        return []
    now = expired[0].now
    heads = {row.id: None if row.seq is None else (row.seq, row.hash) for row in expired}
    await append_to_chains(conn, {row.id: [EXPIRED_EVENT] for row in expired}, now=now, locked_heads=heads)
    # One statement per kind (card updates, callbacks): within a kind every row has the same payload,
    # which then goes to the database once instead of once per row.
    deliveries: dict[str, list[dict[str, Any]]] = {}
    for row in expired:
        for delivery in final_delivery_rows(
            request_id=row.id, status=Status.EXPIRED, callback_url=row.callback_url, now=now
        ):
            deliveries.setdefault(delivery["kind"], []).append(delivery)
    for rows in deliveries.values():
        await enqueue_many(conn, rows)
    return [row.id for row in expired]


async def purge_idempotency_keys(conn: AsyncConnection, *, keep: dt.timedelta) -> int:
    """Forget Idempotency-Keys older than `keep` (at least 24 h, as promised to agents)."""
    now = await db_now(conn)
    cutoff = now - max(keep, dt.timedelta(hours=24))
    result = await conn.execute(idempotency_keys.delete().where(idempotency_keys.c.created_at < cutoff))
    return int(result.rowcount)
