"""Sandbox mode end to end over HTTP: `approvals serve --sandbox` with the example policies, the demo
agent, signed clicks through the service's real Slack handling, the dev IdP's step-up, and the guards
that keep the sandbox local. (tests/test_sandbox_browser.py does the same through Chromium.)"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import http.cookiejar
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from app.config import Settings
from app.sandbox.demo_agent import verify_signature
from app.sandbox.mode import SandboxRefused, prepare, wanted
from tests.conftest import APPROVALS, ROOT, clean_environment, free_port
from tests.sandbox_service import SandboxService, run_approvals, running_sandbox, start_sandbox, stop_sandbox


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxService]:
    yield from running_sandbox()


def card_of(state: dict[str, Any], request_id: str) -> dict[str, Any] | None:
    for message in state["messages"]["C0HIRING"]:
        if request_id in message["html"]:
            return dict(message)
    return None


def buttons(fragment: str) -> list[dict[str, str]]:
    found = []
    for tag in re.findall(r"<button [^>]*>", fragment):
        attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        found.append({k: html.unescape(v) for k, v in attributes.items()})
    return found


def post_request(sandbox: SandboxService) -> str:
    """What the page's demo button does (`approvals demo request` is tested on its own below); waits
    for the card."""
    status, answer = sandbox.post_json("/sandbox/demo/request", {})
    assert (status, answer["ok"]) == (200, True), answer
    request_id = str(answer["request_id"])
    assert re.fullmatch(r"req_[0-9a-f]{24}", request_id)
    sandbox.wait_for_state(lambda s: card_of(s, request_id) is not None)
    return request_id


def click(sandbox: SandboxService, user: str, request_id: str, action_id: str) -> dict[str, Any]:
    card = card_of(sandbox.state(user), request_id)
    assert card is not None
    button = next(b for b in buttons(card["html"]) if b["data-action-id"] == action_id)
    status, answer = sandbox.post_json(
        "/sandbox/act",
        {
            "user": user,
            "conversation": "C0HIRING",
            "message_ts": card["ts"],
            "action_id": action_id,
            "block_id": button["data-block-id"],
            "value": button["data-value"],
            "ephemeral_id": None,
        },
    )
    assert status == 200, answer
    return dict(answer)


def newest_ephemeral(sandbox: SandboxService, user: str, after: int) -> dict[str, Any]:
    state = sandbox.wait_for_state(lambda s: len(s["ephemerals"]) > after, user=user)
    return dict(state["ephemerals"][-1])


def plain(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def sign_in(link: str, *, person: str, method: str) -> str:
    """Follow the step-up link as a browser would: the dev IdP's page, the choice posted, the service's
    callback page. Returns that page's text."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(link, timeout=20) as response:
        page, where = response.read().decode(), response.geturl()
    assert "Development identity provider" in page
    action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', page).group(1))
    fields = {
        html.unescape(name): html.unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page)
    }
    fields |= {"sub": person, "method": method}
    target = urllib.parse.urljoin(where, action)
    try:
        with opener.open(target, data=urllib.parse.urlencode(fields).encode(), timeout=20) as response:
            return plain(response.read().decode())
    except urllib.error.HTTPError as exc:
        return plain(exc.read().decode())


def test_the_first_screen_says_where_everything_is(sandbox: SandboxService) -> None:
    out = sandbox.stdout()
    assert f"Sandbox (open in a browser):  {sandbox.base}/sandbox" in out
    assert f"API:                          {sandbox.base}/v1/requests" in out
    assert "Data:                         embedded PostgreSQL server, its data in " in out
    assert "approvals demo request" in out
    logged = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    warning = next(line for line in logged if line["event"] == "sandbox_mode")
    assert "not Slack" in warning["note"] and warning["level"] == "warning"
    listening = next(line for line in logged if line["event"] == "listening")
    assert listening["slack"] == "sandbox" and listening["embedded_database"] is True
    assert listening["mfa_issuer"] == f"{sandbox.base}/sandbox/idp"
    # Every line that is not the banner (a person's, on stderr) is JSON, the libraries' included.
    banner = {
        "Approvals is running.",
        "Sandbox mode:",
        "Sandbox (open",
        "API:",
        "Health:",
        "Data:",
        "Keys:",
        "Next:",
        "or run",
    }
    for line in out.splitlines():
        if line.strip() and not any(line.strip().startswith(b) for b in banner):
            json.loads(line)
    # Made-up secrets are never logged.
    assert "xoxb-sandbox" not in out


def test_the_root_links_to_the_sandbox_the_api_and_health(sandbox: SandboxService) -> None:
    request = urllib.request.Request(sandbox.base + "/", headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        links = json.loads(response.read())["links"]
    assert links["sandbox"] == sandbox.base + "/sandbox"
    assert links["openapi"] == sandbox.base + "/openapi.json"
    assert links["healthz"] == sandbox.base + "/healthz"
    with urllib.request.urlopen(sandbox.base + "/", timeout=10) as response:
        page = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/html")
    assert f'href="{sandbox.base}/sandbox"' in page and f'href="{sandbox.base}/openapi.json"' in page


def test_the_page_says_it_is_not_slack_and_runs_no_inline_script(sandbox: SandboxService) -> None:
    with urllib.request.urlopen(sandbox.sandbox, timeout=10) as response:
        page = response.read().decode()
        policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src" not in policy.replace("default-src", "")
    body = page.split("<body", 1)[1]
    first_element = re.search(r"<(\w+)[^>]*>", body.split(">", 1)[1])
    assert first_element is not None and 'id="sandbox-banner"' in first_element.group(0)
    assert re.search(r'<p id="sandbox-banner"[^>]*>[^<]*not Slack', body)
    assert not re.search(r"<script(?![^>]*\ssrc=)[^>]*>", page)  # no inline script anywhere


def test_approval_with_mfa_step_up_reaches_the_agent_verified(sandbox: SandboxService) -> None:
    request_id = post_request(sandbox)
    before = len(sandbox.state("U01COO")["ephemerals"])
    assert click(sandbox, "U01COO", request_id, "approve_request")["ok"] is True
    prompt = newest_ephemeral(sandbox, "U01COO", before)
    text = plain(prompt["html"])
    assert "fresh sign-in" in text and "unknown time" not in text and "UTC" in text
    link = html.unescape(re.search(r'href="([^"]+)"', prompt["html"]).group(1))
    assert link.startswith(sandbox.base + "/auth/step-up/")

    # A password alone is no second factor: refused, and the request stays pending.
    refused = sign_in(link, person="dev|cora", method="pwd")
    assert "multi-factor" in refused.lower() or "mfa" in refused.lower(), refused
    assert sandbox.get_json("/sandbox/state")["demo"]["callbacks"] == [] or all(
        c["request_id"] != request_id for c in sandbox.state()["demo"]["callbacks"]
    )

    before = len(sandbox.state("U01COO")["ephemerals"])
    click(sandbox, "U01COO", request_id, "approve_request")
    link = html.unescape(
        re.search(r'href="([^"]+)"', newest_ephemeral(sandbox, "U01COO", before)["html"]).group(1)
    )
    done = sign_in(link, person="dev|cora", method="pwd+otp")
    assert "approval is recorded" in done

    state = sandbox.wait_for_state(
        lambda s: any(c["request_id"] == request_id for c in s["demo"]["callbacks"])
    )
    card = card_of(state, request_id)
    assert card is not None and card["edited"] is True
    assert "Approved by" in plain(card["html"]) and "MFA" in plain(card["html"])
    assert buttons(card["html"]) == []  # a decided card has nothing left to click
    callback = next(c for c in state["demo"]["callbacks"] if c["request_id"] == request_id)
    assert (callback["status"], callback["verified"]) == ("approved", True)
    body = json.loads(callback["body"])
    assert body["type"] == "request.approved"
    assert body["data"]["decisions"][0]["mfa"]["amr"] == ["pwd", "otp"]


def test_an_outsider_and_the_requester_are_refused_in_an_ephemeral(sandbox: SandboxService) -> None:
    request_id = post_request(sandbox)
    for user, words in (("U0OUTSIDER", "not an approver"), ("U09REC", "on your own behalf")):
        before = len(sandbox.state(user)["ephemerals"])
        click(sandbox, user, request_id, "approve_request")
        refusal = plain(newest_ephemeral(sandbox, user, before)["html"])
        assert words in refusal.lower() or words.replace("an ", "") in refusal.lower(), refusal
    # Nobody else sees those, and the request is still open.
    coo_sees = " ".join(plain(e["html"]).lower() for e in sandbox.state("U01COO")["ephemerals"])
    assert "not an approver" not in coo_sees and "own behalf" not in coo_sees
    card = card_of(sandbox.state(), request_id)
    assert card is not None and [b["data-action-id"] for b in buttons(card["html"])] == [
        "approve_request",
        "reject_request",
    ]


def test_reject_opens_the_modal_and_the_reason_lands_on_the_card(sandbox: SandboxService) -> None:
    request_id = post_request(sandbox)
    click(sandbox, "U02CFO", request_id, "reject_request")  # the CFO is no approver here
    click(sandbox, "U01COO", request_id, "reject_request")
    modal = sandbox.wait_for_state(lambda s: s["modal"] is not None)["modal"]
    assert modal["title"] == "Reject request" and modal["submit"] == "Reject"
    name = re.search(r'name="([^"]+/[^"]+)"', modal["html"]).group(1)
    block, action = name.split("/")
    status, answer = sandbox.post_json(
        "/sandbox/submit", {"user": "U01COO", "view_id": modal["view_id"], "values": {block: {action: "  "}}}
    )
    assert (status, answer["ok"]) == (200, False) and block in answer["errors"]
    assert sandbox.state()["modal"] is not None  # still open, to be fixed
    before = len(sandbox.state("U01COO")["ephemerals"])
    status, answer = sandbox.post_json(
        "/sandbox/submit",
        {"user": "U01COO", "view_id": modal["view_id"], "values": {block: {action: "Budget is frozen <b>"}}},
    )
    assert (status, answer["ok"]) == (200, True)
    assert sandbox.state()["modal"] is None
    # MFA applies to rejections too: the COO steps up, unless an earlier test's sign-in is still fresh
    # (max_age 600 s), which then counts without another.
    state = sandbox.wait_for_state(
        lambda s: len(s["ephemerals"]) > before or "Rejected" in plain(card_of(s, request_id)["html"])
    )
    if len(state["ephemerals"]) > before:
        link = html.unescape(re.search(r'href="([^"]+)"', state["ephemerals"][-1]["html"]).group(1))
        assert "rejection is recorded" in sign_in(link, person="dev|cora", method="pwd+hwk")
    state = sandbox.wait_for_state(lambda s: "Rejected" in plain(card_of(s, request_id)["html"]))
    card_html = card_of(state, request_id)["html"]
    assert (
        "Budget is frozen <b>" in plain(card_html) and "<b>" not in card_html.split("Budget is frozen")[1][:8]
    )


def test_slash_command_and_app_home_list_what_waits(sandbox: SandboxService) -> None:
    request_id = post_request(sandbox)
    before = len(sandbox.state("U01COO")["ephemerals"])
    status, answer = sandbox.post_json(
        "/sandbox/command", {"user": "U01COO", "conversation": "C0HIRING", "text": "/approvals"}
    )
    assert (status, answer["ok"]) == (200, True)
    listed = newest_ephemeral(sandbox, "U01COO", before)
    assert request_id in listed["html"] or "Offer letter" in plain(listed["html"])
    status, answer = sandbox.post_json("/sandbox/home", {"user": "U01COO"})
    assert (status, answer["ok"]) == (200, True)
    home = sandbox.wait_for_state(lambda s: s["home"] is not None)["home"]
    assert "Waiting for your decision" in plain(home["html"])
    status, answer = sandbox.post_json(
        "/sandbox/command", {"user": "U01COO", "conversation": "C0HIRING", "text": "hello"}
    )
    assert answer["ok"] is False and "slash command" in answer["error"]


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Origin": "http://evil.example"}, b"{}", 403),
        ({"Sec-Fetch-Site": "cross-site"}, b"{}", 403),
        ({"Content-Type": "text/plain"}, b"{}", 415),
        ({}, b"{not json", 400),
        ({}, b"[1]", 400),
        ({"Host": "evil.example"}, b"{}", 403),
    ],
)
def test_the_page_actions_refuse_cross_site_and_malformed_posts(
    sandbox: SandboxService, headers: dict[str, str], body: bytes, status: int
) -> None:
    requests_before = len(sandbox.state()["demo"]["requests"])
    request = urllib.request.Request(
        sandbox.base + "/sandbox/demo/request",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **headers},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == status
    assert len(sandbox.state()["demo"]["requests"]) == requests_before


def test_the_fake_slack_api_wants_the_sandbox_token_and_a_loopback_name(sandbox: SandboxService) -> None:
    history = sandbox.base + "/sandbox/slack/api/conversations.history?channel=C0HIRING"

    def call(url: str, data: bytes | None = None, **headers: str) -> tuple[int, Any]:
        request = urllib.request.Request(url, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    # A page on another name that resolves here (DNS rebinding) reads nothing.
    assert call(history, Host="evil.example")[0] == 403
    assert call(history) == (200, {"ok": False, "error": "not_authed"})
    assert call(history, Authorization="Bearer xoxb-guess") == (200, {"ok": False, "error": "invalid_auth"})
    malformed = call(
        sandbox.base + "/sandbox/slack/api/chat.postMessage",
        b"{not json",
        **{"Content-Type": "application/json"},
    )
    assert malformed == (200, {"ok": False, "error": "invalid_json"})
    # The service's own calls carry the token: its cards are there.
    post_request(sandbox)
    assert sandbox.state()["messages"]["C0HIRING"]


def test_the_demo_agents_callback_refuses_cross_site_posts(sandbox: SandboxService) -> None:
    before = sandbox.state()["demo"]["callbacks"]
    request = urllib.request.Request(
        sandbox.base + "/sandbox/agent/callback",
        data=b'{"type": "request.approved", "data": {"id": "req_forged", "status": "approved"}}',
        headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    assert sandbox.state()["demo"]["callbacks"] == before


def test_unknown_users_and_buttons_that_are_not_there_are_refused(sandbox: SandboxService) -> None:
    status, answer = sandbox.post_json("/sandbox/home", {"user": "U0NOBODY"})
    assert status == 400 and "U0NOBODY" in answer["error"]
    request_id = post_request(sandbox)
    card = card_of(sandbox.state(), request_id)
    status, answer = sandbox.post_json(
        "/sandbox/act",
        {
            "user": "U01COO",
            "conversation": "C0HIRING",
            "message_ts": card["ts"],
            "action_id": "approve_request",
            "block_id": "",
            "value": "req_000000000000000000000000",  # not the card's request
            "ephemeral_id": None,
        },
    )
    assert (status, answer["ok"]) == (200, False) and "not on the message" in answer["error"]


def test_the_dev_idp_signs_in_for_this_service_only(sandbox: SandboxService) -> None:
    query = urllib.parse.urlencode(
        {
            "client_id": "approvals-sandbox",
            "redirect_uri": "http://evil.example/callback",
            "response_type": "code",
            "code_challenge": "x" * 43,
            "code_challenge_method": "S256",
            "state": "s",
        }
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{sandbox.base}/sandbox/idp/authorize?{query}", timeout=10)
    assert refused.value.code == 400
    assert "not registered" in refused.value.read().decode()


# -- starting, refusing to start, stopping ---------------------------------------------------------------


def test_the_sandbox_never_starts_beside_a_real_slack_or_idp_or_off_loopback() -> None:

    base = clean_environment() | {
        "APPROVALS_PORT": str(free_port()),
        "APPROVALS_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/sandbox_never_opened",
        "APPROVALS_POLICIES": str(ROOT / "policies.yml"),
    }
    cases = [
        ({"SLACK_BOT_TOKEN": "xoxb-real", "SLACK_SIGNING_SECRET": "s"}, "never runs with Slack configured"),
        ({"APPROVALS_OIDC_ISSUER": "https://idp.example.com", "APPROVALS_OIDC_CLIENT_ID": "c"}, "its own"),
        ({"APPROVALS_HOST": "0.0.0.0"}, "--sandbox-remote"),
        ({"APPROVALS_PUBLIC_URL": "https://approvals.example.com"}, "--sandbox-remote"),
        (
            {"APPROVALS_DATABASE_URL": "postgresql://approvals@db.example.com/approvals"},
            "a database of its own",
        ),
    ]
    for extra, words in cases:
        result = run_approvals("serve", "--sandbox", env=base | extra)
        assert result.returncode == 2, result.stdout + result.stderr
        assert words in result.stderr
        assert result.stderr.strip().count("\n") == 0  # one line, no traceback


def test_auto_leaves_the_sandbox_out_when_slack_is_configured() -> None:

    assert wanted("auto", Settings(_env_file=None)) is True
    configured = Settings(_env_file=None, slack_bot_token="xoxb-real", slack_signing_secret="s")
    assert wanted("auto", configured) is False
    assert (
        wanted("auto", Settings(_env_file=None, oidc_issuer="https://idp.example.com", oidc_client_id="c"))
        is False
    )
    assert wanted("off", Settings(_env_file=None)) is False
    assert wanted("on", configured) is True  # and prepare() then refuses, as tested above


def test_a_stop_signal_ends_live_update_streams_and_exits_cleanly() -> None:
    service = start_sandbox()
    try:
        stream = urllib.request.urlopen(service.sandbox + "/events", timeout=10)
        assert stream.readline().startswith(b"data: ")
        started = time.monotonic()
        code = stop_sandbox(service)
        assert code == 0, service.stdout()[-2000:]
        assert time.monotonic() - started < 15  # not the runner's 60 s wait for open connections
        assert '"event": "stopping"' in service.stdout()
    finally:
        stop_sandbox(service)


# -- the demo agent's signature check ----------------------------------------------------------------------

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def signed(
    body: bytes, *, secret: str = SECRET, msg_id: str = "msg_1", timestamp: int = 1_800_000_000
) -> dict[str, str]:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def test_the_demo_agent_verifies_standard_webhook_signatures() -> None:
    body = b'{"type":"request.approved"}'
    now = 1_800_000_010
    assert verify_signature(SECRET, signed(body), body, now=now)
    other = "whsec_" + base64.b64encode(b"o" * 32).decode()
    rotated = signed(body, secret=other)["webhook-signature"] + " " + signed(body)["webhook-signature"]
    assert verify_signature(SECRET, signed(body) | {"webhook-signature": rotated}, body, now=now)
    assert not verify_signature(SECRET, signed(body), body + b" ", now=now)
    assert not verify_signature(other, signed(body), body, now=now)
    assert not verify_signature(SECRET, signed(body), body, now=now + 301)
    assert not verify_signature(SECRET, signed(body) | {"webhook-signature": "v1,not-base64!"}, body, now=now)
    assert not verify_signature(SECRET, {}, body, now=now)


def test_demo_request_waits_for_the_decision_and_shows_the_verified_callback(sandbox: SandboxService) -> None:
    known = {r["request_id"] for r in sandbox.state()["demo"]["requests"]}
    waiting = subprocess.Popen(
        [*APPROVALS, "demo", "request", "--url", sandbox.base, "--wait", "60"],
        env=sandbox.env,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        state = sandbox.wait_for_state(lambda s: {r["request_id"] for r in s["demo"]["requests"]} - known)
        request_id = next(r["request_id"] for r in state["demo"]["requests"] if r["request_id"] not in known)
        sandbox.wait_for_state(lambda s: card_of(s, request_id) is not None)
        before_prompts = len(sandbox.state("U01COO")["ephemerals"])
        click(sandbox, "U01COO", request_id, "approve_request")
        # A step-up, unless an earlier test's sign-in of the COO's is still fresh.
        state = sandbox.wait_for_state(
            lambda s: (
                len(s["ephemerals"]) > before_prompts
                or any(c["request_id"] == request_id for c in s["demo"]["callbacks"])
            )
        )
        if len(state["ephemerals"]) > before_prompts:
            link = html.unescape(re.search(r'href="([^"]+)"', state["ephemerals"][-1]["html"]).group(1))
            assert "approval is recorded" in sign_in(link, person="dev|cora", method="pwd+otp")
        out, err = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err
    assert f"posted {request_id}: decide it as the COO at {sandbox.base}/sandbox?user=U01COO" in out
    assert "callback received: approved (signature verified)" in out


def test_demo_request_says_when_no_sandbox_answers() -> None:

    result = run_approvals(
        "demo", "request", "--url", f"http://127.0.0.1:{free_port()}", env=clean_environment()
    )
    assert result.returncode == 2
    assert "cannot reach the service" in result.stderr and "make run" in result.stderr
    assert "Traceback" not in result.stderr


def test_remote_sandbox_is_opt_in_and_reaches_itself_on_loopback() -> None:

    anywhere = Settings(_env_file=None, host="0.0.0.0", port=9123)
    with pytest.raises(SandboxRefused, match="--sandbox-remote"):
        prepare(anywhere)
    settings, sandbox = prepare(anywhere, allow_remote=True)
    assert sandbox.allow_remote is True
    assert settings.slack_api_url == "http://127.0.0.1:9123/sandbox/slack/api/"
    assert settings.oidc_issuer == "http://127.0.0.1:9123/sandbox/idp"
    assert settings.slack_bot_token is not None and settings.slack_signing_secret is not None
    # Made up at each start: two starts never share a signing secret.
    again, _ = prepare(anywhere, allow_remote=True)
    assert again.slack_signing_secret != settings.slack_signing_secret
    # A public URL the operator set (a tunnel, say) is where browsers are sent: with --sandbox-remote
    # only, as a tunnel or proxy may present every request as a loopback one.
    tunnel = Settings(_env_file=None, port=9123, public_url="https://demo.example.com")
    with pytest.raises(SandboxRefused, match="APPROVALS_PUBLIC_URL"):
        prepare(tunnel)
    tunnelled, sandbox = prepare(tunnel, allow_remote=True)
    assert tunnelled.oidc_issuer == "https://demo.example.com/sandbox/idp"
    assert sandbox.url == "https://demo.example.com/sandbox"
    assert tunnelled.slack_api_url == "http://127.0.0.1:9123/sandbox/slack/api/"


def test_demo_request_prints_json_for_scripts(sandbox: SandboxService) -> None:
    result = run_approvals("demo", "request", "--url", sandbox.base, "--json", env=sandbox.env)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert re.fullmatch(r"req_[0-9a-f]{24}", printed["request_id"])
    assert printed["sandbox"] == f"{sandbox.base}/sandbox?user=U01COO&c=C0HIRING"
    assert printed["callback"] is None  # not asked to wait
    assert printed["request_id"] in [r["request_id"] for r in sandbox.state()["demo"]["requests"]]
