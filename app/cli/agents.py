"""`approvals agents`: register agents, list them, rotate and revoke their keys."""

from __future__ import annotations

import datetime as dt

import click
from sqlalchemy.ext.asyncio import AsyncConnection

from app.cli.support import in_transaction, print_result
from approvals.identity import agents as agent_cases


@click.group()
def agents() -> None:
    """Register and manage agents and their keys."""


@agents.command("add")
@click.argument("name")
@click.option("--owner", required=True, help="Email of the person accountable for the agent.")
@click.option("--actions", required=True, help="Comma-separated action names or globs it may request.")
@click.option("--purpose", default="", help="What the agent is for.")
@click.option(
    "--risk",
    type=click.Choice(["low", "medium", "high"]),
    default="medium",
    show_default=True,
    help="How much harm its actions could do (shown to approvers and in the audit log).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def agents_add(
    name: str, owner: str, actions: str, purpose: str, risk: agent_cases.Risk, as_json: bool
) -> None:
    """Register an agent; prints its API key and webhook secret once."""
    allowed = [a.strip() for a in actions.split(",") if a.strip()]

    async def work(conn: AsyncConnection) -> agent_cases.NewAgent:
        return await agent_cases.add_agent(
            conn, name=name, owner=owner, actions=allowed, purpose=purpose, risk=risk
        )

    new = in_transaction(work)
    print_result(
        {"id": new.id, "name": new.name, "api_key": new.api_key, "webhook_secret": new.webhook_secret},
        as_json,
        f"agent {new.name} registered ({new.id})\n"
        f"API key (shown once):        {new.api_key}\n"
        f"webhook secret (shown once): {new.webhook_secret}",
    )


@agents.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def agents_list(as_json: bool) -> None:
    """List agents, their allowed actions and active key prefixes."""
    rows = in_transaction(agent_cases.list_agents)
    lines = [
        f"{r['name']:<24} owner={r['owner']} risk={r['risk']} actions={','.join(r['actions'])}"
        f"{' REVOKED' if r['revoked'] else ''} keys={','.join(k['prefix'] + '…' for k in r['keys'])}"
        for r in rows
    ]
    print_result(rows, as_json, "\n".join(lines) if lines else "no agents")


@agents.command("rotate")
@click.argument("name")
@click.option(
    "--grace",
    default=24 * 3600,
    show_default=True,
    type=click.IntRange(0, 30 * 24 * 3600),
    help="Seconds the old key keeps working.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def agents_rotate(name: str, grace: int, as_json: bool) -> None:
    """Issue a new key; the old one keeps working for the grace period."""

    async def work(conn: AsyncConnection) -> str:
        return await agent_cases.rotate_agent_key(conn, name=name, grace=dt.timedelta(seconds=grace))

    key = in_transaction(work)
    print_result(
        {"name": name, "api_key": key, "previous_key_grace_seconds": grace},
        as_json,
        f"new API key for {name} (shown once): {key}\nthe previous key stops working in {grace} s",
    )


@agents.command("revoke")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def agents_revoke(name: str, as_json: bool) -> None:
    """Revoke an agent and all its keys at once."""

    async def work(conn: AsyncConnection) -> None:
        await agent_cases.revoke_agent(conn, name=name)

    in_transaction(work)
    print_result({"name": name, "revoked": True}, as_json, f"agent {name} revoked")
