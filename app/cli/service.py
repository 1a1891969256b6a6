"""`approvals serve` and `approvals migrate`: run the service, bring the schema up to date."""

from __future__ import annotations

import asyncio
from typing import Literal

import click

from app.bootstrap import StartupError
from app.cli.support import fail, settings_or_exit
from app.database import build_engine, database_url_of
from app.embedded_postgres import EmbeddedDatabaseError
from app.logs import configure_logging
from app.migrate import schema_state, upgrade_to_head
from approvals.policies.policy_file import PolicyError


@click.command()
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
    except OSError as exc:  # a file or directory the service needed (the bind says so itself)
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"error: {where}{exc.strerror or exc}")


@click.command()
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
