"""The shape of an approval chain as the compliance API and exports give it, declared as TypedDicts.

approvals.audit.chains builds chains as plain dicts (cheaply: exports assemble thousands a second),
approvals.audit.chain_json has PostgreSQL write the same JSON, and app.http.openapi documents the
API's responses from these declarations. A TypedDict costs nothing at run time and lets mypy check a
dict literal against it; each one forbids unknown fields in its schema (`additionalProperties:
false`), so the API test fails when a chain carries a field not declared here.

Values copied from stored JSON whose shape belongs elsewhere (event data, the policy rule snapshot,
MFA evidence) are open objects: their history holds shapes older than today's code.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict  # pydantic reads TypedDicts from here before Python 3.12

from approvals.requests.lifecycle import Status
from approvals.requests.views import AttemptResult, DecidedBy, OutcomeStatus, Time

_CLOSED = ConfigDict(extra="forbid")
Json = dict[str, Any]


@with_config(_CLOSED)
class ChainRequest(TypedDict):
    """What the agent asked for; params with the paths the rule redacts replaced by "[redacted]"."""

    action: str
    title: str
    summary: str
    params: Json
    payload_sha256: Annotated[str, Field(description="SHA-256 of the request body as the agent sent it.")]
    on_behalf_of: str
    links: list[str]
    callback_url: str | None
    created_at: Time
    expires_at: Time


@with_config(_CLOSED)
class ChainAgent(TypedDict):
    """The agent that asked, as registered."""

    id: str
    name: str
    owner: str
    purpose: str
    risk: str


@with_config(_CLOSED)
class ChainPolicy(TypedDict):
    """The policy version and rule the request was judged under (the rule as it was then)."""

    name: str
    version: int
    sha256: str
    approvers: Json | None
    required_approvals: int
    mfa: Json | None
    rule: Json | None


@with_config(_CLOSED)
class ChainNotification(TypedDict):
    """A Slack card posted for the request."""

    destination: str
    channel: str
    ts: str
    permalink: str | None
    posted_at: Time


@with_config(_CLOSED)
class ChainClick(TypedDict):
    """A click on a card that was recorded as a decision or refused, from its audit event."""

    kind: Annotated[str, Field(description="decision_recorded or click_refused.")]
    at: Time
    user_id: str | None
    user_name: str | None
    email: str | None
    team_id: str | None
    authorised_as: Json | None
    choice: str | None
    reason: str | None
    action_ts: str | None


@with_config(_CLOSED)
class ChainApprover(TypedDict):
    id: str
    name: str | None
    email: str | None
    team_id: str | None


@with_config(_CLOSED)
class ChainDecision(TypedDict):
    """A human decision as stored, with the policy version it was made under."""

    approver: ChainApprover
    decision: str
    reason: str | None
    action_ts: str | None
    policy_version: int | None
    mfa: Json | None
    decided_at: Time


@with_config(_CLOSED)
class ChainFinal(TypedDict):
    status: Status
    decided_by: DecidedBy | None
    reason: str | None
    decided_at: Time


@with_config(_CLOSED)
class ChainCallback(TypedDict):
    """One try at calling the agent back."""

    attempt: int
    at: Time
    status_code: int | None
    result: AttemptResult
    latency_ms: int | None
    error: str | None


@with_config(_CLOSED)
class ChainOutcome(TypedDict):
    status: OutcomeStatus
    detail: str | None
    external_ref: str | None
    recorded_at: Time | None


@with_config(_CLOSED)
class ChainEvent(TypedDict):
    """One hash-chained audit event of the request."""

    seq: int
    kind: str
    actor: str
    at: Time
    data: Json
    prev_hash: str
    hash: str


@with_config(_CLOSED)
class ChainView(TypedDict):
    """An approval chain: request, policy decision, human decisions, deliveries, outcome, events."""

    id: str
    status: Status
    request: ChainRequest
    agent: ChainAgent
    policy: ChainPolicy
    policy_decision: Annotated[
        Json | None, Field(description="The policy_evaluated event's data (null if it is missing).")
    ]
    notifications: list[ChainNotification]
    clicks: list[ChainClick]
    decisions: list[ChainDecision]
    final: ChainFinal | None
    callbacks: list[ChainCallback]
    outcome: ChainOutcome | None
    events: list[ChainEvent]
