"""A small OpenID Connect provider (the tests' IdP, and the base of the sandbox's dev IdP): real HTTP, real
RS256 signatures (PyJWT), and knobs.

It implements what a relying party meets: discovery, JWKS, the authorization endpoint (answered
headlessly: the "browser" follows its redirect), and the token endpoint with PKCE (S256), single-use
codes and client_secret_basic. `next_login` says who signs in and how; `token_mode` crafts the
hostile tokens of the negative cases (`alg: none`, HS256 keyed with the public key, an unknown key).
Outages: `down` (every endpoint answers 503), `token_status` (only the token endpoint answers that
status, the code unused), and `stop_listening()` / `listen_again()` (connections refused meanwhile).

Given `people` and no `next_login`, the authorization endpoint is interactive instead: a page, labelled
as a development IdP on every page, where a person picks who signs in and how (`pwd`, `pwd`+`otp`,
`pwd`+`hwk`); the POST of that form issues the code exactly as the headless path does. The GET's
parameters are kept server-side under a single-use transaction id and the POST must carry the same ones
(a changed redirect_uri or client_id is refused); `state` is passed back untouched, for the relying
party to check, which is what makes a forged sign-in useless to an attacker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "approvals-test"
CLIENT_SECRET = "test-client-secret"
TokenMode = Literal["rs256", "none", "hs256_public_key", "unknown_kid"]

BANNER = "Development identity provider: not a real sign-in, never use in production"
# How a person may say they signed in, as the `amr` values the ID token will carry.
SIGN_IN_METHODS: dict[str, tuple[str, ...]] = {
    "pwd": ("pwd",),
    "pwd+otp": ("pwd", "otp"),
    "pwd+hwk": ("pwd", "hwk"),
}
_METHOD_LABELS = {
    "pwd": "Password only (pwd): not multi-factor",
    "pwd+otp": "Password and one-time code (pwd + otp)",
    "pwd+hwk": "Password and hardware key (pwd + hwk)",
}
# Authorization parameters the interactive page needs before it offers a sign-in at all.
_REQUIRED_PARAMS = ("client_id", "redirect_uri", "response_type", "code_challenge", "code_challenge_method")
_PARAM_PREFIX = "param:"  # hidden fields carrying the authorization request, apart from the choice
_PENDING_TTL = 600  # seconds a sign-in page stays usable
_PENDING_MAX = 1000  # unanswered pages kept at most; the oldest go first
_CODES_KEPT = 1000  # authorization codes (and their requests) remembered at most


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


@dataclass(frozen=True)
class Person:
    """Someone the interactive page offers to sign in as: an IdP subject with a verified email."""

    sub: str
    email: str
    name: str


@dataclass
class _Pending:
    """An authorization request shown as a page and not yet answered."""

    params: dict[str, str]
    created: float


class _BadRequest(Exception):
    """An authorization request or form the dev IdP refuses with a 400 page."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class DevIdentityProvider:
    """Start with `async with DevIdentityProvider() as idp`; `idp.issuer` is its URL."""

    __test__ = False

    def __init__(
        self,
        people: Iterable[Person] = (),
        *,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
        redirect_uris: Iterable[str] | None = None,
    ) -> None:
        self.people: list[Person] = list(people)
        self.client_id = client_id
        self.client_secret = client_secret
        # The sandbox's IdP signs people in for one relying party only: its own callback URL. None
        # (the tests') accepts any absolute http(s) redirect_uri.
        self.redirect_uris = frozenset(redirect_uris) if redirect_uris is not None else None
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
        self._pending: dict[str, _Pending] = {}
        self._server = TestServer(self._app())
        self._port: int | None = None
        self.issuer = ""

    def _app(self) -> web.Application:
        app = web.Application()
        self._add_routes(app.router, "")
        return app

    def _add_routes(self, router: web.UrlDispatcher, prefix: str) -> None:
        router.add_get(prefix + "/.well-known/openid-configuration", self._discovery)
        router.add_get(prefix + "/jwks", self._jwks)
        router.add_get(prefix + "/authorize", self._authorize)
        router.add_post(prefix + "/authorize", self._authorize_choice)
        router.add_post(prefix + "/token", self._token)

    def add_routes(self, router: web.UrlDispatcher, base_url: str, prefix: str) -> None:
        """Serve the IdP from another application's router under `prefix`; the issuer is then
        `base_url + prefix` (the sandbox mounts it at /sandbox/idp on the service's own port)."""
        self._add_routes(router, prefix)
        self.issuer = base_url.rstrip("/") + prefix

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

    def _path(self, path: str) -> str:
        """`path` under wherever the IdP is served (its issuer's path)."""
        return urlsplit(self.issuer).path.rstrip("/") + path

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
        if login is None and self.people:
            return self._sign_in_page(request)
        redirect = params.get("redirect_uri")
        if not redirect:
            return _page("Sign-in refused", _paragraph("The request names no redirect_uri."), status=400)
        if login is None or login.cancel:
            self.authorizations.append(Authorization(params, None))
            query = urlencode({"error": "access_denied", "state": params.get("state", "")})
            raise web.HTTPFound(f"{redirect}?{query}")
        code = self._issue_code(params, login, int(time.time()) - login.auth_age)
        raise web.HTTPFound(f"{redirect}?{urlencode({'code': code, 'state': params.get('state', '')})}")

    def _issue_code(self, params: dict[str, str], login: Login, auth_time: int) -> str:
        """A single-use code for `login`, remembering the request (nonce, PKCE challenge, redirect_uri)."""
        code = secrets.token_urlsafe(16)
        self._codes[code] = {"params": params, "login": login, "auth_time": auth_time}
        self.authorizations.append(Authorization(params, code))
        # A sandbox runs for days: keep the newest codes only (an old one is long expired anyway).
        while len(self._codes) > _CODES_KEPT:
            oldest = next(iter(self._codes))
            del self._codes[oldest]
            self._used_codes.discard(oldest)
        del self.authorizations[:-_CODES_KEPT]
        return code

    # -- the interactive sign-in page -----------------------------------------------------------------

    def _sign_in_page(self, request: web.Request) -> web.Response:
        if (down := self._unavailable()) is not None:
            return down
        try:
            params = _single_values(request.query.items())
            _check_authorization_request(params, self.client_id, self.redirect_uris)
        except _BadRequest as refused:
            return _page("Sign-in refused", _paragraph(str(refused)), status=400)
        transaction = self._remember(params)
        return _page("Sign in", self._form(transaction, params))

    async def _authorize_choice(self, request: web.Request) -> web.Response:
        if (down := self._unavailable()) is not None:
            return down
        try:
            form = _single_values(
                (key, value) for key, value in (await request.post()).items() if isinstance(value, str)
            )
            transaction, params = self._pending_params(form)
            person = self._person(form.get("sub"))
            amr = SIGN_IN_METHODS.get(form.get("method", ""))
            if amr is None:
                raise _BadRequest("Choose how the person signed in: pwd, pwd+otp or pwd+hwk.")
        except _BadRequest as refused:
            return _page("Sign-in refused", _paragraph(str(refused)), status=400)
        del self._pending[transaction]  # single use: a replayed form gets the 400 page
        login = Login(sub=person.sub, email=person.email, amr=list(amr))
        code = self._issue_code(params, login, int(time.time()))
        query = {"code": code} | ({"state": params["state"]} if "state" in params else {})
        raise web.HTTPSeeOther(f"{params['redirect_uri']}?{urlencode(query)}")

    def _remember(self, params: dict[str, str]) -> str:
        now = time.monotonic()
        for key in [k for k, p in self._pending.items() if now - p.created > _PENDING_TTL]:
            del self._pending[key]
        while len(self._pending) >= _PENDING_MAX:
            del self._pending[next(iter(self._pending))]
        transaction = secrets.token_urlsafe(16)
        self._pending[transaction] = _Pending(params, now)
        return transaction

    def _pending_params(self, form: Mapping[str, str]) -> tuple[str, dict[str, str]]:
        """The authorization request this form answers; its fields must be exactly the GET's."""
        transaction = form.get("transaction", "")
        pending = self._pending.get(transaction)
        if pending is None or time.monotonic() - pending.created > _PENDING_TTL:
            raise _BadRequest("This sign-in page is unknown, used or expired: start the sign-in again.")
        sent = {k.removeprefix(_PARAM_PREFIX): v for k, v in form.items() if k.startswith(_PARAM_PREFIX)}
        if sent != pending.params:
            changed = sorted(
                k for k in sent.keys() | pending.params.keys() if sent.get(k) != pending.params.get(k)
            )
            raise _BadRequest(f"The authorization request was changed ({', '.join(changed)}): start again.")
        return transaction, pending.params

    def _person(self, sub: str | None) -> Person:
        for person in self.people:
            if sub is not None and person.sub == sub:
                return person
        raise _BadRequest("Choose one of the people listed.")

    def _form(self, transaction: str, params: dict[str, str]) -> str:
        hidden = [_hidden("transaction", transaction)]
        hidden += [_hidden(_PARAM_PREFIX + key, value) for key, value in params.items()]
        people = [
            _radio("sub", p.sub, f"{p.name} <{p.email}>", checked=i == 0) for i, p in enumerate(self.people)
        ]
        methods = [
            _radio("method", key, _METHOD_LABELS[key], checked=key == "pwd+otp") for key in SIGN_IN_METHODS
        ]
        client = html.escape(params["client_id"])
        target = html.escape(params["redirect_uri"])
        return (
            f"<p>Signing in to <code>{client}</code>, returning to <code>{target}</code>.</p>\n"
            f'<form method="post" action="{html.escape(self._path("/authorize"))}">\n'
            + "\n".join(hidden)
            + "\n<fieldset><legend>Who signs in</legend>\n"
            + "\n".join(people)
            + "\n</fieldset>\n<fieldset><legend>How they signed in</legend>\n"
            + "\n".join(methods)
            + '\n</fieldset>\n<button type="submit">Sign in</button>\n</form>'
        )

    async def _token(self, request: web.Request) -> web.Response:
        if (down := self._unavailable()) is not None:
            return down
        if self.token_status is not None:
            return web.Response(status=self.token_status, text="token service unavailable")
        self.token_calls += 1
        form = await request.post()
        credentials = f"{self.client_id}:{self.client_secret}".encode()
        expected_auth = "Basic " + base64.b64encode(credentials).decode()
        if not hmac.compare_digest(request.headers.get("Authorization", ""), expected_auth):
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
            "aud": self.client_id,
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


def _single_values(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Fields as a dict; a field sent twice is refused rather than one copy silently winning."""
    values: dict[str, str] = {}
    for key, value in items:
        if key in values:
            raise _BadRequest(f"The field {key!r} was sent more than once.")
        values[key] = value
    return values


def _check_authorization_request(
    params: Mapping[str, str], client_id: str, redirect_uris: frozenset[str] | None
) -> None:
    """What the page needs before offering a sign-in: a known client, a code flow with PKCE, and a
    redirect_uri that is an absolute http(s) URL, one of `redirect_uris` when given (errors are shown
    here, never sent to a bad URL)."""
    missing = [name for name in _REQUIRED_PARAMS if not params.get(name)]
    if missing:
        raise _BadRequest(f"The authorization request lacks {', '.join(missing)}.")
    if params["client_id"] != client_id:
        raise _BadRequest("Unknown client_id.")
    if params["response_type"] != "code":
        raise _BadRequest("Only response_type=code is supported.")
    if params["code_challenge_method"] != "S256":
        raise _BadRequest("Only code_challenge_method=S256 is supported.")
    try:
        target = urlsplit(params["redirect_uri"])
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise _BadRequest("The redirect_uri is not a URL.") from None
    if target.scheme not in ("http", "https") or not target.hostname or target.fragment or target.query:
        raise _BadRequest("The redirect_uri must be an absolute http(s) URL without query or fragment.")
    if redirect_uris is not None and params["redirect_uri"] not in redirect_uris:
        raise _BadRequest("This redirect_uri is not registered for the client.")


def _hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'


def _radio(name: str, value: str, label: str, *, checked: bool) -> str:
    mark = " checked" if checked else ""
    return (
        f'<label><input type="radio" name="{html.escape(name)}" value="{html.escape(value)}"{mark}> '
        f"{html.escape(label)}</label><br>"
    )


def _paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _page(title: str, body: str, *, status: int = 200) -> web.Response:
    """Every page of the dev IdP: the banner first, and no framing, caching or scripts."""
    document = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} - development identity provider</title></head><body>\n"
        '<p role="alert" style="background:#b00020;color:#fff;padding:0.75em;font-weight:bold">'
        f"{html.escape(BANNER)}</p>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )
    headers = {
        "Cache-Control": "no-store",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }
    return web.Response(text=document, status=status, content_type="text/html", headers=headers)
