"""One error shape for every failure: {"error": {"code", "message", "field"}}, never a traceback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import structlog
from aiohttp import web
from pydantic import ConfigDict, Field, with_config
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from typing_extensions import TypedDict  # pydantic reads TypedDicts from here before Python 3.12

from app.statement_timeout import is_statement_timeout
from approvals.errors import DomainError

log = structlog.get_logger("approvals.http")

STATUS_BY_KIND = {
    "invalid": 422,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
}


@with_config(ConfigDict(extra="forbid"))
class ErrorDetail(TypedDict):
    """What went wrong."""

    code: Annotated[str, Field(description="Stable and machine-readable, e.g. request_not_found.")]
    message: Annotated[str, Field(description="For people; may change.")]
    field: Annotated[
        str | None, Field(description="The input at fault (a dotted path, a header or a parameter), or null.")
    ]


@with_config(ConfigDict(extra="forbid"))
class ErrorBody(TypedDict):
    """Every refusal and failure of the API answers with this body (app.http.openapi documents it)."""

    error: ErrorDetail


class HttpError(DomainError):
    """A refusal made by the HTTP layer itself (bad framing, size, media type) with its own status."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(code, message, field)
        self.status = status


def error_response(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="approvals"'} if status == 401 else None
    return web.json_response(problem(code, message, field), status=status, headers=headers)


def domain_error_response(error: DomainError) -> web.Response:
    status = error.status if isinstance(error, HttpError) else STATUS_BY_KIND.get(error.kind, 422)
    return error_response(status, error.code, error.message, error.field)


_AIOHTTP_CODES = {
    404: ("not_found", "no such endpoint"),
    405: ("method_not_allowed", "this endpoint does not accept that method"),
    413: ("body_too_large", "the request body is too large"),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every refusal into the JSON error shape; log unexpected failures without leaking them."""
    try:
        return await handler(request)
    except DomainError as error:
        return domain_error_response(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, message = _AIOHTTP_CODES.get(exc.status, ("http_error", exc.reason))
        return error_response(exc.status, code, message)
    except (OperationalError, InterfaceError, PoolTimeout) as exc:
        if is_statement_timeout(exc):
            # A statement ran past APPROVALS_STATEMENT_TIMEOUT_SECONDS (a lock held too long, a frozen
            # server): the server cancelled it and its transaction rolled back, so nothing was half-written.
            log.error("database_timeout", method=request.method, path=request.path)
            response = error_response(
                503,
                "database_timeout",
                "the database did not answer in time; nothing was changed, retry shortly",
            )
            response.headers["Retry-After"] = "1"
            return response
        # The database is restarting, unreachable or out of connections: a retryable answer, not a crash.
        log.error("database_unavailable", method=request.method, path=request.path, error=type(exc).__name__)
        response = error_response(503, "database_unavailable", "the database is unavailable; retry shortly")
        response.headers["Retry-After"] = "1"
        return response
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path)
        return error_response(500, "internal_error", "the service failed to handle this request")


def problem(code: str, message: str, field: str | None = None) -> ErrorBody:
    """The error body."""
    return {"error": {"code": code, "message": message, "field": field}}
