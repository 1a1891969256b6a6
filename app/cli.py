"""The `approvals` command line: serve, migrate, policies and agents (DESIGN section 7)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from typing import Any, Literal

import click
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.bootstrap import StartupError
from app.cli_audit import audit, keys
from app.cli_demo import demo
from app.cli_errors import database_error_line
from app.cli_identities import identities
from app.cli_retention import retention
from app.cli_support import fail, in_transaction, print_result, settings_or_exit
from app.config import ConfigError, load_settings
from app.database import build_engine, database_url_of
from app.embedded_postgres import EmbeddedDatabaseError
from app.logs import configure_logging
from app.migrate import schema_state, upgrade_to_head
from approvals import agents as agent_cases
from approvals.audit_queries import policy_history
from approvals.policies import PolicyError, evaluate, load_policies


class _Commands(click.Group):
    """The command group: a database that cannot be reached or used is one line and exit 2 on every
    command (app/cli_errors.py), unless --debug asks for the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (OperationalError, InterfaceError, DBAPIError) as exc:
            if ctx.params.get("debug"):
                raise
            try:
                url = load_settings().database_url
            except ConfigError:
                url = None
            line = database_error_line(exc, url)
            if line is None:
                raise
            fail(line)


@click.group(cls=_Commands)
@click.version_option(package_name="approvals", message="approvals %(version)s")
@click.option("--debug", is_flag=True, help="Show the traceback of an error instead of one line.")
def main(debug: bool) -> None:
    """Human approval for AI agents, decided in Slack."""
    # Commands print their results on stdout (often as --json); their logs go to stderr.
    configure_logging("INFO", stream=sys.stderr)


@main.command()
@click.option(
    "--sandbox",
    type=click.Choice(["on", "auto", "off"]),
    is_flag=False,
    flag_value="on",
    default="off",
    show_default=True,
    help="Also serve the local Slack sandbox and dev identity provider at /sandbox (never with Slack "
    "or an IdP configured); `auto`: only when neither is configured.",
)
@click.option(
    "--sandbox-remote",
    is_flag=True,
    help="Serve the sandbox beyond the loopback interface (it has no sign-in: anyone who reaches it "
    "acts as any sandbox user).",
)
def serve(sandbox: Literal["on", "auto", "off"], sandbox_remote: bool) -> None:
    """Start the HTTP service, Slack handling and the scheduler."""
    from app.serve import serve as run_service

    settings = settings_or_exit()
    configure_logging(settings.log_level)
    try:
        asyncio.run(run_service(settings, sandbox=sandbox, sandbox_remote=sandbox_remote))
    except (StartupError, PolicyError) as exc:
        fail(f"error: {exc}")
    except OSError as exc:
        fail(f"error: cannot listen on {settings.host}:{settings.port}: {exc.strerror}")


@main.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    settings = settings_or_exit()

    async def run() -> tuple[str | None, str]:
        engine = build_engine(database_url_of(settings))
        try:
            before = await schema_state(engine)
            await upgrade_to_head(engine)
            return before.current, before.head
        finally:
            await engine.dispose()

    try:
        before, head = asyncio.run(run())
    except EmbeddedDatabaseError as exc:
        fail(f"error: {exc}")
    except OSError as exc:
        fail(f"error: cannot reach the database: {exc}")
    click.echo(f"database at {head}" + ("" if before == head else f" (was {before or 'empty'})"))


@main.group()
def policies() -> None:
    """Check policy files."""


@policies.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--action", "actions", multiple=True, help="Also show how these actions would be judged.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def policies_check(file: str | None, actions: tuple[str, ...], as_json: bool) -> None:
    """Validate FILE (default: APPROVALS_POLICIES) and report what it holds."""
    path = file or str(settings_or_exit().policies)
    try:
        loaded = load_policies(path)
    except PolicyError as exc:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "valid": False,
                        "error": {
                            "path": exc.path,
                            "line": exc.line,
                            "field": exc.field,
                            "message": exc.message,
                        },
                    }
                )
            )
            sys.exit(1)
        fail(str(exc), 1)
    judged = [
        {"action": a, "decision": e.decision, "policy": e.policy_name, "reason": e.reason}
        for a in actions
        for e in [evaluate(loaded.policy_set, a)]
    ]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "valid": True,
                    "path": path,
                    "sha256": loaded.sha256,
                    "policies": [r.display_name for r in loaded.policy_set.policies],
                    "evaluations": judged,
                }
            )
        )
        return
    click.echo(f"{path}: OK, {len(loaded.policy_set.policies)} policies, sha256 {loaded.sha256[:16]}")
    for item in judged:
        click.echo(f"  {item['action']}: {item['decision']} ({item['reason']})")


@policies.command("versions")
@click.option("--json", "as_json", is_flag=True)
def policies_versions(as_json: bool) -> None:
    """Every policy content the service has loaded: version, hash, source, who loaded it and when."""
    rows = in_transaction(policy_history)
    lines = [
        f"v{r['version']}  {r['loaded_at']}  {r['sha256'][:16]}  {r['loaded_by']}  {r['source']}"
        for r in rows
    ]
    print_result(rows, as_json, "\n".join(lines) if lines else "no policy versions recorded")


@main.group()
def agents() -> None:
    """Register and manage agents and their keys."""


@agents.command("add")
@click.argument("name")
@click.option("--owner", required=True, help="Email of the person accountable for the agent.")
@click.option("--actions", required=True, help="Comma-separated action names or globs it may request.")
@click.option("--purpose", default="", help="What the agent is for.")
@click.option("--risk", type=click.Choice(["low", "medium", "high"]), default="medium", show_default=True)
@click.option("--json", "as_json", is_flag=True)
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
@click.option("--json", "as_json", is_flag=True)
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
@click.option("--json", "as_json", is_flag=True)
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
@click.option("--json", "as_json", is_flag=True)
def agents_revoke(name: str, as_json: bool) -> None:
    """Revoke an agent and all its keys at once."""

    async def work(conn: AsyncConnection) -> None:
        await agent_cases.revoke_agent(conn, name=name)

    in_transaction(work)
    print_result({"name": name, "revoked": True}, as_json, f"agent {name} revoked")


main.add_command(audit)
main.add_command(keys)
main.add_command(retention)
main.add_command(identities)
main.add_command(demo)


if __name__ == "__main__":
    main()
