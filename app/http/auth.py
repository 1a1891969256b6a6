"""Bearer-key authentication for the JSON APIs, with a short per-process cache of verified keys."""

from __future__ import annotations

import time

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from approvals.agents import Principal, authenticate
from approvals.errors import Forbidden, Unauthenticated
from approvals.keys import hash_api_key

# A revoked or expired key keeps working in a process for at most this long after it changed.
KEY_CACHE_SECONDS = 5.0
KEY_CACHE_SIZE = 10_000


class PrincipalCache:
    """Verified keys by their hash; only successful lookups are cached, never refusals."""

    def __init__(self, ttl: float = KEY_CACHE_SECONDS) -> None:
        self._ttl = ttl
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None or time.monotonic() - entry[0] > self._ttl:
            return None
        return entry[1]

    def put(self, key_hash: str, principal: Principal) -> None:
        if len(self._entries) >= KEY_CACHE_SIZE:
            self._entries.clear()
        self._entries[key_hash] = (time.monotonic(), principal)


async def principal_for(
    request: web.Request, engine: AsyncEngine, cache: PrincipalCache, *, role: str
) -> Principal:
    """The caller behind `Authorization: Bearer <key>`, which must hold `role`."""
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthenticated("missing_key", "send an API key as `Authorization: Bearer <key>`")
    key_hash = hash_api_key(key)
    principal = cache.get(key_hash)
    if principal is None:
        async with engine.connect() as conn:
            principal = await authenticate(conn, key)
        cache.put(key_hash, principal)
    if principal.role != role:
        raise Forbidden("wrong_role", f"this endpoint needs a key with the {role!r} role")
    return principal
