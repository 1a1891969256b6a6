"""The `approvals` command line. Each command's module is imported only when that command runs, so
that `approvals --help` answers at once; the table below names them, with their one-line help."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

# name -> (module, attribute, one-line help). tests/test_cli_startup.py checks each help against the
# command's own docstring, so the two cannot drift apart.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("app.cli.service", "serve", "Start the HTTP service, Slack handling and the scheduler."),
    "migrate": ("app.cli.service", "migrate", "Bring the database schema up to date."),
    "policies": ("app.cli.policies", "policies", "Check policy files."),
    "agents": ("app.cli.agents", "agents", "Register and manage agents and their keys."),
    "requests": ("app.cli.requests", "requests", "List, show and cancel approval requests."),
    "audit": ("app.cli.audit", "audit", "Verify the audit log and export approval chains."),
    "keys": ("app.cli.audit", "keys", "API keys for people and tools other than agents."),
    "retention": ("app.cli.retention", "retention", "Retention of approval records and their audit trail."),
    "identities": (
        "app.cli.identities",
        "identities",
        "Links between Slack users and identity-provider accounts (made by MFA step-up).",
    ),
    "demo": (
        "app.cli.demo",
        "demo",
        "Try the service in sandbox mode (`make run`, or `approvals serve --sandbox`).",
    ),
}


class _Commands(click.Group):
    """The command group: commands load lazily (see COMMANDS), and a database that cannot be reached or
    used is one line and exit 2 on every command (app/cli/errors.py), unless --debug asks for the
    traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        command = getattr(importlib.import_module(entry[0]), entry[1])
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import DBAPIError  # OperationalError, InterfaceError and the driver's others

        try:
            return super().invoke(ctx)
        except DBAPIError as exc:
            if ctx.params.get("debug"):
                raise
            from app.cli.errors import database_error_line
            from app.cli.support import fail
            from app.config import ConfigError, load_settings

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
    from app.logs import configure_logging

    # Commands print their results on stdout (often as --json); their logs go to stderr.
    configure_logging("INFO", stream=sys.stderr)


if __name__ == "__main__":
    main()
