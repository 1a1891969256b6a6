"""Shared plumbing for CLI commands: settings, one transaction per command, errors and output."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.bootstrap import StartupError, prepare_database
from app.config import ConfigError, Settings, load_settings
from app.database import build_engine, database_url_of
from app.embedded_postgres import EmbeddedDatabaseError
from approvals.errors import DomainError

T = TypeVar("T")


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(str(exc))


def in_transaction(work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run one use case in one transaction on a checked (or auto-migrated) database."""

    async def run(engine: AsyncEngine) -> T:
        async with engine.begin() as conn:
            return await work(conn)

    return with_engine(run)


def with_engine(work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run a use case that opens its own transactions, on a checked (or auto-migrated) database."""
    settings = settings_or_exit()

    async def run() -> T:
        engine = build_engine(database_url_of(settings))
        try:
            await prepare_database(engine, settings)
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except (StartupError, EmbeddedDatabaseError) as exc:
        fail(f"error: {exc}")
    except DomainError as exc:
        fail(f"error: {exc.message}", 1)


def print_result(value: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(value, indent=2) if as_json else text)
