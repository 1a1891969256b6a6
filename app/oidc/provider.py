"""The company IdP as we use it: discovery, signing keys (JWKS) and the authorization-code exchange.

Discovery and keys are fetched lazily and cached. An ID token signed with a key we have not seen makes
us fetch the JWKS again (the IdP may have rotated), but at most once per `refetch_interval`, so forged
`kid`s cannot turn us into a traffic amplifier against the IdP.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import jwt
import structlog

log = structlog.get_logger("approvals.oidc")

DISCOVERY_TTL_SECONDS = 3600
HTTP_TIMEOUT_SECONDS = 10


class IdpUnreachable(Exception):
    """The IdP did not answer, or answered with something that is not what OIDC promises."""


class TokenEndpointRefused(Exception):
    """The token endpoint said no (an invalid or already used code, a bad client secret)."""


@dataclass(frozen=True)
class Endpoints:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


class OidcProvider:
    """One IdP, one client registration; safe to share across requests in one event loop."""

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        client_secret: str | None,
        refetch_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self._client_secret = client_secret
        self._refetch_interval = refetch_interval
        # Seconds from any origin that only moves forward: the caches' ages and the refetch gap are
        # measured on it (a test passes one it moves by hand).
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._endpoints: Endpoints | None = None
        self._endpoints_at = 0.0
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_at: float | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_SECONDS),
                headers={"Accept": "application/json"},
            )
        return self._session

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self._http().get(url) as response:
                if response.status != 200:
                    raise IdpUnreachable(f"GET {url} answered {response.status}")
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise IdpUnreachable(f"GET {url} failed: {exc.__class__.__name__}") from None
        if not isinstance(body, dict):
            raise IdpUnreachable(f"GET {url} did not return a JSON object")
        return body

    async def endpoints(self) -> Endpoints:
        """The discovery document, checked: its issuer must be exactly the configured one."""
        if self._endpoints is not None and self._clock() - self._endpoints_at < DISCOVERY_TTL_SECONDS:
            return self._endpoints
        doc = await self._get_json(self.issuer.rstrip("/") + "/.well-known/openid-configuration")
        if doc.get("issuer") != self.issuer:
            raise IdpUnreachable(
                f"the discovery document names issuer {doc.get('issuer')!r}, not {self.issuer!r}"
            )
        try:
            self._endpoints = Endpoints(
                issuer=str(doc["issuer"]),
                authorization_endpoint=str(doc["authorization_endpoint"]),
                token_endpoint=str(doc["token_endpoint"]),
                jwks_uri=str(doc["jwks_uri"]),
            )
        except KeyError as exc:
            raise IdpUnreachable(f"the discovery document lacks {exc.args[0]}") from None
        self._endpoints_at = self._clock()
        return self._endpoints

    async def signing_key(self, kid: str | None) -> jwt.PyJWK | None:
        """The IdP's public key with this `kid`; refetches the JWKS (rate-limited) when it is unknown."""
        async with self._lock:
            key = self._find(kid)
            if key is not None:
                return key
            if self._keys_at is not None and self._clock() - self._keys_at < self._refetch_interval:
                return None
            await self._fetch_keys()
            return self._find(kid)

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            # Without a kid only an IdP publishing exactly one key is unambiguous.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _fetch_keys(self) -> None:
        endpoints = await self.endpoints()
        document = await self._get_json(endpoints.jwks_uri)
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document.get("keys") or []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError):
                log.warning("jwks_key_skipped", kid=entry.get("kid"), kty=entry.get("kty"))
                continue
            keys[str(entry.get("kid", ""))] = key
        self._keys = keys
        self._keys_at = self._clock()
        log.info("jwks_fetched", keys=len(keys))

    async def exchange_code(self, *, code: str, code_verifier: str, redirect_uri: str) -> dict[str, Any]:
        """Trade an authorization code for tokens (client_secret_basic when we have a secret)."""
        endpoints = await self.endpoints()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
            "client_id": self.client_id,
        }
        headers = {}
        if self._client_secret is not None:
            # client_secret_basic (RFC 6749 2.3.1): both parts form-encoded before base64.
            pair = f"{quote_plus(self.client_id)}:{quote_plus(self._client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        try:
            async with self._http().post(endpoints.token_endpoint, data=form, headers=headers) as response:
                status = response.status
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise IdpUnreachable(f"token endpoint failed: {exc.__class__.__name__}") from None
        # An outage (5xx, or rate limited) is not an answer about this code: the step-up stays usable.
        if status >= 500 or status == 429:
            raise IdpUnreachable(f"token endpoint answered {status}")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            # A proxy's page or a misrouted request (403, 404, 407, a 200 of HTML...): not the IdP's
            # word about this code, so the step-up stays usable.
            raise IdpUnreachable(f"token endpoint answered {status} without a JSON object")
        if status != 200:
            error = body.get("error")
            if not isinstance(error, str):  # RFC 6749 5.2: a refusal names its error
                raise IdpUnreachable(f"token endpoint answered {status} without an OAuth error")
            raise TokenEndpointRefused(f"token endpoint answered {status} {error}")
        if not isinstance(body.get("id_token"), str):
            raise TokenEndpointRefused("the token response carries no id_token")
        return body
