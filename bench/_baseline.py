"""Baseline server for bench/intake.py: a bare aiohttp app doing one INSERT per POST.

It is what `POST /v1/requests` could cost at the least on the same stack (aiohttp, SQLAlchemy async
on psycopg 3): parse the JSON body, check it is an object with an action, INSERT one row into a
simple table in its own transaction, and answer 201 with the id. No auth, no policy, no audit, no
logging. The pool holds --pool-size connections (default 10, the service's pool_size) and, by
default, no overflow: requests beyond that wait for a connection instead of opening (and, on
return, closing) extra ones, which a fixed-size pool such as psycopg_pool's would not do either.

Usage (normally started by bench/intake.py):

    .venv/bin/python bench/_baseline.py --port PORT \
        --database-url postgresql://postgres@127.0.0.1:5432/bench_baseline [--pool-size 10] [--max-overflow 0]

`GET /readyz` answers 200 once the table exists and the database answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

ENGINE = web.AppKey("engine", AsyncEngine)

CREATE_TABLE = text(
    """
    CREATE TABLE IF NOT EXISTS intake (
        id text PRIMARY KEY,
        action text NOT NULL,
        title text NOT NULL,
        summary text NOT NULL DEFAULT '',
        params jsonb NOT NULL DEFAULT '{}',
        on_behalf_of text,
        links jsonb NOT NULL DEFAULT '[]',
        status text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """
)
INSERT = text(
    "INSERT INTO intake (id, action, title, summary, params, on_behalf_of, links, status) "
    "VALUES (:id, :action, :title, :summary, CAST(:params AS jsonb), :on_behalf_of, CAST(:links AS jsonb), "
    "'pending')"
)


async def post_request(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "invalid_json"}, status=400)
    if not isinstance(body, dict) or not isinstance(body.get("action"), str):
        return web.json_response({"error": "invalid_body"}, status=422)
    row = {
        "id": "req_" + secrets.token_hex(12),
        "action": body["action"],
        "title": str(body.get("title", "")),
        "summary": str(body.get("summary", "")),
        "params": json.dumps(body.get("params") or {}),
        "on_behalf_of": body.get("on_behalf_of"),
        "links": json.dumps(body.get("links") or []),
    }
    async with request.app[ENGINE].begin() as conn:
        await conn.execute(INSERT, row)
    return web.json_response({"id": row["id"], "status": "pending"}, status=201)


async def readyz(request: web.Request) -> web.Response:
    async with request.app[ENGINE].connect() as conn:
        await conn.execute(text("SELECT 1"))
    return web.json_response({"status": "ready"})


async def serve(port: int, database_url: str, pool_size: int, max_overflow: int) -> None:
    url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=max_overflow)
    async with engine.begin() as conn:
        await conn.execute(CREATE_TABLE)
    app = web.Application()
    app[ENGINE] = engine
    app.router.add_post("/v1/requests", post_request)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await stop.wait()
    finally:
        await runner.cleanup()
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--max-overflow", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.database_url, args.pool_size, args.max_overflow))


if __name__ == "__main__":
    main()
