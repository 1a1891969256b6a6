"""The sandbox's demo agent: an agent as any other, registered in the database, that posts a sample
offer-letter request through the public API with its own key and receives the signed callback.

It checks each callback's Standard Webhooks signature as an agent should (HMAC-SHA256 with its webhook
secret over id, timestamp and body; a timestamp at most five minutes off) and keeps what it received,
verified or not, for the sandbox page to show.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from approvals.errors import Conflict
from approvals.identity import agents as agent_cases
from approvals.requests.lifecycle import Status

NAME = "sandbox-demo-agent"
OWNER = "recruiter@example.com"
ACTION = "send_offer_letter"
SIGNATURE_TOLERANCE_SECONDS = 300
_MAX_KEPT = 50
_MAX_CALLBACK_BYTES = 256 * 1024
_TIMEOUT = aiohttp.ClientTimeout(total=15)
# Sample candidates, taken in turn, so that successive demo requests are told apart on the cards.
_CANDIDATES = (
    ("Ada Lovelace", "Staff Engineer", 185_000, "2027-01-11"),
    ("Grace Hopper", "Principal Engineer", 210_000, "2027-02-01"),
    ("Alan Turing", "Research Scientist", 172_000, "2027-01-18"),
    ("Katherine Johnson", "Engineering Manager", 195_000, "2027-03-01"),
)


@dataclass(frozen=True)
class ReceivedCallback:
    received_at: str
    request_id: str | None
    status: str | None
    verified: bool
    body: str


class DemoAgentError(Exception):
    """The demo request could not be posted; the message says why in plain words."""


class DemoAgent:
    """Register with `await agent.register(engine)`; then `post_sample()` and the callback route."""

    def __init__(self, *, api_url: str, callback_url: str, on_change: Callable[[], None]) -> None:
        self._api_url = api_url.rstrip("/")
        self.callback_url = callback_url
        self._on_change = on_change
        self._key = ""
        self._secret = ""
        self._session: aiohttp.ClientSession | None = None
        self._candidates = itertools.cycle(_CANDIDATES)
        self.requests: list[dict[str, str]] = []
        self.callbacks: list[ReceivedCallback] = []

    async def register(self, engine: AsyncEngine) -> None:
        """Register the demo agent, or give it a fresh key if an earlier start registered it (only the
        key's hash is stored, so the previous start's key cannot be read back)."""
        async with engine.begin() as conn:
            try:
                new = await agent_cases.add_agent(
                    conn,
                    name=NAME,
                    owner=OWNER,
                    actions=[ACTION],
                    purpose="The sandbox's demo agent: posts sample offer letters for approval.",
                    risk="low",
                    actor="sandbox",
                )
                self._key, self._secret = new.api_key, new.webhook_secret
                return
            except Conflict:
                pass
        async with engine.begin() as conn:
            self._key = await agent_cases.rotate_agent_key(
                conn, name=NAME, grace=dt.timedelta(0), actor="sandbox"
            )
            self._secret = await agent_cases.webhook_secret_of(conn, NAME)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def sample_request(self) -> dict[str, Any]:
        candidate, role, salary, start = next(self._candidates)
        return {
            "action": ACTION,
            "title": f"Offer letter: {candidate}, {role}",
            "summary": f"Send {candidate} the offer for {role}, starting {start}.",
            "params": {
                "candidate": candidate,
                "role": role,
                "salary": salary,
                "currency": "EUR",
                "start_date": start,
            },
            "on_behalf_of": OWNER,
            "callback_url": self.callback_url,
            "expires_in": 3600,
        }

    async def post_sample(self) -> str:
        """POST a sample request with the agent's key; returns its request id."""
        if not self._key:
            raise DemoAgentError("the demo agent is not registered yet")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=_TIMEOUT)
        try:
            async with self._session.post(
                f"{self._api_url}/v1/requests",
                json=self.sample_request(),
                headers={"Authorization": f"Bearer {self._key}"},
            ) as response:
                body = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise DemoAgentError(f"the service did not answer: {exc}") from None
        if status not in (200, 201) or not isinstance(body, dict) or "id" not in body:
            error = (body or {}).get("error") if isinstance(body, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            raise DemoAgentError(f"the service refused the request (HTTP {status}): {message or body}")
        request_id = str(body["id"])
        self.requests.append({"request_id": request_id, "status": str(body.get("status", Status.PENDING))})
        del self.requests[:-_MAX_KEPT]
        self._on_change()
        return request_id

    async def receive(self, request: web.Request) -> web.Response:
        """The agent's callback endpoint: verify, keep, answer 200 (a bad signature gets 401)."""
        body = await request.content.read(_MAX_CALLBACK_BYTES + 1)
        if len(body) > _MAX_CALLBACK_BYTES:
            return web.Response(status=413, text="too large")
        verified = verify_signature(self._secret, request.headers, body, now=time.time())
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        parsed = parsed if isinstance(parsed, dict) else {}
        # {"type": "request.approved", "data": <the request, as GET /v1/requests/{id} shows it>}
        data = parsed.get("data")
        data = data if isinstance(data, dict) else {}
        request_id, status = data.get("id"), data.get("status")
        self.callbacks.append(
            ReceivedCallback(
                received_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                request_id=str(request_id) if request_id else None,
                status=str(status) if status else None,
                verified=verified,
                body=json.dumps(parsed, indent=2, sort_keys=True)
                if parsed
                else body.decode(errors="replace"),
            )
        )
        del self.callbacks[:-_MAX_KEPT]
        if verified:
            for item in self.requests:
                if item["request_id"] == request_id and status:
                    item["status"] = str(status)
        self._on_change()
        return web.Response(status=200 if verified else 401, text="ok" if verified else "bad signature")


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, *, now: float) -> bool:
    """Standard Webhooks: one of the `v1,<base64>` signatures is HMAC-SHA256 over `id.timestamp.body`
    keyed with the secret's bytes, and the timestamp is within five minutes of `now`."""
    msg_id, timestamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not msg_id or not timestamp.isdigit() or not secret.startswith("whsec_"):
        return False
    if abs(now - int(timestamp)) > SIGNATURE_TOLERANCE_SECONDS:
        return False
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        return False
    expected = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    for candidate in headers.get("webhook-signature", "").split():
        version, _, signature = candidate.partition(",")
        try:
            given = base64.b64decode(signature, validate=True)
        except binascii.Error:
            continue
        if version == "v1" and hmac.compare_digest(given, expected):
            return True
    return False
