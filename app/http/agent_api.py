"""The agent API routes (DESIGN section 4): thin handlers that parse, call one use case, and render."""

from __future__ import annotations

import time

from aiohttp import web

from app.database import connection_for
from app.http.auth import principal_for
from app.http.body import read_json_object
from app.http.context import container_of
from app.http.errors import HttpError
from app.http.schemas import CreateRequestBody, OutcomeBody, parse_body
from app.ssrf import check_callback_url
from approvals.agents import Principal
from approvals.errors import DomainError, InvalidInput
from approvals.request_views import FINAL_STATUSES
from approvals.requests import (
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

MAX_WAIT_SECONDS = 60
# Long-pollers re-read at least this often, to see changes made by other replicas.
POLL_INTERVAL_SECONDS = 1.0


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


def _created_response(created: Created) -> web.Response:
    headers = {"Idempotent-Replayed": "true"} if created.replayed else None
    return web.json_response(created.body, status=created.status_code, headers=headers)


async def post_request(request: web.Request) -> web.Response:
    container = container_of(request)
    principal = await _agent(request)
    key = _idempotency_key(request)
    body = parse_body(CreateRequestBody, await read_json_object(request))
    if body.callback_url is not None:
        await check_callback_url(body.callback_url, container.allow_list)
    new = NewRequest(**body.model_dump())
    # A concurrent holder of the same key may roll back; then this caller gets to create it.
    for _attempt in range(5):
        if key is not None:
            async with container.interactive.connect() as conn:
                replay = await replay_idempotent(conn, principal=principal, new=new, idempotency_key=key)
            if replay is not None:
                return _idempotent_answer(replay)
        one = is_one_statement(container.interactive.dialect.name, principal, new, key)
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
        if view["status"] in FINAL_STATUSES or remaining <= 0:
            return web.json_response(view)
        await container.waiters.wait(request_id, min(remaining, POLL_INTERVAL_SECONDS))


async def post_cancel(request: web.Request) -> web.Response:
    container = container_of(request)
    principal = await _agent(request)
    await read_json_object(request, required=False)
    async with container.interactive.begin() as conn:
        view = await cancel_request(conn, principal=principal, request_id=request.match_info["id"])
    container.committed(view["id"])
    return web.json_response(view)


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
    return web.json_response(view)


def register(app: web.Application) -> None:
    app.router.add_post("/v1/requests", post_request)
    app.router.add_get("/v1/requests/{id}", get_request_view)
    app.router.add_post("/v1/requests/{id}/cancel", post_cancel)
    app.router.add_post("/v1/requests/{id}/outcome", post_outcome)
