"""What an agent sees of a request: one JSON shape for create, read, cancel and outcome responses."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.db import iso_utc
from approvals.delivery.outbox import attempts_for
from approvals.tables import decisions, requests

# The columns render_request reads, for callers that read many requests and would rather not fetch
# (and decode) the others, such as the policy rule snapshot.
VIEW_COLUMNS = tuple(
    requests.c[name]
    for name in (
        "id status action title summary params on_behalf_of requester_email requester_slack_id links "
        "callback_url policy_name policy_version_id required_approvals decided_by reason created_at "
        "expires_at decided_at "
        "outcome_status outcome_detail outcome_external_ref outcome_at delivery_error"
    ).split()
)
DECISION_VIEW_COLUMNS = tuple(
    decisions.c[name]
    for name in "id request_id approver_id approver_name approver_email decision reason mfa created_at".split()
)


def render_request(
    row: Any, decision_rows: list[Any], deliveries: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The public view of a request row and its human decisions."""
    outcome = None
    if row.outcome_status is not None:
        outcome = {
            "status": row.outcome_status,
            "detail": row.outcome_detail,
            "external_ref": row.outcome_external_ref,
            "recorded_at": iso_utc(row.outcome_at),
        }
    return {
        "id": row.id,
        "status": row.status,
        "action": row.action,
        "title": row.title,
        "summary": row.summary,
        "params": row.params,
        "on_behalf_of": row.on_behalf_of,
        # Empty for a request stored before requesters were identities (migration 0011).
        "requester": {"email": row.requester_email, "slack_user_id": row.requester_slack_id},
        "links": row.links,
        "callback_url": row.callback_url,
        "policy": {"name": row.policy_name, "version": row.policy_version_id},
        "required_approvals": row.required_approvals,
        "decided_by": row.decided_by,
        "reason": row.reason,
        "created_at": iso_utc(row.created_at),
        "expires_at": iso_utc(row.expires_at),
        "decided_at": iso_utc(row.decided_at),
        "decisions": [
            {
                "approver": {"id": d.approver_id, "name": d.approver_name, "email": d.approver_email},
                "decision": d.decision,
                "reason": d.reason,
                "mfa": d.mfa,
                "decided_at": iso_utc(d.created_at),
            }
            for d in decision_rows
        ],
        "outcome": outcome,
        "delivery_error": row.delivery_error,
        "deliveries": deliveries or [],
    }


async def load_request_view(conn: AsyncConnection, request_id: str) -> dict[str, Any] | None:
    """Read a request and its decisions as the agent sees them, or None."""
    row = (await conn.execute(select(requests).where(requests.c.id == request_id))).first()
    if row is None:
        return None
    decision_rows = (
        await conn.execute(
            select(decisions).where(decisions.c.request_id == request_id).order_by(decisions.c.id)
        )
    ).all()
    return render_request(row, list(decision_rows), await attempts_for(conn, request_id))
