"""Bearer-key authentication for the JSON APIs, with a short per-process cache of verified keys."""

from __future__ import annotations

import time

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from app.http.body import refuse_unstorable_url
from approvals.errors import Forbidden, Unauthenticated
from approvals.identity.agents import Principal, authenticate
from approvals.identity.keys import hash_api_key, is_well_formed_key

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
    """The caller behind `Authorization: Bearer <key>`, which must hold `role`.

    Every JSON API route starts here, so this is also where the URL's own text (path ids, query
    parameters) is checked, once the caller is known, before any of it reaches a query.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthenticated("missing_key", "send an API key as `Authorization: Bearer <key>`")
    if not is_well_formed_key(key):
        # Non-ASCII or undecodable header bytes: no key we issued, so no database lookup either.
        raise Unauthenticated("invalid_key", "the API key is missing, unknown, expired or revoked")
    key_hash = hash_api_key(key)
    principal = cache.get(key_hash)
    if principal is None:
        async with engine.connect() as conn:
            principal = await authenticate(conn, key)
        cache.put(key_hash, principal)
    if principal.role != role:
        raise Forbidden("wrong_role", f"this endpoint needs a key with the {role!r} role")
    refuse_unstorable_url(request)
    return principal
