"""`approvals requests`: list and show requests, and cancel one as an operator (audited by name)."""

from __future__ import annotations

import json
from typing import Any

import click
from sqlalchemy.ext.asyncio import AsyncConnection

from app.bootstrap import operator_identity
from app.chain_formats import chain_filter
from app.cli.support import fail, in_transaction, print_result
from app.storable_text import unstorable
from approvals.audit.chains import chain_page
from approvals.errors import DomainError
from approvals.requests.use_cases import cancel_as_operator
from approvals.requests.views import load_request_view


@click.group()
def requests() -> None:
    """List, show and cancel approval requests."""


@requests.command("list")
@click.option(
    "--status", help="Only requests in this state (pending, approved, rejected, expired, cancelled)."
)
@click.option("--agent", help="Only this agent's requests (its name).")
@click.option("--action", help="Only requests for this action.")
@click.option("--from", "created_from", help="Created at or after (YYYY-MM-DD or ISO 8601).")
@click.option("--to", "created_to", help="Created before (YYYY-MM-DD or ISO 8601).")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="At most this many."
)
@click.option("--json", "as_json", is_flag=True, help="Print the requests as JSON.")
def requests_list(
    status: str | None,
    agent: str | None,
    action: str | None,
    created_from: str | None,
    created_to: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Requests matching the filters, oldest first."""
    try:
        wanted = chain_filter(
            {"status": status, "agent": agent, "action": action, "from": created_from, "to": created_to}
        )
    except DomainError as exc:
        fail(f"error: {exc.message}")

    async def work(conn: AsyncConnection) -> list[dict[str, Any]]:
        chains, _ = await chain_page(conn, wanted, limit=limit)
        return [
            {
                "id": c["id"],
                "status": c["status"],
                "action": c["request"]["action"],
                "title": c["request"]["title"],
                "agent": c["agent"]["name"],
                "on_behalf_of": c["request"]["on_behalf_of"],
                "created_at": c["request"]["created_at"],
                "expires_at": c["request"]["expires_at"],
            }
            for c in chains
        ]

    rows = in_transaction(work)
    lines = [
        f"{r['id']}  {r['status']:<9}  {r['created_at']}  {r['agent']}  {r['action']}  {r['title']}"
        for r in rows
    ]
    print_result(rows, as_json, "\n".join(lines) if lines else "no requests match")


@requests.command("show")
@click.argument("request_id")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the request as JSON (as the agent API shows it)."
)
def requests_show(request_id: str, as_json: bool) -> None:
    """One request: its state, decisions, outcome and deliveries."""

    async def work(conn: AsyncConnection) -> dict[str, Any] | None:
        return await load_request_view(conn, request_id)

    view = in_transaction(work)
    if view is None:
        fail(f"error: no request {request_id!r}", 1)
    decisions = [
        f"  {d['decision']} by {d['approver'].get('name') or d['approver'].get('id')} at {d['decided_at']}"
        + (" (MFA)" if d.get("mfa") else "")
        for d in view["decisions"]
    ]
    text = "\n".join(
        [
            f"{view['id']}: {view['title']}",
            f"status:       {view['status']}" + (f" ({view['reason']})" if view.get("reason") else ""),
            f"action:       {view['action']} for {view['on_behalf_of']}",
            f"created:      {view['created_at']}, expires {view['expires_at']}",
            "decisions:" + ("" if decisions else " none"),
            *decisions,
            f"outcome:      {json.dumps(view['outcome']) if view.get('outcome') else 'none reported'}",
        ]
    )
    print_result(view, as_json, text)


@requests.command("cancel")
@click.argument("request_id")
@click.option(
    "--reason", required=True, help="Why it is cancelled (shown on the card and sent to the agent)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the cancelled request as JSON.")
def requests_cancel(request_id: str, reason: str, as_json: bool) -> None:
    """Cancel a pending request as an operator; the audit log records who (OS user and host) and why."""
    if (problem := unstorable(reason)) is not None:
        fail(f"error: --reason: {problem}")
    operator = operator_identity()

    async def work(conn: AsyncConnection) -> dict[str, Any]:
        return await cancel_as_operator(conn, request_id=request_id, operator=operator, reason=reason)

    view = in_transaction(work)
    print_result(view, as_json, f"{view['id']} cancelled by {operator}: {reason.strip()}")
