"""`approvals identities list|unlink`: the Slack users bound to an IdP identity by their first step-up."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy.ext.asyncio import AsyncConnection

from app.bootstrap import operator_identity
from app.cli.support import fail, in_transaction, print_result
from approvals.identity.step_up import list_identities, unlink_identity


@click.group()
def identities() -> None:
    """Links between Slack users and identity-provider accounts (made by MFA step-up)."""


@identities.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def identities_list(as_json: bool) -> None:
    """Every linked Slack user: IdP issuer, subject, email, and when the link was made."""

    async def work(conn: AsyncConnection) -> list[dict[str, Any]]:
        return await list_identities(conn)

    rows = in_transaction(work)
    lines = [
        f"{r['slack_user_id']}  {r['email']}  {r['issuer']}  sub={r['subject']}  {r['linked_at']}"
        for r in rows
    ]
    print_result(rows, as_json, "\n".join(lines) if lines else "no linked identities")


@identities.command("unlink")
@click.argument("slack_user_id")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def identities_unlink(slack_user_id: str, as_json: bool) -> None:
    """Remove a link (audited); the user's next step-up links again by verified email."""

    async def work(conn: AsyncConnection) -> bool:
        return await unlink_identity(conn, slack_user_id, actor=f"cli:{operator_identity()}")

    if not in_transaction(work):
        fail(f"error: {slack_user_id} has no linked identity", 1)
    print_result({"slack_user_id": slack_user_id, "unlinked": True}, as_json, f"{slack_user_id} unlinked")
