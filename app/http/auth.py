"""Bearer-key authentication for the JSON APIs."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from approvals.agents import Principal, authenticate
from approvals.errors import Forbidden, Unauthenticated


async def principal_for(request: web.Request, engine: AsyncEngine, *, role: str) -> Principal:
    """The caller behind `Authorization: Bearer <key>`, which must hold `role`."""
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthenticated("missing_key", "send an API key as `Authorization: Bearer <key>`")
    async with engine.connect() as conn:
        principal = await authenticate(conn, key.strip())
    if principal.role != role:
        raise Forbidden("wrong_role", f"this endpoint needs a key with the {role!r} role")
    return principal
