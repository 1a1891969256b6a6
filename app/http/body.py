"""Reading an agent's JSON body safely: media type, size, encoding, syntax, nesting and storable text
are all checked."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from app.config import MAX_BODY_BYTES
from app.http.errors import HttpError
from app.storable_text import first_unstorable, unstorable
from approvals.errors import InvalidInput


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json_object(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The body as a JSON object, or an HttpError that says exactly what is wrong with it."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise HttpError(413, "body_too_large", f"the request body is larger than {MAX_BODY_BYTES} bytes")
    raw = await request.read()  # the app's client_max_size stops chunked bodies at the same limit
    if not raw and not required:
        return {}
    if request.content_type != "application/json":
        raise HttpError(415, "unsupported_media_type", "send the body as application/json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "invalid_encoding", "the request body is not valid UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise HttpError(400, "invalid_json", "the JSON body is nested too deeply") from None
    except ValueError as exc:
        raise HttpError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HttpError(400, "invalid_json", "the request body must be a JSON object")
    refuse_unstorable(value)
    return value


def refuse_unstorable(document: dict[str, Any]) -> None:
    """A 422 naming the first string, anywhere in the document, that a text column cannot hold.

    Checked on the whole parsed body, before any schema: every field (params keys and values, links,
    outcome detail, fields a later version adds) is covered without each remembering to check.
    """
    found = first_unstorable(document)
    if found is not None:
        field, reason = found
        raise InvalidInput("invalid_text", f"{field}: {reason}", field)


def refuse_unstorable_url(request: web.Request) -> None:
    """A 422 for a path segment or query parameter (name or value) that a text column cannot hold.

    Ids and filters from the URL reach SQL as bound values: PostgreSQL fails a statement with a NUL
    in one, which would be a 500.
    """
    for name, value in [*request.match_info.items(), *request.query.items()]:
        reason = unstorable(name) or unstorable(value)
        if reason is not None:
            field = name if unstorable(name) is None else "query"
            raise InvalidInput("invalid_text", f"{field}: {reason}", field)
