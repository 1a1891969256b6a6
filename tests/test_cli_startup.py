"""`approvals --help` loads no command: each command's module is imported only when it runs, and the
help the group shows for it is the command's own."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from app.cli.main import COMMANDS, main

HEAVY = (
    "sqlalchemy",
    "aiohttp",
    "slack_bolt",
    "slack_sdk",
    "alembic",
    "apscheduler",
    "cryptography",
    "psycopg",
)


def test_help_imports_none_of_the_commands_dependencies() -> None:
    probe = (
        "import sys\n"
        "from app.cli.main import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "serve" in result.stdout and "Start the HTTP service" in result.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_listed_help_is_the_commands_own_and_its_help_answers(name: str) -> None:
    command = main.get_command(click.Context(main), name)
    assert isinstance(command, click.Command)
    first_paragraph = " ".join((command.help or "").split("\n\n")[0].split())
    assert COMMANDS[name][2] == first_paragraph
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: main " in result.output or f"Usage: approvals {name}" in result.output


def test_an_unknown_command_is_refused_in_one_line() -> None:
    result = CliRunner().invoke(main, ["serv"])
    assert result.exit_code == 2
    assert "No such command 'serv'" in result.output


def _commands(command: click.Command, path: list[str]) -> list[tuple[str, click.Command]]:
    found = [(" ".join(path), command)]
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            found += _commands(sub, [*path, name])
    return found


def test_every_command_and_option_says_what_it_is_for() -> None:
    undocumented = [
        f"{path} {param.opts[0]}"
        for path, command in _commands(main, ["approvals"])
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()
    ]
    assert undocumented == []
    assert [
        path for path, command in _commands(main, ["approvals"]) if not (command.help or "").strip()
    ] == []
