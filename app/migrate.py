"""Alembic, driven from our own code: upgrade to head, and tell whether a database is up to date."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# Any constant will do: replicas starting together take turns migrating.
MIGRATION_LOCK_ID = 0x41505052


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@dataclass(frozen=True)
class SchemaState:
    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


async def schema_state(engine: AsyncEngine) -> SchemaState:
    """Which revision the database is at, and which one this code needs."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None

    def _current(sync_conn: Any) -> str | None:
        return MigrationContext.configure(sync_conn).get_current_revision()

    async with engine.connect() as conn:
        current = await conn.run_sync(_current)
    return SchemaState(current=current, head=head)


async def upgrade_to_head(engine: AsyncEngine) -> None:
    """Apply every pending migration in one transaction, one migrator at a time."""

    def _upgrade(sync_conn: Any) -> None:
        config = alembic_config()
        config.attributes["connection"] = sync_conn
        command.upgrade(config, "head")

    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        await conn.run_sync(_upgrade)
