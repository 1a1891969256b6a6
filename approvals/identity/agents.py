"""Agents and their credentials: register, list, rotate, revoke, and authenticate a presented key."""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.events import append_event
from approvals.db import db_now
from approvals.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from approvals.identity.keys import (
    AGENT_KEY_PREFIX,
    display_prefix,
    hash_api_key,
    new_api_key,
    new_id,
    new_webhook_secret,
)
from approvals.tables import agents, api_keys

Risk = Literal["low", "medium", "high"]
AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
ACTION_PATTERN = re.compile(r"[A-Za-z0-9_.:*?\[\]-]{1,200}")
DEFAULT_ROTATION_GRACE = dt.timedelta(hours=24)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's role and, for agent keys, the agent and what it may ask for."""

    role: str
    key_id: str
    agent_id: str | None = None
    agent_name: str | None = None
    actions: tuple[str, ...] = ()

    def may_request(self, action: str) -> bool:
        """Agents list exact action names or globs (`delete_*`)."""
        return any(fnmatch.fnmatchcase(action, allowed) for allowed in self.actions)


@dataclass(frozen=True)
class NewAgent:
    id: str
    name: str
    api_key: str
    webhook_secret: str


def agent_chain(agent_id: str) -> str:
    return f"agent:{agent_id}"


async def add_agent(
    conn: AsyncConnection,
    *,
    name: str,
    owner: str,
    actions: list[str],
    purpose: str = "",
    risk: Risk = "medium",
    actor: str = "cli",
) -> NewAgent:
    """Register an agent; its key and webhook secret are returned here and never again."""
    if not AGENT_NAME.fullmatch(name):
        raise InvalidInput("invalid_name", "agent names are 1-100 characters: letters, digits, . _ -", "name")
    if not EMAIL.fullmatch(owner):
        raise InvalidInput("invalid_owner", f"owner must be an email address, not {owner!r}", "owner")
    if not actions or not all(ACTION_PATTERN.fullmatch(a) for a in actions):
        raise InvalidInput(
            "invalid_actions",
            "give at least one action name or glob (letters, digits, _ . : - * ?)",
            "actions",
        )
    existing = (await conn.execute(select(agents.c.id).where(agents.c.name == name))).first()
    if existing is not None:
        raise Conflict("agent_exists", f"an agent named {name!r} already exists", "name")
    now = await db_now(conn)
    agent_id, key, secret = new_id("agt_"), new_api_key(AGENT_KEY_PREFIX), new_webhook_secret()
    await conn.execute(
        agents.insert().values(
            id=agent_id,
            name=name,
            owner=owner,
            purpose=purpose,
            risk=risk,
            actions=actions,
            webhook_secret=secret,
            created_at=now,
        )
    )
    key_id = await insert_api_key(conn, role="agent", agent_id=agent_id, name=name, key=key, now=now)
    await append_event(
        conn,
        chain_id=agent_chain(agent_id),
        kind="agent_registered",
        actor=actor,
        data={
            "agent_id": agent_id,
            "name": name,
            "owner": owner,
            "purpose": purpose,
            "risk": risk,
            "actions": actions,
            "key_id": key_id,
        },
    )
    return NewAgent(id=agent_id, name=name, api_key=key, webhook_secret=secret)


async def insert_api_key(
    conn: AsyncConnection, *, role: str, agent_id: str | None, name: str, key: str, now: dt.datetime
) -> str:
    """Store a new key's hash and display prefix (never the key); returns the key's id."""
    key_id = new_id("key_")
    await conn.execute(
        api_keys.insert().values(
            id=key_id,
            role=role,
            agent_id=agent_id,
            name=name,
            key_hash=hash_api_key(key),
            prefix=display_prefix(key),
            created_at=now,
        )
    )
    return key_id


async def list_agents(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every agent with its active key prefixes; no secret leaves this function."""
    now = await db_now(conn)
    rows = (await conn.execute(select(agents).order_by(agents.c.name))).all()
    keys = (await conn.execute(select(api_keys).where(api_keys.c.role == "agent"))).all()
    result = []
    for row in rows:
        active = [
            {"prefix": k.prefix, "expires_at": k.expires_at.isoformat() if k.expires_at else None}
            for k in keys
            if k.agent_id == row.id and k.revoked_at is None and (k.expires_at is None or k.expires_at > now)
        ]
        result.append(
            {
                "id": row.id,
                "name": row.name,
                "owner": row.owner,
                "purpose": row.purpose,
                "risk": row.risk,
                "actions": row.actions,
                "created_at": row.created_at.isoformat(),
                "revoked": row.revoked_at is not None,
                "keys": active,
            }
        )
    return result


async def _agent_by_name(conn: AsyncConnection, name: str) -> Any:
    row = (await conn.execute(select(agents).where(agents.c.name == name))).first()
    if row is None:
        raise NotFound("agent_not_found", f"no agent named {name!r}", "name")
    return row


async def rotate_agent_key(
    conn: AsyncConnection, *, name: str, grace: dt.timedelta = DEFAULT_ROTATION_GRACE, actor: str = "cli"
) -> str:
    """Issue a new key; keys issued before stay valid for `grace`, then stop working."""
    agent = await _agent_by_name(conn, name)
    if agent.revoked_at is not None:
        raise Conflict("agent_revoked", f"agent {name!r} is revoked", "name")
    now = await db_now(conn)
    retire_at = now + grace
    await conn.execute(
        update(api_keys)
        .where(
            api_keys.c.agent_id == agent.id,
            api_keys.c.revoked_at.is_(None),
            or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > retire_at),
        )
        .values(expires_at=retire_at)
    )
    key = new_api_key(AGENT_KEY_PREFIX)
    key_id = await insert_api_key(conn, role="agent", agent_id=agent.id, name=name, key=key, now=now)
    await append_event(
        conn,
        chain_id=agent_chain(agent.id),
        kind="agent_key_rotated",
        actor=actor,
        data={"key_id": key_id, "previous_keys_expire_at": retire_at.isoformat()},
    )
    return key


async def revoke_agent(conn: AsyncConnection, *, name: str, actor: str = "cli") -> None:
    """Revoke an agent and every key it has, at once."""
    agent = await _agent_by_name(conn, name)
    if agent.revoked_at is not None:
        raise Conflict("agent_revoked", f"agent {name!r} is already revoked", "name")
    now = await db_now(conn)
    await conn.execute(update(agents).where(agents.c.id == agent.id).values(revoked_at=now))
    await conn.execute(
        update(api_keys)
        .where(api_keys.c.agent_id == agent.id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    await append_event(
        conn, chain_id=agent_chain(agent.id), kind="agent_revoked", actor=actor, data={"agent_id": agent.id}
    )


async def authenticate(conn: AsyncConnection, presented_key: str) -> Principal:
    """The principal behind a presented key, or Unauthenticated (never says which part was wrong)."""
    now = await db_now(conn)
    row = (
        await conn.execute(
            select(
                api_keys, agents.c.name.label("agent_name"), agents.c.actions, agents.c.revoked_at.label("ar")
            )
            .select_from(api_keys.outerjoin(agents, agents.c.id == api_keys.c.agent_id))
            .where(
                and_(
                    api_keys.c.key_hash == hash_api_key(presented_key),
                    api_keys.c.revoked_at.is_(None),
                    or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now),
                )
            )
        )
    ).first()
    if row is None or row.ar is not None:
        raise Unauthenticated("invalid_key", "the API key is missing, unknown, expired or revoked")
    return Principal(
        role=row.role,
        key_id=row.id,
        agent_id=row.agent_id,
        agent_name=row.agent_name,
        actions=tuple(row.actions or ()),
    )


async def webhook_secret_of(conn: AsyncConnection, name: str) -> str:
    """The secret an agent's callbacks are signed with (kept in clear: the service signs with it)."""
    return str((await _agent_by_name(conn, name)).webhook_secret)
