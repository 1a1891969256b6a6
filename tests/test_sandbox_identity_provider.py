"""The dev identity provider's interactive sign-in page (app/sandbox/identity_provider.py) and the
sandbox workspace it signs people in from (app/sandbox/workspace.py).

The browser is an aiohttp session; it reads the IdP's page as HTML (html.parser), posts the chosen
person and sign-in method, and the real service verifies the resulting signed ID token: a step-up with
`pwd`+`otp` records the decision, `pwd` alone is refused as weak authentication.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import jwt
import pytest
from aiohttp import ClientSession

from app.sandbox.identity_provider import BANNER, CLIENT_ID, CLIENT_SECRET, DevIdentityProvider, Person
from app.sandbox.slack_api import SandboxSlack
from app.sandbox.workspace import COO, OUTSIDER, WORKSPACE, idp_people, load_workspace
from tests.test_step_up import Mfa, _decisions, _events, _held_link, _request, mfa_service

CALLBACK = "http://127.0.0.1:9/auth/callback"  # never followed: the tests stop at the IdP's redirect


class _Form(HTMLParser):
    """The inputs of the one form on the page: hidden fields, and each radio group's choices."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.hidden: dict[str, str] = {}
        self.radios: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = a["action"]
        elif tag == "input" and a.get("type") == "hidden":
            self.hidden[a["name"]] = a["value"]
        elif tag == "input" and a.get("type") == "radio":
            self.radios.setdefault(a["name"], []).append(a["value"])


def _parse(page: str) -> _Form:
    form = _Form()
    form.feed(page)
    assert form.action, page
    return form


def _authorization_request(**changes: str) -> dict[str, str]:
    verifier = secrets.token_urlsafe(32)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {
        "client_id": CLIENT_ID,
        "redirect_uri": CALLBACK,
        "response_type": "code",
        "scope": "openid email profile",
        "state": "st-" + secrets.token_urlsafe(8),
        "nonce": "n-" + secrets.token_urlsafe(8),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "verifier": verifier,  # not sent: kept for the token request
    }
    return params | changes


@pytest.fixture
async def idp() -> AsyncIterator[DevIdentityProvider]:
    async with DevIdentityProvider(people=idp_people()) as provider:
        yield provider


@pytest.fixture
async def browser() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


async def _open_page(idp: DevIdentityProvider, browser: ClientSession, request: dict[str, str]) -> _Form:
    query = {k: v for k, v in request.items() if k != "verifier"}
    async with browser.get(f"{idp.issuer}/authorize?{urlencode(query)}") as resp:
        page = await resp.text()
        assert resp.status == 200, page
    return _parse(page)


async def _choose(
    idp: DevIdentityProvider, browser: ClientSession, form: _Form, **fields: str
) -> tuple[int, str, str]:
    """POST the form (hidden fields, then `fields` on top) without following the redirect."""
    async with browser.post(
        urljoin(idp.issuer + "/", form.action), data=form.hidden | fields, allow_redirects=False
    ) as resp:
        return resp.status, resp.headers.get("Location", ""), await resp.text()


# -- the page on its own ------------------------------------------------------------------------------


async def test_the_page_lists_the_workspace_people_and_methods_and_carries_the_banner(
    idp: DevIdentityProvider, browser: ClientSession
) -> None:
    request = _authorization_request()
    query = urlencode({k: v for k, v in request.items() if k != "verifier"})
    async with browser.get(f"{idp.issuer}/authorize?{query}", allow_redirects=False) as resp:
        page = await resp.text()
        assert resp.status == 200 and resp.content_type == "text/html"
        assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["Cache-Control"] == "no-store"
    assert BANNER in page
    form = _parse(page)
    assert form.radios["sub"] == [m.subject for m in WORKSPACE.members]
    assert form.radios["method"] == ["pwd", "pwd+otp", "pwd+hwk"]
    for member in WORKSPACE.members:
        assert member.real_name in page and member.email in page
    # The authorization request rides along in hidden fields, exactly as sent.
    sent = {k: v for k, v in request.items() if k != "verifier"}
    assert {k.removeprefix("param:"): v for k, v in form.hidden.items() if k != "transaction"} == sent
    assert idp.authorizations == []  # nothing issued until someone chooses


async def test_a_chosen_sign_in_gets_a_code_whose_id_token_says_who_and_how(
    idp: DevIdentityProvider, browser: ClientSession
) -> None:
    request = _authorization_request()
    form = await _open_page(idp, browser, request)
    status, location, _ = await _choose(idp, browser, form, sub=OUTSIDER.subject, method="pwd+hwk")
    assert status == 303
    target = urlsplit(location)
    assert f"{target.scheme}://{target.netloc}{target.path}" == CALLBACK
    answer = parse_qs(target.query)
    assert answer["state"] == [request["state"]]
    token_request = {
        "grant_type": "authorization_code",
        "code": answer["code"][0],
        "redirect_uri": CALLBACK,
        "code_verifier": request["verifier"],
    }
    auth = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    async with browser.post(
        f"{idp.issuer}/token", data=token_request, headers={"Authorization": f"Basic {auth}"}
    ) as resp:
        assert resp.status == 200, await resp.text()
        id_token = (await resp.json())["id_token"]
    claims = jwt.decode(id_token, idp.key.public_key(), algorithms=["RS256"], audience=CLIENT_ID)
    assert (claims["sub"], claims["email"], claims["email_verified"]) == (
        OUTSIDER.subject,
        OUTSIDER.email,
        True,
    )
    assert claims["amr"] == ["pwd", "hwk"] and claims["nonce"] == request["nonce"]
    assert abs(claims["auth_time"] - claims["iat"]) <= 2  # signed in just now
    # The page is single use: the same form again is refused.
    again = await _choose(idp, browser, form, sub=OUTSIDER.subject, method="pwd+hwk")
    assert again[0] == 400 and BANNER in again[2]


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"sub": "dev|nobody", "method": "pwd+otp"}, "Choose one of the people"),
        ({"sub": COO.subject, "method": "pwd+sms"}, "Choose how the person signed in"),
        ({"sub": COO.subject}, "Choose how the person signed in"),
        (
            {"sub": COO.subject, "method": "pwd", "param:redirect_uri": "https://evil.example/cb"},
            "redirect_uri",
        ),
        ({"sub": COO.subject, "method": "pwd", "param:client_id": "someone-else"}, "client_id"),
        ({"sub": COO.subject, "method": "pwd", "param:extra": "x"}, "extra"),
        ({"sub": COO.subject, "method": "pwd", "transaction": "forged"}, "start the sign-in again"),
    ],
)
async def test_bad_form_input_gets_a_400_page_and_no_code(
    idp: DevIdentityProvider, browser: ClientSession, fields: dict[str, str], words: str
) -> None:
    form = await _open_page(idp, browser, _authorization_request())
    status, location, page = await _choose(idp, browser, form, **fields)
    assert status == 400 and location == "", page
    assert BANNER in page and words in page
    assert idp.authorizations == []
    # The refusal does not use the page up: the honest choice still works.
    status, location, _ = await _choose(idp, browser, form, sub=COO.subject, method="pwd+otp")
    assert status == 303 and location.startswith(CALLBACK + "?code=")


async def test_a_missing_parameter_or_a_duplicated_field_gets_a_400_page(
    idp: DevIdentityProvider, browser: ClientSession
) -> None:
    form = await _open_page(idp, browser, _authorization_request())
    del form.hidden["param:redirect_uri"]
    status, _, page = await _choose(idp, browser, form, sub=COO.subject, method="pwd+otp")
    assert status == 400 and "redirect_uri" in page
    form = await _open_page(idp, browser, _authorization_request())
    body = [*form.hidden.items(), ("sub", COO.subject), ("method", "pwd"), ("method", "pwd+otp")]
    async with browser.post(f"{idp.issuer}/authorize", data=body, allow_redirects=False) as resp:
        assert resp.status == 400 and "more than once" in await resp.text()
    assert idp.authorizations == []


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"client_id": "someone-else"}, "Unknown client_id"),
        ({"redirect_uri": "javascript:alert(1)"}, "absolute http(s) URL"),
        ({"redirect_uri": "http://[::1/cb"}, "not a URL"),
        ({"code_challenge_method": "plain"}, "S256"),
        ({"code_challenge": ""}, "lacks code_challenge"),
    ],
)
async def test_a_bad_authorization_request_gets_a_400_page_not_a_redirect(
    idp: DevIdentityProvider, browser: ClientSession, changes: dict[str, str], words: str
) -> None:
    query = {k: v for k, v in _authorization_request(**changes).items() if k != "verifier"}
    async with browser.get(f"{idp.issuer}/authorize?{urlencode(query)}", allow_redirects=False) as resp:
        page = await resp.text()
        assert resp.status == 400 and "Location" not in resp.headers
    assert BANNER in page and words in page


async def test_people_and_request_text_are_escaped(browser: ClientSession) -> None:
    mallory = Person(sub='dev|"><b>x', email="m@example.com", name="<script>alert(1)</script>")
    async with DevIdentityProvider(people=[mallory]) as idp:
        request = _authorization_request(state='"><script>alert(2)</script>', nonce="<i>n</i>")
        query = urlencode({k: v for k, v in request.items() if k != "verifier"})
        async with browser.get(f"{idp.issuer}/authorize?{query}&%3Cimg%3E=%3Cimg%3E") as resp:
            page = await resp.text()
        assert "<script>" not in page and "<img>" not in page and "<i>" not in page and "<b>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        form = _parse(page)  # escaped values come back intact through the parser
        assert form.radios["sub"] == [mallory.sub] and form.hidden["param:state"] == request["state"]
        status, location, _ = await _choose(idp, browser, form, sub=mallory.sub, method="pwd+otp")
        assert status == 303 and parse_qs(urlsplit(location).query)["state"] == [request["state"]]


async def test_the_headless_path_is_unchanged(browser: ClientSession) -> None:
    async with DevIdentityProvider() as idp:  # no people: no page, a refusal as before
        query = {k: v for k, v in _authorization_request().items() if k != "verifier"}
        async with browser.get(f"{idp.issuer}/authorize?{urlencode(query)}", allow_redirects=False) as resp:
            assert resp.status == 302
            assert parse_qs(urlsplit(resp.headers["Location"]).query)["error"] == ["access_denied"]


async def test_load_workspace_fills_the_sandbox_slack_and_the_idp_knows_the_same_emails() -> None:
    async with SandboxSlack() as slack:
        slack.messages["C0HIRING"] = [{"ts": "1.000100", "text": "kept"}]
        load_workspace(slack)
        assert slack.users["U0OUTSIDER"]["email"] == "outsider@example.com"
        assert slack.usergroups == {"S0EXEC": ["U01COO", "U02CFO"], "S0FINANCE": ["U02CFO", "U01COO"]}
        assert slack.messages_in("C0ONCALL") == [] and len(slack.messages_in("C0HIRING")) == 1
        emails = {user["email"] for user in slack.users.values()}
    assert {p.email for p in idp_people()} == emails
    assert sorted(slack.users) == ["U01COO", "U02CFO", "U09REC", "U0OUTSIDER"]


# -- through the service, on both databases --------------------------------------------------------


@pytest.fixture
async def sandbox(database_url: str, browser: ClientSession) -> AsyncIterator[Mfa]:
    async with (
        DevIdentityProvider(people=idp_people()) as provider,
        mfa_service(database_url, provider.issuer, CLIENT_ID, CLIENT_SECRET) as api,
    ):
        assert api.fake is not None
        load_workspace(api.fake)
        api.key = await api.add_agent("payroll-bot", ["approve_payroll"])
        yield Mfa(api, provider, browser)


async def _step_up_through_the_page(m: Mfa, request_id: str, method: str) -> tuple[int, str]:
    """The approver follows "Verify with SSO" to the IdP page, picks the COO and `method`, and lands
    back on the service's callback page."""
    url = await _held_link(m, request_id)
    async with m.browser.get(url) as resp:
        page = await resp.text()
        assert resp.status == 200 and str(resp.url).startswith(m.idp.issuer + "/authorize?"), page
    assert BANNER in page
    form = _parse(page)
    assert COO.subject in form.radios["sub"]
    fields: dict[str, Any] = form.hidden | {"sub": COO.subject, "method": method}
    async with m.browser.post(urljoin(m.idp.issuer + "/", form.action), data=fields) as resp:
        assert str(resp.url).startswith(m.api.base + "/auth/callback")
        return resp.status, await resp.text()


async def test_choosing_password_and_otp_completes_the_step_up(sandbox: Mfa) -> None:
    request_id = await _request(sandbox)
    status, page = await _step_up_through_the_page(sandbox, request_id, "pwd+otp")
    assert status == 200 and "Decision recorded" in page, page
    [decision] = await _decisions(sandbox, request_id)
    assert decision.approver_id == COO.user_id and decision.decision == "approve"
    assert decision.mfa["iss"] == sandbox.idp.issuer and decision.mfa["sub"] == COO.subject
    assert decision.mfa["amr"] == ["pwd", "otp"] and decision.mfa["reused"] is False
    [linked] = await _events(sandbox, f"identity:{COO.user_id}", "identity_linked")
    assert (linked["subject"], linked["email"]) == (COO.subject, COO.email)
    assert (await sandbox.api.final(request_id))["status"] == "approved"


async def test_choosing_password_only_is_refused_as_weak_authentication(sandbox: Mfa) -> None:
    request_id = await _request(sandbox)
    status, page = await _step_up_through_the_page(sandbox, request_id, "pwd")
    assert status == 403 and "multi-factor" in page and "Nothing was recorded" in page, page
    assert await _decisions(sandbox, request_id) == []
    failures = await _events(sandbox, request_id, "step_up_failed")
    assert [f["reason"] for f in failures] == ["weak_authentication"]
    view = await (await sandbox.api.get(f"/v1/requests/{request_id}")).json()
    assert view["status"] == "pending"


async def test_the_headless_authorize_without_a_redirect_uri_is_a_400_page() -> None:
    async with DevIdentityProvider() as idp, ClientSession() as browser:
        async with browser.get(f"{idp.issuer}/authorize?client_id=x", allow_redirects=False) as resp:
            assert resp.status == 400
            assert "redirect_uri" in await resp.text()
