"""Auditor keys: read-only access to the compliance API, never to the agent API."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.events import append_event
from approvals.db import db_now
from approvals.errors import Conflict, InvalidInput
from approvals.identity.agents import insert_api_key
from approvals.identity.keys import AUDITOR_KEY_PREFIX, new_api_key
from approvals.tables import api_keys

AUDITORS_CHAIN = "auditors"


@dataclass(frozen=True)
class NewKey:
    id: str
    name: str
    role: str
    api_key: str


async def add_auditor_key(conn: AsyncConnection, *, name: str, actor: str = "cli") -> NewKey:
    """A new auditor key, shown once; its hash is stored and its creation audited."""
    if not name or len(name) > 100:
        raise InvalidInput("invalid_name", "key names are 1-100 characters", "name")
    taken = (
        await conn.execute(select(api_keys.c.id).where(api_keys.c.name == name, api_keys.c.role == "auditor"))
    ).first()
    if taken is not None:
        raise Conflict("key_exists", f"an auditor key named {name!r} already exists", "name")
    key = new_api_key(AUDITOR_KEY_PREFIX)
    now = await db_now(conn)
    key_id = await insert_api_key(conn, role="auditor", agent_id=None, name=name, key=key, now=now)
    await append_event(
        conn,
        chain_id=AUDITORS_CHAIN,
        kind="auditor_key_added",
        actor=actor,
        data={"key_id": key_id, "name": name},
        now=now,
    )
    return NewKey(id=key_id, name=name, role="auditor", api_key=key)
