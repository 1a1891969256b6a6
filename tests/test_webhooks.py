"""Agent callbacks: Standard Webhooks signatures, the retry schedule, and delivery to a real local receiver.

The receiver is an aiohttp server on 127.0.0.1 that checks signatures with its own HMAC computation, so
a bug shared by `sign` and a test helper cannot hide.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import ipaddress
import random
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from app.delivery.webhooks import (
    RETRY_SCHEDULE_SECONDS,
    PinnedResolver,
    PinnedSessions,
    WebhookResult,
    deliver,
    headers,
    next_retry_delay,
    parse_retry_after,
    sign,
)
from app.ssrf import CallbackAllowList
from tests.conftest import free_port

# The known-answer vector published with the Standard Webhooks reference libraries.
KAT_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KAT_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
KAT_TIMESTAMP = 1614265330
KAT_BODY = b'{"test": 2432232314}'
KAT_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
BODY = b'{"request_id": "req_1", "status": "approved"}'
MSG_ID = "msg_test_1"
TIMESTAMP = 1_700_000_000
ALLOW_LOOPBACK = CallbackAllowList.parse(["127.0.0.1"])


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    signature_valid: bool
    peer: Any = None  # the client's (address, port): the same for requests on one kept-alive connection


@dataclass
class Receiver:
    """A real HTTP receiver; `received` lists every request that reached a handler."""

    server: TestServer
    received: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server.port}{path}"

    def paths(self) -> list[str]:
        return [r.path for r in self.received]


def receiver_verifies(secret: str, request_headers: dict[str, str], body: bytes) -> bool:
    """The receiver's side, written from the spec rather than through `sign`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = (
        request_headers["webhook-id"].encode() + b"." + request_headers["webhook-timestamp"].encode() + b"."
    ) + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [
        s.split(",", 1)[1] for s in request_headers["webhook-signature"].split(" ") if s.startswith("v1,")
    ]
    return any(hmac.compare_digest(expected, s) for s in offered)


def build_receiver_app(receiver_ref: list[Receiver]) -> web.Application:
    def record(request: web.Request, body: bytes) -> None:
        hdrs = {k.lower(): v for k, v in request.headers.items()}
        valid = "webhook-signature" in hdrs and receiver_verifies(SECRET, hdrs, body)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        receiver_ref[0].received.append(Received(request.path, hdrs, body, valid, peer))

    def replying(
        status: int, extra: Callable[[], dict[str, str]] | None = None, text: str = ""
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            record(request, await request.read())
            return web.Response(status=status, text=text, headers=extra() if extra else None)

        return handler

    async def slow(request: web.Request) -> web.StreamResponse:
        record(request, await request.read())
        await receiver_ref[0].release.wait()
        return web.Response(status=200)

    async def endless(request: web.Request) -> web.StreamResponse:
        record(request, await request.read())
        response = web.StreamResponse(status=500)
        await response.prepare(request)
        chunk = b"x" * 65536
        try:
            while not receiver_ref[0].release.is_set():
                await response.write(chunk)
        except ConnectionError:
            pass  # the client hung up after reading its fill: what this endpoint exists to show
        return response

    def http_date_in(seconds: int) -> Callable[[], dict[str, str]]:
        def make() -> dict[str, str]:
            when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
            return {"Retry-After": email.utils.format_datetime(when, usegmt=True)}

        return make

    app = web.Application()
    app.router.add_post("/ok", replying(204))
    app.router.add_post("/gone", replying(410))
    app.router.add_post("/limited", replying(429, lambda: {"Retry-After": "7"}))
    app.router.add_post("/unavailable", replying(503, http_date_in(120)))
    app.router.add_post("/broken", replying(500, text="database\non fire"))
    app.router.add_post("/teapot", replying(418, lambda: {"Retry-After": "30"}))
    app.router.add_post("/slow", slow)
    app.router.add_post("/endless", endless)
    app.router.add_post("/redirect", replying(302, lambda: {"Location": "/target"}))
    app.router.add_route("*", "/target", replying(200))
    return app


async def start_receiver(ssl_context: ssl.SSLContext | None = None) -> Receiver:
    ref: list[Receiver] = []
    server = TestServer(build_receiver_app(ref), host="127.0.0.1")
    receiver = Receiver(server)
    ref.append(receiver)
    await server.start_server(ssl=ssl_context)
    return receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await start_receiver()
    yield r
    r.release.set()  # lets a handler parked on the event finish, so the server closes promptly
    await r.server.close()


async def send(url: str, allow: CallbackAllowList = ALLOW_LOOPBACK, **kw: Any) -> WebhookResult:
    return await deliver(
        url=url, body=BODY, msg_id=MSG_ID, secret=SECRET, allow=allow, timestamp=TIMESTAMP, **kw
    )


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> dict[str, int]:
    """Answer for made-up host names; each successive lookup of a name gets the next answer in its list."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    calls: dict[str, int] = {}

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host in answers:
            n = calls.get(host, 0)
            calls[host] = n + 1
            address = answers[host][min(n, len(answers[host]) - 1)]
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))]
        return await real(host, port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return calls


# --- signatures ---------------------------------------------------------------------------------------


def test_sign_matches_the_standard_webhooks_known_answer() -> None:
    assert sign(KAT_SECRET, KAT_MSG_ID, KAT_TIMESTAMP, KAT_BODY) == KAT_SIGNATURE


def test_sign_depends_on_every_input() -> None:
    base = sign(KAT_SECRET, KAT_MSG_ID, KAT_TIMESTAMP, KAT_BODY)
    assert sign(KAT_SECRET, KAT_MSG_ID + "x", KAT_TIMESTAMP, KAT_BODY) != base
    assert sign(KAT_SECRET, KAT_MSG_ID, KAT_TIMESTAMP + 1, KAT_BODY) != base
    assert sign(KAT_SECRET, KAT_MSG_ID, KAT_TIMESTAMP, KAT_BODY + b" ") != base
    assert sign(SECRET, KAT_MSG_ID, KAT_TIMESTAMP, KAT_BODY) != base


@pytest.mark.parametrize("secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "whsec_"])
def test_a_malformed_secret_is_refused_without_echoing_it(secret: str) -> None:
    with pytest.raises(ValueError) as info:
        sign(secret, KAT_MSG_ID, KAT_TIMESTAMP, KAT_BODY)
    if secret.removeprefix("whsec_"):
        assert secret.removeprefix("whsec_") not in str(info.value)


def test_headers_carry_the_standard_webhooks_trio() -> None:
    got = headers(KAT_SECRET, KAT_MSG_ID, KAT_TIMESTAMP, KAT_BODY)
    assert got == {
        "webhook-id": KAT_MSG_ID,
        "webhook-timestamp": "1614265330",
        "webhook-signature": KAT_SIGNATURE,
        "content-type": "application/json",
        "user-agent": "approvals-webhooks/1",
    }


# --- retry schedule -----------------------------------------------------------------------------------


def test_retry_schedule_is_the_documented_one() -> None:
    assert RETRY_SCHEDULE_SECONDS == (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)


def test_next_retry_delay_follows_the_schedule_within_jitter() -> None:
    rand = random.Random(1234)
    assert next_retry_delay(0, rand=rand) == 0.0  # the first attempt is immediate: no jitter
    delays = []
    for attempts_made in range(1, 10):
        delay = next_retry_delay(attempts_made, rand=rand)
        assert delay is not None
        base = RETRY_SCHEDULE_SECONDS[attempts_made]
        assert 0.8 * base <= delay <= 1.2 * base, (attempts_made, delay)
        delays.append(delay / base)
    # Jitter is real: the ratios to the base differ from one another and from exactly 1.
    assert len(set(delays)) == len(delays)
    assert all(ratio != 1.0 for ratio in delays)


def test_next_retry_delay_is_reproducible_with_a_seed() -> None:
    first = [next_retry_delay(n, rand=random.Random(7)) for n in range(10)]
    second = [next_retry_delay(n, rand=random.Random(7)) for n in range(10)]
    assert first == second


def test_next_retry_delay_gives_up_after_the_tenth_attempt() -> None:
    assert next_retry_delay(9, rand=random.Random(1)) is not None
    assert next_retry_delay(10, rand=random.Random(1)) is None
    assert next_retry_delay(11, retry_after=5.0) is None
    with pytest.raises(ValueError):
        next_retry_delay(-1)


def test_next_retry_delay_honours_retry_after() -> None:
    # After the first attempt the schedule says ~5 s; the receiver asked for 7 min.
    assert next_retry_delay(1, retry_after=420.0, rand=random.Random(3)) == 420.0
    # A Retry-After shorter than the schedule does not shorten it.
    delay = next_retry_delay(3, retry_after=1.0, rand=random.Random(3))
    assert delay is not None and delay >= 0.8 * 1800
    # A receiver cannot park a delivery for more than 24 h.
    assert next_retry_delay(1, retry_after=10 * 86400.0, rand=random.Random(3)) == 86400.0


def test_parse_retry_after_reads_seconds_and_http_dates() -> None:
    now = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after("Wed, 01 May 2024 12:02:00 GMT", now=now) == 120.0
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now=now) == 0.0  # in the past: now
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("-5", now=now) is None
    assert parse_retry_after(None) is None


# --- delivery -----------------------------------------------------------------------------------------


async def test_a_2xx_is_delivered_and_the_receiver_verifies_the_signature(receiver: Receiver) -> None:
    result = await send(receiver.url("/ok"))
    assert result.result == "delivered"
    assert result.status_code == 204
    assert result.error is None
    assert result.latency_ms >= 0
    [got] = receiver.received
    assert got.signature_valid
    assert got.body == BODY
    assert got.headers["webhook-id"] == MSG_ID
    assert got.headers["webhook-timestamp"] == str(TIMESTAMP)
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == "approvals-webhooks/1"
    assert got.headers["host"] == f"127.0.0.1:{receiver.server.port}"


def test_the_receiver_rejects_a_tampered_body() -> None:
    # Guards the guard: the receiver's check would catch a signature over the wrong bytes.
    hdrs = headers(SECRET, MSG_ID, TIMESTAMP, BODY)
    assert receiver_verifies(SECRET, hdrs, BODY)
    assert not receiver_verifies(SECRET, hdrs, BODY + b" ")
    assert not receiver_verifies("whsec_" + base64.b64encode(b"x" * 32).decode(), hdrs, BODY)


async def test_a_410_means_gone(receiver: Receiver) -> None:
    result = await send(receiver.url("/gone"))
    assert (result.result, result.status_code) == ("gone", 410)
    assert receiver.paths() == ["/gone"]


async def test_a_429_retries_after_the_seconds_the_receiver_asked_for(receiver: Receiver) -> None:
    result = await send(receiver.url("/limited"))
    assert (result.result, result.status_code, result.retry_after) == ("retry", 429, 7.0)


async def test_a_503_with_an_http_date_retry_after(receiver: Receiver) -> None:
    result = await send(receiver.url("/unavailable"))
    assert (result.result, result.status_code) == ("retry", 503)
    assert result.retry_after is not None
    # HTTP-dates have whole seconds; the header said now + 120 s.
    assert 115.0 <= result.retry_after <= 121.0


async def test_retry_after_is_ignored_on_other_statuses(receiver: Receiver) -> None:
    result = await send(receiver.url("/teapot"))
    assert (result.result, result.status_code, result.retry_after) == ("retry", 418, None)


async def test_a_500_is_retried_with_an_excerpt_of_the_body(receiver: Receiver) -> None:
    result = await send(receiver.url("/broken"))
    assert (result.result, result.status_code, result.retry_after) == ("retry", 500, None)
    assert result.error == "HTTP 500: database on fire"


async def test_an_endless_response_body_is_cut_off_at_64_kib(receiver: Receiver) -> None:
    # If deliver read to the end it would time out; it stops at 64 KiB and reports the status.
    result = await send(receiver.url("/endless"), timeout=5.0)
    assert (result.result, result.status_code) == ("retry", 500)
    assert result.error is not None and result.error.startswith("HTTP 500: xxx")
    assert len(result.error) < 300


async def test_a_slow_receiver_times_out_and_is_retried(receiver: Receiver) -> None:
    result = await send(receiver.url("/slow"), timeout=0.5)
    assert result.result == "retry"
    assert result.status_code is None
    assert result.error == "timed out after 0.5 s"
    assert 400 <= result.latency_ms < 3000
    assert receiver.paths() == ["/slow"]


async def test_connection_refused_is_retried() -> None:
    result = await send(f"http://127.0.0.1:{free_port()}/ok")
    assert result.result == "retry"
    assert result.status_code is None
    assert result.error is not None and "connect" in result.error.lower()


async def test_a_redirect_is_not_followed(receiver: Receiver) -> None:
    result = await send(receiver.url("/redirect"))
    assert (result.result, result.status_code) == ("retry", 302)
    assert result.error == "redirect not followed"
    assert receiver.paths() == ["/redirect"]  # nothing reached /target


async def test_ssrf_a_loopback_url_without_an_allow_list_fails_and_sends_nothing(
    receiver: Receiver,
) -> None:
    result = await send(receiver.url("/ok"), allow=CallbackAllowList.parse([]))
    assert result.result == "failed"
    assert result.status_code is None
    assert result.error is not None and "127.0.0.1" in result.error and "non-public" in result.error
    assert receiver.received == []


async def test_ssrf_a_host_name_resolving_to_a_private_address_fails(receiver: Receiver) -> None:
    result = await send(receiver.url("/ok", host="localhost"), allow=CallbackAllowList.parse(["10.0.0.0/8"]))
    assert result.result == "failed"
    assert result.error is not None and "'localhost'" in result.error
    assert receiver.received == []


async def test_an_allowed_host_name_is_delivered(receiver: Receiver) -> None:
    result = await send(receiver.url("/ok", host="localhost"), allow=CallbackAllowList.parse(["localhost"]))
    assert result.result == "delivered"
    assert receiver.received[0].headers["host"] == f"localhost:{receiver.server.port}"


async def test_the_connection_goes_to_the_checked_address_not_a_second_lookup(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: the first answer passes the guard, any later one points at cloud metadata.
    calls = fake_dns(monkeypatch, {"rebind.test": ["127.0.0.1", "169.254.169.254"]})
    result = await send(receiver.url("/ok", host="rebind.test"), timeout=3.0)
    assert result.result == "delivered", result.error
    assert calls == {"rebind.test": 1}
    # The Host header keeps the name, though the TCP connection went to the pinned address.
    assert receiver.received[0].headers["host"] == f"rebind.test:{receiver.server.port}"


async def test_the_guard_checks_what_the_name_resolves_to_at_send_time(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_dns(monkeypatch, {"rebind.test": ["169.254.169.254"]})
    result = await send(receiver.url("/ok", host="rebind.test"))
    assert result.result == "failed"
    assert result.error is not None and "169.254.169.254" in result.error
    assert calls == {"rebind.test": 1}


async def test_pinned_sessions_reuse_a_connection_only_while_the_name_resolves_to_checked_addresses(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same answer twice (the second attempt reuses the first one's connection), then a rebinding
    # to cloud metadata: the kept-alive connection must not carry that attempt anywhere.
    calls = fake_dns(monkeypatch, {"rebind.test": ["127.0.0.1", "127.0.0.1", "169.254.169.254"]})
    sessions = PinnedSessions()
    try:
        first = await send(receiver.url("/ok", host="rebind.test"), sessions=sessions)
        second = await send(receiver.url("/ok", host="rebind.test"), sessions=sessions)
        third = await send(receiver.url("/ok", host="rebind.test"), sessions=sessions)
    finally:
        await sessions.close()
    assert (first.result, second.result) == ("delivered", "delivered")
    assert receiver.received[0].peer == receiver.received[1].peer  # one connection, kept alive
    assert third.result == "failed"
    assert third.error is not None and "169.254.169.254" in third.error
    assert len(receiver.received) == 2
    assert calls == {"rebind.test": 3}  # resolved and checked at every attempt


async def test_pinned_sessions_close_the_least_recently_used_beyond_their_bound(receiver: Receiver) -> None:
    sessions = PinnedSessions(max_sessions=1)
    try:
        assert (await send(receiver.url("/ok"), sessions=sessions)).result == "delivered"
        assert (await send(receiver.url("/ok", host="localhost"), sessions=sessions)).result == "delivered"
        assert (await send(receiver.url("/ok"), sessions=sessions)).result == "delivered"
    finally:
        await sessions.close()
    # The third attempt could not reuse the first one's session: it had been closed to make room.
    assert receiver.received[0].peer != receiver.received[2].peer


async def test_an_unresolvable_host_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def no_such_host(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(loop, "getaddrinfo", no_such_host)
    result = await send("http://nowhere.test/ok")
    assert result.result == "retry"
    assert result.error == "could not resolve 'nowhere.test'"


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://127.0.0.1/x", "scheme 'ftp'"),
        ("http:///no-host", "no host"),
    ],
)
async def test_an_unusable_url_fails(url: str, error: str) -> None:
    result = await send(url)
    assert result.result == "failed"
    assert result.error is not None and error in result.error


async def test_a_malformed_secret_fails_the_delivery_without_sending(receiver: Receiver) -> None:
    result = await deliver(
        url=receiver.url("/ok"),
        body=BODY,
        msg_id=MSG_ID,
        secret="whsec_!!!",
        allow=ALLOW_LOOPBACK,
        timestamp=TIMESTAMP,
    )
    assert result.result == "failed"
    assert result.error is not None and "!!!" not in result.error
    assert receiver.received == []


async def test_the_pinned_resolver_answers_only_for_its_host() -> None:
    resolver = PinnedResolver("Example.COM.", [ipaddress.ip_address("203.0.113.9")])
    [answer] = await resolver.resolve("example.com", 443, socket.AF_UNSPEC)
    assert (answer["host"], answer["port"], answer["family"]) == ("203.0.113.9", 443, socket.AF_INET)
    with pytest.raises(OSError):
        await resolver.resolve("other.example", 443)
    with pytest.raises(OSError):
        await resolver.resolve("example.com", 443, socket.AF_INET6)


# --- TLS through the pinned resolver ------------------------------------------------------------------


def make_certificates(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a leaf certificate for `name` signed by it; returns (ca, cert, key)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    run(
        *"req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1".split(),
        "-subj",
        "/CN=webhook test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    )
    run(*"req -newkey rsa:2048 -nodes -keyout leaf.key -out leaf.csr".split(), "-subj", f"/CN={name}")
    (directory / "leaf.ext").write_text(f"subjectAltName=DNS:{name}\n")
    run(
        *"x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 1".split(),
        "-extfile",
        "leaf.ext",
    )
    return directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key"


@pytest.fixture
async def tls_receiver(tmp_path: Path) -> AsyncIterator[tuple[Receiver, ssl.SSLContext]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    ca, cert, key = make_certificates(tmp_path, "hooks.test")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    r = await start_receiver(server_context)
    yield r, ssl.create_default_context(cafile=str(ca))
    r.release.set()
    await r.server.close()


async def test_tls_is_verified_for_the_url_host_name_through_the_pinned_address(
    tls_receiver: tuple[Receiver, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver, client_context = tls_receiver
    fake_dns(monkeypatch, {"hooks.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    port = receiver.server.port

    ok = await send(f"https://hooks.test:{port}/ok", ssl_context=client_context)
    assert ok.result == "delivered", ok.error
    assert receiver.received[0].signature_valid

    # Same address, different name: the certificate does not match it, so nothing is sent.
    wrong_name = await send(f"https://other.test:{port}/ok", ssl_context=client_context)
    assert wrong_name.result == "retry"
    assert wrong_name.error is not None and "certificate" in wrong_name.error.lower()

    # Default trust store: a private CA's certificate is not trusted.
    untrusted = await send(f"https://hooks.test:{port}/ok")
    assert untrusted.result == "retry"
    assert untrusted.error is not None and "certificate" in untrusted.error.lower()
    assert len(receiver.received) == 1
