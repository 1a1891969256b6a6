"""A small OpenID Connect provider (the tests' IdP, and the base of the sandbox's dev IdP): real HTTP, real
RS256 signatures (PyJWT), and knobs.

It implements what a relying party meets: discovery, JWKS, the authorization endpoint (answered
headlessly: the "browser" follows its redirect), and the token endpoint with PKCE (S256), single-use
codes and client_secret_basic. `next_login` says who signs in and how; `token_mode` crafts the
hostile tokens of the negative cases (`alg: none`, HS256 keyed with the public key, an unknown key).
Outages: `down` (every endpoint answers 503), `token_status` (only the token endpoint answers that
status, the code unused), and `stop_listening()` / `listen_again()` (connections refused meanwhile).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "approvals-test"
CLIENT_SECRET = "test-client-secret"
TokenMode = Literal["rs256", "none", "hs256_public_key", "unknown_kid"]


@dataclass
class Login:
    """Who signs in at the IdP, and what the IdP says about how."""

    sub: str
    email: str
    email_verified: bool = True
    amr: list[str] | None = field(default_factory=lambda: ["pwd", "otp"])
    acr: str | None = None
    auth_age: int = 0  # seconds since the person authenticated
    cancel: bool = False


@dataclass
class Authorization:
    params: dict[str, str]
    code: str | None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class DevIdentityProvider:
    """Start with `async with DevIdentityProvider() as idp`; `idp.issuer` is its URL."""

    __test__ = False

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "k1"
        self.rogue_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.next_login: Login | None = None
        self.token_mode: TokenMode = "rs256"
        self.claim_overrides: dict[str, Any] = {}
        self.down = False
        self.token_status: int | None = None
        self.authorizations: list[Authorization] = []
        self.token_calls = 0
        self.jwks_calls = 0
        self._codes: dict[str, dict[str, Any]] = {}
        self._used_codes: set[str] = set()
        self._server = TestServer(self._app())
        self._port: int | None = None
        self.issuer = ""

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        return app

    async def __aenter__(self) -> DevIdentityProvider:
        await self._server.start_server()
        self.issuer = str(self._server.make_url("")).rstrip("/")
        self._port = self._server.port
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.close()

    async def stop_listening(self) -> None:
        """The IdP goes away: connections to it are refused until `listen_again()`."""
        await self._server.close()

    async def listen_again(self) -> None:
        """Back on the same address (the issuer is unchanged), codes and keys as they were."""
        self._server = TestServer(self._app(), port=self._port)
        await self._server.start_server()

    def _unavailable(self) -> web.Response | None:
        return web.Response(status=503, text="down for maintenance") if self.down else None

    async def _discovery(self, request: web.Request) -> web.Response:
        if (down := self._unavailable()) is not None:
            return down
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        if (down := self._unavailable()) is not None:
            return down
        self.jwks_calls += 1
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return web.json_response({"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]})

    def rotate_key(self) -> None:
        """What IdPs do now and then: a new signing key under a new kid; the old one is gone."""
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = f"k{int(self.kid[1:]) + 1}"

    async def _authorize(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        login = self.next_login
        redirect = params["redirect_uri"]
        if login is None or login.cancel:
            self.authorizations.append(Authorization(params, None))
            query = urlencode({"error": "access_denied", "state": params.get("state", "")})
            raise web.HTTPFound(f"{redirect}?{query}")
        code = secrets.token_urlsafe(16)
        self._codes[code] = {"params": params, "login": login, "auth_time": int(time.time()) - login.auth_age}
        self.authorizations.append(Authorization(params, code))
        raise web.HTTPFound(f"{redirect}?{urlencode({'code': code, 'state': params['state']})}")

    async def _token(self, request: web.Request) -> web.Response:
        if (down := self._unavailable()) is not None:
            return down
        if self.token_status is not None:
            return web.Response(status=self.token_status, text="token service unavailable")
        self.token_calls += 1
        form = await request.post()
        expected_auth = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("Authorization") != expected_auth:
            return web.json_response({"error": "invalid_client"}, status=401)
        code = str(form.get("code", ""))
        grant = self._codes.get(code)
        if grant is None or code in self._used_codes:
            return web.json_response({"error": "invalid_grant"}, status=400)
        self._used_codes.add(code)
        params = grant["params"]
        if form.get("redirect_uri") != params["redirect_uri"]:
            return web.json_response({"error": "invalid_grant"}, status=400)
        challenge = _b64(hashlib.sha256(str(form.get("code_verifier", "")).encode()).digest())
        if challenge != params.get("code_challenge"):
            return web.json_response({"error": "invalid_grant", "error_description": "PKCE"}, status=400)
        login: Login = grant["login"]
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": login.sub,
            "iat": now,
            "exp": now + 300,
            "nonce": params.get("nonce"),
            "auth_time": grant["auth_time"],
            "email": login.email,
            "email_verified": login.email_verified,
        }
        if login.amr is not None:
            claims["amr"] = login.amr
        if login.acr is not None:
            claims["acr"] = login.acr
        claims.update(self.claim_overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return web.json_response(
            {"access_token": "at", "token_type": "Bearer", "id_token": self._sign(claims)}
        )

    def _sign(self, claims: dict[str, Any]) -> str:
        if self.token_mode == "rs256":
            return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})
        if self.token_mode == "unknown_kid":
            return jwt.encode(claims, self.rogue_key, algorithm="RS256", headers={"kid": "rogue"})
        if self.token_mode == "none":
            header = {"alg": "none", "typ": "JWT", "kid": "k1"}
            return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."
        # The classic key-confusion attack: HMAC "signed" with the IdP's public key as the secret.
        public_pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = {"alg": "HS256", "typ": "JWT", "kid": "k1"}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}"
