"""The compliance API (DESIGN section 6): approval chains for auditor keys, read-only.

Its JSON answers are ChainPage and approvals.audit.chain_view.ChainView, the declarations the
OpenAPI document is generated from; refusals are app.http.errors.ErrorBody.
"""

from __future__ import annotations

import json
from typing import Annotated, cast

from aiohttp import web
from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict  # pydantic reads TypedDicts from here before Python 3.12

from app.chain_formats import (
    CSV_COLUMNS,
    FORMATS,
    MEDIA_TYPES,
    Format,
    chain_filter,
    csv_row,
    csv_text,
    jsonl,
)
from app.http.auth import principal_for
from app.http.context import container_of
from approvals.audit.chain_view import ChainView
from approvals.audit.chains import chain_page, count_chains, get_chain
from approvals.errors import InvalidInput

MAX_LIMIT = 1000


@with_config(ConfigDict(extra="forbid"))
class ChainPage(TypedDict):
    """A page of chains, oldest first (format=json)."""

    population: Annotated[int, Field(description="How many chains match the filters (X-Population).")]
    count: Annotated[int, Field(description="How many chains this page holds.")]
    next_cursor: Annotated[
        str | None, Field(description="Pass as cursor for the next page; null on the last (X-Next-Cursor).")
    ]
    chains: list[ChainView]


async def _auditor(request: web.Request) -> None:
    container = container_of(request)
    await principal_for(request, container.engine, container.principals, role="auditor")


def _format(request: web.Request) -> Format:
    asked = request.query.get("format")
    if asked:
        if asked not in FORMATS:
            raise InvalidInput("invalid_field", "format is json, jsonl or csv", "format")
        return asked  # type: ignore[return-value]
    accept = request.headers.get("Accept", "")
    if "text/csv" in accept:
        return "csv"
    if "ndjson" in accept or "jsonl" in accept:
        return "jsonl"
    return "json"


def _limit(request: web.Request) -> int:
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise InvalidInput("invalid_field", "limit must be a whole number", "limit") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput("invalid_field", f"limit must be between 1 and {MAX_LIMIT}", "limit")
    return limit


async def list_chains(request: web.Request) -> web.StreamResponse:
    await _auditor(request)
    container = container_of(request)
    filters = chain_filter(dict(request.query))
    fmt, limit = _format(request), _limit(request)
    async with container.engine.connect() as conn:
        population = await count_chains(conn, filters)
        chains, next_cursor = await chain_page(conn, filters, cursor=request.query.get("cursor"), limit=limit)
    headers = {"X-Population": str(population)}
    if next_cursor:
        headers["X-Next-Cursor"] = next_cursor
    if fmt == "json":
        page: ChainPage = {
            "population": population,
            "count": len(chains),
            "next_cursor": next_cursor,
            # approvals.audit.chains builds each chain in ChainView's shape, typed as a plain dict.
            "chains": cast(list[ChainView], chains),
        }
        return web.json_response(page, headers=headers)
    if fmt == "jsonl":
        body = "".join(jsonl(chain) for chain in chains)
    else:
        body = csv_text([CSV_COLUMNS, *(csv_row(chain) for chain in chains)])
    return web.Response(text=body, content_type=MEDIA_TYPES[fmt], headers=headers)


async def one_chain(request: web.Request) -> web.Response:
    await _auditor(request)
    async with container_of(request).engine.connect() as conn:
        chain = await get_chain(conn, request.match_info["id"])
    return web.json_response(chain, dumps=lambda v: json.dumps(v, ensure_ascii=False))


def register(app: web.Application) -> None:
    app.router.add_get("/v1/audit/chains", list_chains)
    app.router.add_get("/v1/audit/chains/{id}", one_chain)
