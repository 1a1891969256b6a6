"""The sandbox's HTTP surface on the service's own port: the page, its state and live updates, what a
person does on it, the stand-ins' APIs (/sandbox/slack, /sandbox/idp) and the demo agent's callback.

Everything under /sandbox answers only loopback clients addressed by a loopback name (unless the
operator passed --sandbox-remote); the page's actions and the demo agent's callback refuse cross-site
requests, and the Slack API wants the sandbox's bot token: a web page elsewhere in the same browser can
neither click Approve through the sandbox nor read or post its messages.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from app.http.ops import SANDBOX_ROUTE
from app.sandbox import page
from app.sandbox.blockkit import render_blocks, render_view
from app.sandbox.demo_agent import DemoAgentError
from app.sandbox.interactions import Answer, UnknownPerson
from app.sandbox.mode import AGENT_CALLBACK_PATH, IDP_PREFIX, NOT_SLACK, PREFIX, SLACK_PREFIX, Sandbox
from app.sandbox.mode import is_loopback_host as _loopback_name

SANDBOX: web.AppKey[Sandbox] = web.AppKey("sandbox", Sandbox)
# Set at shutdown: every live-update stream ends (the runner would otherwise wait for them).
_STREAMS_CLOSING = web.AppKey("sandbox_streams_closing", asyncio.Event)
_MAX_ACTION_BYTES = 64 * 1024
_HEARTBEAT_SECONDS = 15.0
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_STATIC = {
    "sandbox.js": ("application/javascript", page.SANDBOX_JS),
    "sandbox.css": ("text/css", page.SANDBOX_CSS),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def register(app: web.Application, sandbox: Sandbox) -> None:
    """Add the sandbox's routes to the service's application (before it starts)."""
    app[SANDBOX] = sandbox
    app[_STREAMS_CLOSING] = asyncio.Event()
    app.middlewares.append(_loopback_only)
    router = app.router
    sandbox.slack.add_routes(router, sandbox.internal_url, SLACK_PREFIX)
    sandbox.idp.add_routes(router, sandbox.settings.public_url, IDP_PREFIX)
    router.add_get(PREFIX, _page, name=SANDBOX_ROUTE)
    router.add_get(PREFIX + "/", _page)
    router.add_get(PREFIX + "/static/{name}", _static)
    router.add_get(PREFIX + "/state", _state)
    router.add_get(PREFIX + "/events", _events)
    router.add_post(PREFIX + "/act", _action(_act))
    router.add_post(PREFIX + "/submit", _action(_submit))
    router.add_post(PREFIX + "/close-modal", _action(_close_modal))
    router.add_post(PREFIX + "/command", _action(_command))
    router.add_post(PREFIX + "/home", _action(_home))
    router.add_post(PREFIX + "/dismiss", _action(_dismiss))
    router.add_post(PREFIX + "/demo/request", _action(_demo_request))
    router.add_post(AGENT_CALLBACK_PATH, _demo_callback)
    app.on_shutdown.append(_end_streams)


# -- guards ----------------------------------------------------------------------------------------------


@web.middleware
async def _loopback_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every /sandbox path: loopback clients that address it by a loopback name (the second check is
    DNS rebinding's: a page on evil.example whose name resolves to 127.0.0.1)."""
    if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
        if not request.app[SANDBOX].allow_remote and not (
            _loopback_name(request.remote or "") and _loopback_name(request.url.host or "")
        ):
            return web.json_response(
                {
                    "error": {
                        "code": "sandbox_loopback_only",
                        "message": "The sandbox answers on loopback only.",
                    }
                },
                status=403,
            )
    return await handler(request)


def _cross_site(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return True
    return request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none")


def _action(handler: Callable[[web.Request, Sandbox, dict[str, Any]], Awaitable[dict[str, Any]]]) -> Handler:
    """A page action: same-origin JSON only (a cross-site form or fetch cannot send that without a
    CORS preflight, which is never granted), parsed, and answered as JSON `{ok, error?, ...}`."""

    async def action(request: web.Request) -> web.StreamResponse:
        if _cross_site(request):
            return _refused(403, "Cross-site requests are not accepted.")
        if request.content_type != "application/json":
            return _refused(415, "Send JSON (Content-Type: application/json).")
        raw = await request.content.read(_MAX_ACTION_BYTES + 1)
        if len(raw) > _MAX_ACTION_BYTES:
            return _refused(413, "Too large.")
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return _refused(400, "The body is not JSON.")
        if not isinstance(body, dict):
            return _refused(400, "The body must be a JSON object.")
        try:
            result = await handler(request, request.app[SANDBOX], body)
        except UnknownPerson as exc:
            return _refused(400, f"There is no sandbox user {exc}.")
        except _BadField as exc:
            return _refused(400, str(exc))
        return web.json_response(result)

    return action


def _refused(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status)


class _BadField(Exception):
    pass


def _text(body: dict[str, Any], name: str, *, optional: bool = False) -> str:
    value = body.get(name)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise _BadField(f"{name} must be a string.")
    return value


def _answer(answer: Answer) -> dict[str, Any]:
    return {"ok": answer.ok, "error": answer.error, "errors": answer.errors}


async def _demo_callback(request: web.Request) -> web.StreamResponse:
    # The service posts callbacks server to server: a browser's cross-site POST is not one of them.
    if _cross_site(request):
        return _refused(403, "Cross-site requests are not accepted.")
    return await request.app[SANDBOX].demo.receive(request)


# -- the page ----------------------------------------------------------------------------------------------


async def _page(request: web.Request) -> web.StreamResponse:
    return web.Response(
        text=page.shell_html(banner=NOT_SLACK), content_type="text/html", headers=_PAGE_HEADERS
    )


async def _static(request: web.Request) -> web.StreamResponse:
    found = _STATIC.get(request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound()
    content_type, body = found
    return web.Response(text=body, content_type=content_type, headers=_PAGE_HEADERS)


async def _state(request: web.Request) -> web.StreamResponse:
    sandbox = request.app[SANDBOX]
    user_id = request.query.get("user") or sandbox.workspace.members[0].user_id
    try:
        sandbox.workspace.member(user_id)
    except KeyError:
        return _refused(400, f"There is no sandbox user {user_id}.")
    return web.json_response(state_of(sandbox, user_id), headers={"Cache-Control": "no-store"})


def state_of(sandbox: Sandbox, user_id: str) -> dict[str, Any]:
    """What `user_id` sees: the page's whole state (see the page's contract in app/sandbox/page.py)."""
    slack, workspace = sandbox.slack, sandbox.workspace
    names = {m.user_id: m.real_name for m in workspace.members}
    names |= {c.channel_id: c.name for c in workspace.channels}
    names |= {g.usergroup_id: g.handle for g in workspace.usergroups}
    dm = "D" + user_id[1:]
    conversations = [
        {"id": c.channel_id, "name": f"#{c.name}", "kind": "channel"} for c in workspace.channels
    ] + [{"id": dm, "name": "Approvals (app)", "kind": "dm"}]
    messages = {
        str(c["id"]): [
            {
                "ts": m["ts"],
                "html": render_blocks(
                    m.get("blocks") or [], fallback_text=str(m.get("text") or ""), names=names
                ),
                "edited": (c["id"], m["ts"]) in slack.edited,
            }
            for m in slack.messages_in(str(c["id"]))
        ]
        for c in conversations
    }
    ephemerals = [
        {
            "id": e.id,
            "conversation": e.channel,
            "ts": e.ts,
            "html": render_blocks(e.blocks, fallback_text=e.text, names=names),
        }
        for e in slack.ephemerals_for(user_id)
    ]
    home_view = slack.home_views.get(user_id)
    modal = slack.modals.get(user_id)
    return {
        "version": slack.version,
        "me": user_id,
        "team": {"id": "T0TEAM", "name": "Example (sandbox)"},
        "users": [
            {"id": m.user_id, "name": m.real_name, "title": m.title, "email": m.email}
            for m in workspace.members
        ],
        "conversations": conversations,
        "messages": messages,
        "ephemerals": ephemerals,
        "home": {"html": render_view(home_view, names=names)} if home_view else None,
        "modal": {
            "view_id": modal.get("id"),
            "title": _plain(modal.get("title")),
            "submit": _plain(modal.get("submit")) or "Submit",
            "close": _plain(modal.get("close")) or "Cancel",
            "html": render_view(modal, names=names),
        }
        if modal
        else None,
        "demo": {
            "requests": list(sandbox.demo.requests),
            "callbacks": [
                {
                    "received_at": c.received_at,
                    "request_id": c.request_id,
                    "status": c.status,
                    "verified": c.verified,
                    "body": c.body,
                }
                for c in sandbox.demo.callbacks
            ],
        },
    }


def _plain(value: Any) -> str:
    return str(value.get("text") or "") if isinstance(value, dict) else ""


# -- live updates --------------------------------------------------------------------------------------------


async def _events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the state's version whenever it changes (and a comment now and then, so
    that a dead connection is noticed)."""
    sandbox = request.app[SANDBOX]
    closing = request.app[_STREAMS_CLOSING]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    seen = sandbox.slack.version
    try:
        await response.write(f"data: {seen}\n\n".encode())
        while not closing.is_set():
            version = await sandbox.slack.wait_for_change(seen, _HEARTBEAT_SECONDS)
            if closing.is_set():
                break
            if version == seen:
                await response.write(b": still here\n\n")
                continue
            seen = version
            await response.write(f"data: {version}\n\n".encode())
    except ConnectionResetError:
        pass  # the page went away
    return response


async def _end_streams(app: web.Application) -> None:
    app[_STREAMS_CLOSING].set()
    app[SANDBOX].slack.touch()  # wakes every stream, which then sees `closing`


# -- what a person does ----------------------------------------------------------------------------------------


async def _act(request: web.Request, sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    ephemeral = body.get("ephemeral_id")
    if ephemeral is not None and not isinstance(ephemeral, str):
        raise _BadField("ephemeral_id must be a string or null.")
    answer = await sandbox.side.click(
        user_id=_text(body, "user"),
        conversation=_text(body, "conversation"),
        message_ts=_text(body, "message_ts", optional=True),
        action_id=_text(body, "action_id"),
        block_id=_text(body, "block_id", optional=True),
        value=_text(body, "value", optional=True),
        ephemeral_id=ephemeral,
    )
    return _answer(answer)


async def _submit(request: web.Request, sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    values = body.get("values")
    if not isinstance(values, dict) or not all(
        isinstance(inputs, dict) and all(isinstance(v, str) for v in inputs.values())
        for inputs in values.values()
    ):
        raise _BadField("values must be {block_id: {action_id: text}}.")
    answer = await sandbox.side.submit(
        user_id=_text(body, "user"), view_id=_text(body, "view_id"), values=values
    )
    return _answer(answer)


async def _close_modal(request: web.Request, sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    closed = sandbox.slack.close_modal(_text(body, "user"), _text(body, "view_id", optional=True) or None)
    return {"ok": closed}


async def _command(request: web.Request, sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    text = _text(body, "text").strip()
    if not text.startswith("/"):
        return {"ok": False, "error": "Only slash commands work here, such as /approvals."}
    answer = await sandbox.side.command(
        user_id=_text(body, "user"), conversation=_text(body, "conversation"), text=text
    )
    return _answer(answer)


async def _home(request: web.Request, sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    return _answer(await sandbox.side.open_home(user_id=_text(body, "user")))


async def _dismiss(request: web.Request, sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    return {"ok": sandbox.slack.dismiss(_text(body, "user"), _text(body, "ephemeral_id"))}


async def _demo_request(request: web.Request, sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    try:
        request_id = await sandbox.demo.post_sample()
    except DemoAgentError as exc:
        return {"ok": False, "error": f"The demo agent could not post: {exc}"}
    return {"ok": True, "request_id": request_id}
