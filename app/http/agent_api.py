"""The agent API routes (DESIGN section 4): thin handlers that parse, call one use case, and render.

Every successful answer is a request view (approvals.requests.views.RequestView, the declaration the
OpenAPI document is generated from); every refusal is app.http.errors.ErrorBody.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from pydantic import TypeAdapter, ValidationError
from slack_sdk.errors import SlackClientError

from app.bootstrap import Container
from app.database import connection_for
from app.http.auth import principal_for
from app.http.body import read_json_object
from app.http.context import container_of
from app.http.errors import HttpError
from app.http.schemas import CreateRequestBody, OutcomeBody, parse_body
from app.ssrf import check_callback_url
from approvals.errors import DomainError, InvalidInput
from approvals.identity.agents import Principal
from approvals.policies.policy_file import evaluate
from approvals.requests.lifecycle import FINAL
from approvals.requests.principals import Requester
from approvals.requests.use_cases import (
    Created,
    KeyInUse,
    NewRequest,
    Outcome,
    cancel_request,
    create_request,
    get_request,
    is_one_statement,
    record_outcome,
    replay_idempotent,
)
from approvals.requests.views import RequestView

MAX_WAIT_SECONDS = 60
# Long-pollers re-read at least this often, to see changes made by other replicas.
POLL_INTERVAL_SECONDS = 1.0
# How long intake waits for Slack to say who a requester is; past it, the requester stays unresolved.
REQUESTER_LOOKUP_SECONDS = 3.0

log = structlog.get_logger("approvals.http")


async def _agent(request: web.Request) -> Principal:
    container = container_of(request)
    return await principal_for(request, container.interactive, container.principals, role="agent")


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise InvalidInput(
            "invalid_idempotency_key", "Idempotency-Key must be 1-255 printable characters", "Idempotency-Key"
        )
    return key


_REQUEST_VIEW = TypeAdapter(RequestView)


def _view_response(
    view: Mapping[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A request view as the answer. The use cases type it as a plain dict; it is built as a
    RequestView (approvals.requests.views.request_view)."""
    return web.json_response(view, status=status, headers=headers)


def _created_response(created: Created) -> web.Response:
    if not created.replayed:
        return _view_response(created.body, created.status_code)
    return _view_response(_as_first_sent(created.body), created.status_code, {"Idempotent-Replayed": "true"})


def _as_first_sent(stored: dict[str, Any]) -> Mapping[str, Any]:
    """A stored answer in the view's field order, as it was first sent (JSON columns sort their keys).
    One stored by a version whose view had other fields is replayed as stored: it is still the answer
    that request got, and it is gone a day later (purge_idempotency_keys)."""
    try:
        return _REQUEST_VIEW.validate_python(stored)
    except ValidationError:
        log.warning("replayed_answer_of_another_shape", request_id=stored.get("id"))
        return stored


async def post_request(request: web.Request) -> web.Response:
    container = container_of(request)
    principal = await _agent(request)
    key = _idempotency_key(request)
    body = parse_body(CreateRequestBody, await read_json_object(request))
    new = NewRequest(**body.model_dump())
    # Parsed once, here: a 422 for text that names nobody, before anything is looked up or written.
    new = new.with_requester(new.identity())
    if body.callback_url is not None:
        await check_callback_url(body.callback_url, container.allow_list)
    requester: Requester | None = None
    # A concurrent holder of the same key may roll back; then this caller gets to create it.
    for _attempt in range(5):
        if key is not None:
            async with container.interactive.connect() as conn:
                replay = await replay_idempotent(conn, principal=principal, new=new, idempotency_key=key)
            if replay is not None:
                return _idempotent_answer(replay)
        if requester is None:  # after the replay check: a replayed answer needs no Slack
            requester = await _resolve_requester(container, principal, new)
            new = new.with_requester(requester)
        one = is_one_statement(principal, new, key)
        async with connection_for(
            container.interactive, container.single_statements, one_statement=one
        ) as conn:
            result = await create_request(
                conn, principal=principal, new=new, policies=container.policies, idempotency_key=key
            )
        if isinstance(result, KeyInUse):
            continue
        if isinstance(result, DomainError):
            raise result
        container.metrics.requests_created.labels(result.body["status"]).inc()
        container.committed(result.body["id"], result.enqueued)
        return _created_response(result)
    raise HttpError(
        409,
        "idempotency_key_busy",
        "another request with this Idempotency-Key is in flight",
        "Idempotency-Key",
    )


async def _resolve_requester(container: Container, principal: Principal, new: NewRequest) -> Requester:
    """The requester as an identity, resolved to a Slack user (users.lookupByEmail) when Slack is on
    and someone will be asked to approve or the rule needs it. Slack failing leaves it unresolved,
    which only a rule with `requester_must_resolve` refuses (503 here: retrying may succeed)."""
    requester = new.identity()
    rule = evaluate(container.policies.policy_set, new.action).rule
    wanted = rule is not None and (rule.decision == "require_approval" or rule.requester_must_resolve)
    if container.slack is None or requester.resolved or not wanted or not principal.may_request(new.action):
        return requester
    directory = container.slack.directory
    try:
        async with asyncio.timeout(REQUESTER_LOOKUP_SECONDS):
            for address in requester.lookup_addresses():
                user = await directory.user_by_email(address)
                if user is not None and user.get("id"):
                    return replace(requester, slack_user_id=str(user["id"]), resolution="resolved")
    except (SlackClientError, aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning("requester_lookup_failed", error=type(exc).__name__)
        if rule is not None and rule.requester_must_resolve:
            raise HttpError(
                503,
                "slack_unavailable",
                "Slack could not be asked who on_behalf_of is, and this action's policy rule requires "
                "a Slack user (requester_must_resolve); nothing was created, retry shortly",
                "on_behalf_of",
            ) from None
        return replace(requester, resolution="unavailable")
    return replace(requester, resolution="not_found")


def _idempotent_answer(replay: Created | DomainError) -> web.Response:
    if isinstance(replay, DomainError):
        raise replay
    return _created_response(replay)


def _wait_seconds(request: web.Request) -> float:
    raw = request.query.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = int(raw)
    except ValueError:
        raise InvalidInput("invalid_field", "wait must be a whole number of seconds", "wait") from None
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        raise InvalidInput("invalid_field", f"wait must be between 0 and {MAX_WAIT_SECONDS}", "wait")
    return float(wait)


async def get_request_view(request: web.Request) -> web.Response:
    container = container_of(request)
    principal = await _agent(request)
    request_id = request.match_info["id"]
    deadline = time.monotonic() + _wait_seconds(request)
    while True:
        async with container.interactive.connect() as conn:
            view = await get_request(conn, principal=principal, request_id=request_id)
        remaining = deadline - time.monotonic()
        if view["status"] in FINAL or remaining <= 0:
            return _view_response(view)
        await container.waiters.wait(request_id, min(remaining, POLL_INTERVAL_SECONDS))


async def post_cancel(request: web.Request) -> web.Response:
    container = container_of(request)
    principal = await _agent(request)
    await read_json_object(request, required=False)
    async with container.interactive.begin() as conn:
        view = await cancel_request(conn, principal=principal, request_id=request.match_info["id"])
    container.committed(view["id"])
    return _view_response(view)


async def post_outcome(request: web.Request) -> web.Response:
    container = container_of(request)
    principal = await _agent(request)
    body = parse_body(OutcomeBody, await read_json_object(request))
    async with container.interactive.begin() as conn:
        view = await record_outcome(
            conn,
            principal=principal,
            request_id=request.match_info["id"],
            outcome=Outcome(**body.model_dump()),
        )
    container.committed(view["id"])
    return _view_response(view)


def register(app: web.Application) -> None:
    app.router.add_post("/v1/requests", post_request)
    app.router.add_get("/v1/requests/{id}", get_request_view)
    app.router.add_post("/v1/requests/{id}/cancel", post_cancel)
    app.router.add_post("/v1/requests/{id}/outcome", post_outcome)
