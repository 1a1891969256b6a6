"""What an agent sees of a request: typed rows in, one typed view out, for responses and callbacks.

The view's shape is declared once, here, as TypedDicts. mypy checks every view built against them,
and app.http.openapi derives the response schemas from the same declarations (pydantic's
TypeAdapter), so the document cannot drift from what is sent. Domain dataclasses plus pydantic
response models in app/ would be two hand-written copies of every field. TypedDicts rather than
pydantic models because a view is built on every create and read: a dict literal checked by mypy
costs nothing at run time, where constructing and dumping a tree of models costs tens of
microseconds a response; and the view stays the plain dict the card builder, the CLI and callbacks
read. pydantic, a validation library, appears only as the config that makes each schema forbid
unknown fields (`additionalProperties: false`), so a field sent but not declared fails the API test.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal, cast

from pydantic import ConfigDict, Field, WithJsonSchema, with_config
from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncConnection
from typing_extensions import TypedDict  # pydantic reads TypedDicts from here before Python 3.12

from approvals.db import iso_utc
from approvals.requests.decisions import Choice
from approvals.requests.lifecycle import Status
from approvals.tables import decisions, delivery_attempts, requests

DecidedBy = Literal["policy", "human", "agent", "system"]
OutcomeStatus = Literal["succeeded", "failed"]
AttemptResult = Literal["delivered", "retry", "failed", "gone", "interrupted"]

# A time as every response writes it: ISO 8601 in UTC with a trailing Z (iso_utc).
Time = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]


def time_text(value: dt.datetime) -> Time:
    """A time as a view writes it (iso_utc, for a time that is there)."""
    text = iso_utc(value)
    assert text is not None  # iso_utc gives None only for None
    return text


def _maybe_time(value: dt.datetime | None) -> Time | None:
    return None if value is None else time_text(value)


# -- rows: exactly the columns the view reads, typed -----------------------------------------------


def _names(row_type: type[Any]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(row_type))


@dataclass(frozen=True, slots=True)
class RequestRow:
    """The request columns a view is made of (VIEW_COLUMNS selects these and only these)."""

    id: str
    status: Status
    action: str
    title: str
    summary: str
    params: dict[str, Any]
    on_behalf_of: str
    # Both None for a request stored before requesters were identities (migration 0011).
    requester_email: str | None
    requester_slack_id: str | None
    links: list[str]
    callback_url: str | None
    policy_name: str
    policy_version_id: int
    required_approvals: int
    decided_by: DecidedBy | None
    reason: str | None
    created_at: dt.datetime
    expires_at: dt.datetime
    decided_at: dt.datetime | None
    outcome_status: OutcomeStatus | None
    outcome_detail: str | None
    outcome_external_ref: str | None
    outcome_at: dt.datetime | None
    delivery_error: str | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> RequestRow:
        """The fields of a row with at least these columns (a join's others are left out)."""
        values = {name: getattr(row, name) for name in _names(cls)}
        values["status"] = Status(values["status"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """The columns of one human decision a view shows."""

    approver_id: str
    approver_name: str | None
    approver_email: str | None
    decision: Choice
    reason: str | None
    mfa: dict[str, Any] | None
    created_at: dt.datetime

    @classmethod
    def from_row(cls, row: Row[Any]) -> DecisionRow:
        return cls(**{name: getattr(row, name) for name in _names(cls)})


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """The columns of one delivery attempt (a card post, an update, a callback) a view shows."""

    kind: str
    attempt: int
    target: str | None
    started_at: dt.datetime
    latency_ms: int | None
    status_code: int | None
    result: AttemptResult
    error: str | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> AttemptRow:
        return cls(**{name: getattr(row, name) for name in _names(cls)})


# The columns each row type reads, for callers that read many requests and would rather not fetch
# (and decode) the others, such as the policy rule snapshot. Decisions add their id and request id,
# by which a batch reader orders and groups them.
VIEW_COLUMNS = tuple(requests.c[name] for name in _names(RequestRow))
DECISION_VIEW_COLUMNS = (
    decisions.c.id,
    decisions.c.request_id,
    *(decisions.c[name] for name in _names(DecisionRow)),
)
ATTEMPT_VIEW_COLUMNS = tuple(delivery_attempts.c[name] for name in _names(AttemptRow))


# -- the view ----------------------------------------------------------------------------------------

_CLOSED = ConfigDict(extra="forbid")


@with_config(_CLOSED)
class RequesterView(TypedDict):
    """Who on_behalf_of is, as the self-approval check compares it."""

    email: Annotated[
        str | None,
        Field(description="The mailbox: NFKC, casefolded, without a +tag (null for a Slack user ID)."),
    ]
    slack_user_id: Annotated[
        str | None,
        Field(description="The Slack user given, or resolved from the email at intake (null: not found)."),
    ]


@with_config(_CLOSED)
class PolicyView(TypedDict):
    """The policy rule the request was judged under, and the policy version it belongs to."""

    name: str
    version: int


@with_config(_CLOSED)
class ApproverView(TypedDict):
    """The Slack user who decided, with the name and email Slack gave at the time."""

    id: str
    name: str | None
    email: str | None


@with_config(_CLOSED)
class DecisionView(TypedDict):
    """One approver's decision."""

    approver: ApproverView
    decision: Choice
    reason: str | None
    mfa: Annotated[
        dict[str, Any] | None,
        Field(description="Step-up evidence when the rule required MFA: iss, sub, amr, acr and times."),
    ]
    decided_at: Time


@with_config(_CLOSED)
class OutcomeView(TypedDict):
    """What the agent reported doing after approval."""

    status: OutcomeStatus
    detail: str | None
    external_ref: str | None
    recorded_at: Time


@with_config(_CLOSED)
class DeliveryView(TypedDict):
    """One try at delivering something about the request: a Slack card or update, or a callback."""

    kind: Annotated[str, Field(description="slack_notify, slack_post, slack_update or callback.")]
    attempt: int
    target: str | None
    at: Time
    latency_ms: int | None
    status_code: int | None
    result: AttemptResult
    error: str | None


@with_config(_CLOSED)
class RequestState(TypedDict):
    """A request as a callback carries it (its `data`): the request without its delivery log."""

    id: str
    status: Status
    action: str
    title: str
    summary: str
    params: dict[str, Any]
    on_behalf_of: Annotated[str, Field(description="As the agent sent it.")]
    requester: RequesterView
    links: list[str]
    callback_url: str | None
    policy: PolicyView
    required_approvals: int
    decided_by: DecidedBy | None
    reason: str | None
    created_at: Time
    expires_at: Time
    decided_at: Time | None
    decisions: list[DecisionView]
    outcome: OutcomeView | None
    delivery_error: str | None


@with_config(_CLOSED)
class RequestView(RequestState):
    """A request as the agent API answers: create, read, cancel and outcome."""

    deliveries: list[DeliveryView]


@with_config(_CLOSED)
class CallbackEvent(TypedDict):
    """The body of a callback, signed per Standard Webhooks."""

    type: Annotated[
        str, Field(description="request.approved, .rejected, .expired, .cancelled, or request.outcome.")
    ]
    data: RequestState


def request_state(row: RequestRow, decision_rows: Sequence[DecisionRow]) -> RequestState:
    """The request as a callback carries it."""
    return {
        "id": row.id,
        "status": row.status,
        "action": row.action,
        "title": row.title,
        "summary": row.summary,
        "params": row.params,
        "on_behalf_of": row.on_behalf_of,
        "requester": {"email": row.requester_email, "slack_user_id": row.requester_slack_id},
        "links": row.links,
        "callback_url": row.callback_url,
        "policy": {"name": row.policy_name, "version": row.policy_version_id},
        "required_approvals": row.required_approvals,
        "decided_by": row.decided_by,
        "reason": row.reason,
        "created_at": time_text(row.created_at),
        "expires_at": time_text(row.expires_at),
        "decided_at": _maybe_time(row.decided_at),
        "decisions": [
            {
                "approver": {"id": d.approver_id, "name": d.approver_name, "email": d.approver_email},
                "decision": d.decision,
                "reason": d.reason,
                "mfa": d.mfa,
                "decided_at": time_text(d.created_at),
            }
            for d in decision_rows
        ],
        "outcome": None
        if row.outcome_status is None or row.outcome_at is None
        else {
            "status": row.outcome_status,
            "detail": row.outcome_detail,
            "external_ref": row.outcome_external_ref,
            "recorded_at": time_text(row.outcome_at),
        },
        "delivery_error": row.delivery_error,
    }


def request_view(
    row: RequestRow, decision_rows: Sequence[DecisionRow], attempts: Sequence[AttemptRow] = ()
) -> RequestView:
    """The public view of a request row, its human decisions and its delivery attempts."""
    return {
        **request_state(row, decision_rows),
        "deliveries": [
            {
                "kind": a.kind,
                "attempt": a.attempt,
                "target": a.target,
                "at": time_text(a.started_at),
                "latency_ms": a.latency_ms,
                "status_code": a.status_code,
                "result": a.result,
                "error": a.error,
            }
            for a in attempts
        ],
    }


async def load_view(conn: AsyncConnection, request_id: str) -> RequestView | None:
    """Read a request, its decisions and its delivery attempts as the agent sees them, or None."""
    row = (await conn.execute(select(*VIEW_COLUMNS).where(requests.c.id == request_id))).first()
    if row is None:
        return None
    decision_rows = await conn.execute(
        select(*DECISION_VIEW_COLUMNS).where(decisions.c.request_id == request_id).order_by(decisions.c.id)
    )
    attempt_rows = await conn.execute(
        select(*ATTEMPT_VIEW_COLUMNS)
        .where(delivery_attempts.c.request_id == request_id)
        .order_by(delivery_attempts.c.id)
    )
    return request_view(
        RequestRow.from_row(row),
        [DecisionRow.from_row(d) for d in decision_rows],
        [AttemptRow.from_row(a) for a in attempt_rows],
    )


# -- for callers that still pass untyped rows or want plain dicts ----------------------------------


def render_request(row: Any, decision_rows: Sequence[Any]) -> dict[str, Any]:
    """request_view of a row (or any object with its columns as attributes), with an empty delivery
    log, as a plain dict. New code builds RequestRow and DecisionRow and calls request_view."""
    view = request_view(RequestRow.from_row(row), [DecisionRow.from_row(d) for d in decision_rows])
    return cast(dict[str, Any], view)


async def load_request_view(conn: AsyncConnection, request_id: str) -> dict[str, Any] | None:
    """load_view as a plain dict, or None."""
    return cast(dict[str, Any] | None, await load_view(conn, request_id))
