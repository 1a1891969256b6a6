"""Agent callbacks delivered per the Standard Webhooks convention (https://www.standardwebhooks.com/).

Three parts: the signature (`sign`, `headers`), the retry schedule (`next_retry_delay`), and one
delivery attempt (`deliver`) whose outcome the outbox worker records and acts on.

`deliver` re-checks the SSRF guard at send time against the addresses the host resolves to *now*, then
connects to exactly those addresses through `PinnedResolver`. A second DNS lookup by the HTTP client
would let a host that answered with a public address for the check answer with 169.254.169.254 for the
connection (DNS rebinding).

Connections are reused only where that is as safe as a new one: `PinnedSessions` keeps one keep-alive
session per host *and resolved address set*. Each attempt still resolves the host and checks every
address at send time; only when the answer is the very set a session was pinned to does the attempt
reuse that session's connections (all of them go to addresses that passed the check just now). A new
answer gets a new session pinned to it. aiohttp binds the resolver to the connector and the connector
to the session, hence one session per pinned set rather than one shared session. Without
`PinnedSessions`, `deliver` builds a short-lived session per attempt.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import email.utils
import functools
import hashlib
import hmac
import random
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from app.ssrf import CallbackAllowList, IPAddress, is_public, resolve
from approvals.identity.keys import WEBHOOK_SECRET_PREFIX

SIGNATURE_VERSION = "v1"
USER_AGENT = "approvals-webhooks/1"
MAX_RESPONSE_BYTES = 64 * 1024
ERROR_EXCERPT_CHARS = 200

# Delay before attempt n+1 after n attempts: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h,
# 20 h, 24 h. Ten attempts spread over about three days, so a receiver down for a weekend still gets it.
RETRY_SCHEDULE_SECONDS: tuple[int, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
RETRY_JITTER = 0.2
MAX_RETRY_AFTER_SECONDS = 86400.0

# Statuses whose Retry-After header the receiver means for us; elsewhere it is ignored.
RETRY_AFTER_STATUSES = frozenset({429, 503})

_RANDOM = random.Random()
_NO_CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None)

DeliveryOutcome = Literal["delivered", "retry", "gone", "failed"]


@dataclass(frozen=True)
class _KeyedHmac:
    """A webhook secret's key, decoded, and an HMAC-SHA256 keyed with it."""

    key: bytes
    hmac: hmac.HMAC  # keyed, nothing fed yet: each signature starts from a copy


@functools.lru_cache(maxsize=1024)
def _keyed_hmac(secret: str) -> _KeyedHmac:
    # Cached per secret (a handful of agents): decoding the secret and keying HMAC (two SHA-256 blocks
    # hashed over the padded key) is then done once, not at every attempt. A rotated secret is another
    # entry. Malformed secrets raise, and exceptions are not cached.
    # Error messages never quote the secret: they end up in logs and in the delivery_error column.
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {WEBHOOK_SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("the webhook secret is not valid base64") from None
    if not key:
        raise ValueError("the webhook secret is empty")
    return _KeyedHmac(key, hmac.new(key, digestmod=hashlib.sha256))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` + base64(HMAC-SHA256(key, "{msg_id}.{timestamp}." + body)).

    `secret` is `whsec_<base64 key>`; raises ValueError when it is malformed.
    """
    mac = _keyed_hmac(secret).hmac.copy()
    mac.update(f"{msg_id}.{timestamp}.".encode())
    mac.update(body)
    digest = mac.digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The request headers of one delivery: the Standard Webhooks trio plus content type and agent."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def next_retry_delay(
    attempts_made: int, *, retry_after: float | None = None, rand: random.Random | None = None
) -> float | None:
    """Seconds to wait before the next attempt after `attempts_made` attempts; None when none is left.

    `RETRY_SCHEDULE_SECONDS[attempts_made]` with ±20% jitter (none on the immediate first attempt), so
    deliveries that failed together do not all retry in the same second. When the receiver sent
    Retry-After, the delay is at least that, capped at 24 h so a receiver cannot park a delivery forever.
    """
    if attempts_made < 0:
        raise ValueError("attempts_made cannot be negative")
    if attempts_made >= len(RETRY_SCHEDULE_SECONDS):
        return None
    base = RETRY_SCHEDULE_SECONDS[attempts_made]
    delay = 0.0 if base == 0 else base * (rand or _RANDOM).uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
    return delay


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Retry-After (delay-seconds or an HTTP-date) as seconds from `now`; None if absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # parsedate_to_datetime returns a naive datetime for "-0000"; HTTP-dates are always GMT.
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def _normalize_host(host: str) -> str:
    return host.lower().rstrip(".")


class PinnedResolver(AbstractResolver):
    """A resolver that answers for one host only, with addresses the SSRF guard already checked.

    The connector keeps the original URL, so the Host header, SNI and certificate verification still use
    the host name; only the TCP destination is fixed. Any other host name is refused rather than looked
    up, so nothing (a redirect, a proxy setting) can reach an unchecked address through this connector.
    """

    def __init__(self, host: str, addresses: Sequence[IPAddress]) -> None:
        self._host = _normalize_host(host)
        self._addresses = tuple(addresses)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if _normalize_host(host) != self._host:
            raise OSError(f"host {host!r} was not checked for this delivery")
        results: list[ResolveResult] = []
        for address in self._addresses:
            address_family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            if family not in (socket.AF_UNSPEC, address_family):
                continue
            results.append(
                {
                    "hostname": host,
                    "host": str(address),
                    "port": port,
                    "family": address_family,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                }
            )
        if not results:
            raise OSError(f"no checked address of {host!r} in address family {family!r}")
        return results

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class WebhookResult:
    """What one attempt came to.

    delivered: 2xx. gone: 410, stop delivering to that URL. failed: permanent (SSRF refusal, unusable URL
    or secret); `error` says why. retry: anything else (other statuses, 3xx, timeouts, connection and DNS
    errors); `retry_after` is the receiver's Retry-After in seconds on a 429 or 503.
    """

    result: DeliveryOutcome
    status_code: int | None
    latency_ms: int
    error: str | None
    retry_after: float | None


class _Refused(Exception):
    """A permanent refusal found before any byte was sent."""


async def _read_capped(content: aiohttp.StreamReader, limit: int = MAX_RESPONSE_BYTES) -> bytes:
    # read(n) may return less than n at a chunk boundary, hence the loop; the cap keeps a hostile or
    # broken receiver from streaming an endless body into memory.
    data = bytearray()
    while len(data) < limit:
        chunk = await content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _excerpt(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", errors="replace").split())
    return text[:ERROR_EXCERPT_CHARS]


def _classify(
    status: int, body: bytes, retry_after_header: str | None
) -> tuple[DeliveryOutcome, str | None, float | None]:
    if 200 <= status < 300:
        return "delivered", None, None
    if status == 410:
        return "gone", "HTTP 410: the receiver asked to stop deliveries to this URL", None
    if 300 <= status < 400:
        return "retry", "redirect not followed", None
    excerpt = _excerpt(body)
    error = f"HTTP {status}: {excerpt}" if excerpt else f"HTTP {status}"
    retry_after = parse_retry_after(retry_after_header) if status in RETRY_AFTER_STATUSES else None
    return "retry", error, retry_after


def _target(url: str) -> tuple[URL, str, int]:
    try:
        target = URL(url)
    except (ValueError, TypeError):
        raise _Refused("the callback URL is not a valid URL") from None
    if target.scheme not in ("http", "https"):
        raise _Refused(f"the callback URL scheme {target.scheme!r} is not http or https")
    # raw_host is the ASCII (IDNA) form: the name that DNS sees and the connector asks the resolver for.
    host = target.raw_host
    port = target.port
    if not host or port is None:
        raise _Refused("the callback URL has no host")
    return target, host, port


async def _pinned_addresses(url: URL, host: str, port: int, allow: CallbackAllowList) -> list[IPAddress]:
    """Resolve once and apply the SSRF guard; the result is what the connection may use, and nothing else."""
    addresses = await resolve(host, port)
    if not addresses:
        raise OSError(f"{host!r} resolved to no address")
    # An operator-allowed host name may resolve anywhere (same rule as app.ssrf.check_callback_url); it
    # is still pinned so the connection goes where this lookup said.
    if allow.allows_host(host) or (url.host is not None and allow.allows_host(url.host)):
        return addresses
    for address in addresses:
        if not is_public(address) and not allow.allows_address(address):
            raise _Refused(
                f"SSRF guard: {host!r} resolves to {address}, a non-public address; "
                "the operator can allow it with APPROVALS_CALLBACK_ALLOW_HOSTS"
            )
    return addresses


async def _attempt(
    target: URL,
    host: str,
    port: int,
    *,
    body: bytes,
    request_headers: dict[str, str],
    allow: CallbackAllowList,
    ssl_context: ssl.SSLContext | None,
    sessions: PinnedSessions | None,
) -> tuple[DeliveryOutcome, int | None, str | None, float | None]:
    try:
        addresses = await _pinned_addresses(target, host, port, allow)
    except (OSError, UnicodeError):
        return "retry", None, f"could not resolve {host!r}", None
    except TimeoutError:
        return "retry", None, f"resolving {host!r} timed out", None

    async with contextlib.AsyncExitStack() as stack:
        if sessions is not None:
            session = sessions.session_for(host, port, addresses, ssl_context)
        else:
            session = await stack.enter_async_context(_pinned_session(host, addresses, ssl_context))
        async with session.post(
            target,
            data=body,
            # identity: the body is only read for an error excerpt, and is never decompressed.
            headers={**request_headers, "accept-encoding": "identity"},
            allow_redirects=False,
        ) as response:
            return await _outcome_of(response)
    raise AssertionError("unreachable")  # mypy: the block above always returns


async def _outcome_of(
    response: aiohttp.ClientResponse,
) -> tuple[DeliveryOutcome, int | None, str | None, float | None]:
    response_body = await _read_capped(response.content)
    result, error, retry_after = _classify(
        response.status, response_body, response.headers.get("Retry-After")
    )
    return result, response.status, error, retry_after


def _pinned_session(
    host: str, addresses: Sequence[IPAddress], ssl_context: ssl.SSLContext | None
) -> aiohttp.ClientSession:
    """A session whose every connection goes to `addresses` (already checked), and nowhere else."""
    connector = aiohttp.TCPConnector(
        resolver=PinnedResolver(host, addresses),
        use_dns_cache=False,
        ssl=ssl_context if ssl_context is not None else True,
    )
    # trust_env=False: an HTTP(S)_PROXY from the environment would make the proxy, not us, resolve
    # the host, and the pinning would be for nothing. No cookies: deliveries are independent.
    # No aiohttp timeout: `deliver` bounds the whole attempt (DNS, connect, response) with one
    # asyncio.timeout, and aiohttp's own would only add a second timer to every request.
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=_NO_CLIENT_TIMEOUT,
    )


class PinnedSessions:
    """Keep-alive sessions for callbacks, one per (host, port, TLS context, checked address set).

    Bounded: the least recently used session is closed when a new one would exceed `max_sessions`.
    Must be closed (`close`) inside the event loop it was used in.
    """

    def __init__(self, max_sessions: int = 256) -> None:
        self._max = max_sessions
        self._sessions: OrderedDict[tuple[object, ...], aiohttp.ClientSession] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def session_for(
        self, host: str, port: int, addresses: Sequence[IPAddress], ssl_context: ssl.SSLContext | None
    ) -> aiohttp.ClientSession:
        # A frozenset: the address set, whatever order DNS gave it in, without formatting each address.
        key = (_normalize_host(host), port, frozenset(addresses), id(ssl_context))
        session = self._sessions.get(key)
        if session is not None and not session.closed:
            self._sessions.move_to_end(key)
            return session
        session = self._sessions[key] = _pinned_session(host, addresses, ssl_context)
        while len(self._sessions) > self._max:
            _, oldest = self._sessions.popitem(last=False)
            # Closed in the background: requests still running on it finish first (close waits for them).
            task = asyncio.get_running_loop().create_task(oldest.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), OrderedDict()
        for session in sessions:
            await session.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


async def deliver(
    *,
    url: str,
    body: bytes,
    msg_id: str,
    secret: str,
    allow: CallbackAllowList,
    timestamp: int,
    timeout: float = 10.0,  # noqa: ASYNC109 - one budget for DNS, connect and response, applied below
    ssl_context: ssl.SSLContext | None = None,
    sessions: PinnedSessions | None = None,
) -> WebhookResult:
    """POST one signed callback and classify the outcome; never raises for network or receiver trouble.

    The host is resolved once, every address is checked against the SSRF guard (unless the host name
    itself is allowed), and the connection goes to exactly those addresses. Redirects are not followed,
    at most 64 KiB of the response is read, and the whole attempt (DNS included) takes at most `timeout`
    seconds. `ssl_context` replaces the system trust store (a private CA); certificates are always
    verified against the URL's host name. With `sessions`, a keep-alive connection pinned to the same
    checked addresses is reused; without, the attempt gets a connection of its own.
    """
    started = time.monotonic()

    def outcome(
        result: DeliveryOutcome,
        status_code: int | None = None,
        error: str | None = None,
        retry_after: float | None = None,
    ) -> WebhookResult:
        latency_ms = int((time.monotonic() - started) * 1000)
        return WebhookResult(result, status_code, latency_ms, error, retry_after)

    try:
        request_headers = headers(secret, msg_id, timestamp, body)
        target, host, port = _target(url)
    except ValueError as exc:
        return outcome("failed", error=str(exc))
    except _Refused as exc:
        return outcome("failed", error=str(exc))

    try:
        async with asyncio.timeout(timeout):
            result, status_code, error, retry_after = await _attempt(
                target,
                host,
                port,
                body=body,
                request_headers=request_headers,
                allow=allow,
                ssl_context=ssl_context,
                sessions=sessions,
            )
    except _Refused as exc:
        return outcome("failed", error=str(exc))
    except TimeoutError:
        return outcome("retry", error=f"timed out after {timeout:g} s")
    except aiohttp.InvalidURL as exc:
        return outcome("failed", error=f"the callback URL is not usable: {exc}")
    except aiohttp.ClientSSLError as exc:
        return outcome("retry", error=f"TLS error: {exc}")
    except (aiohttp.ClientError, OSError) as exc:
        return outcome("retry", error=f"{type(exc).__name__}: {exc}")
    return outcome(result, status_code, error, retry_after)
