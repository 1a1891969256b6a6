"""Slack's Web API, the part the service uses, on real HTTP (127.0.0.1, random port): the tests' Slack,
and the base of the sandbox's.

Point `AsyncWebClient(token=..., base_url=fake.api_url)` at it. Every call is recorded with its decoded
parameters; faults (429 with Retry-After, 5xx, `ok: false` errors) can be queued per method.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import CIMultiDict

TEAM_ID = "T0TEAM"
BOT_USER_ID = "UBOT"
BOT_ID = "BBOT"
WORKSPACE_URL = "https://example.slack.com/"

# Fields slack_sdk (or a form body) may send as JSON text; tests want to look inside them.
JSON_FIELDS = frozenset({"blocks", "attachments", "view", "metadata", "unfurls"})

Handler = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class Call:
    """One request the fake received; `failed` when a queued fault answered it."""

    method: str
    params: dict[str, Any]
    headers: CIMultiDict[str]
    failed: bool = False

    @property
    def token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else self.params.get("token")


@dataclass(frozen=True)
class Ephemeral:
    """A message only `user` sees, in `channel` (chat.postEphemeral, or a slash command's answer)."""

    id: str
    channel: str
    user: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]


@dataclass
class _Fault:
    status: int
    error: str
    retry_after: int | None
    remaining: int | None  # None: forever


class SandboxSlack:
    """The fake server; use `async with SandboxSlack() as fake:` or `await fake.start()` / `await fake.stop()`."""

    def __init__(self, *, wall_clock: bool = False, keep_calls: int | None = None) -> None:
        # wall_clock: message timestamps follow the real clock (as Slack's do), for code that asks for
        # history since a moment; by default they count up from 1700000000.000100, as tests expect.
        self.wall_clock = wall_clock
        # keep_calls: how many recorded calls to keep (the sandbox runs for days; tests keep them all).
        self.keep_calls = keep_calls
        # required_token: the bot token every Web API call must carry (the sandbox's); None (the tests')
        # takes any, as the tests' many clients each use their own.
        self.required_token: str | None = None
        # Where chat.getPermalink points: the sandbox page (set by sandbox mode), else Slack's form.
        self.permalink_base: str | None = None
        # Every message the bot posted, per channel, oldest first (metadata included); chat.update
        # edits them in place and conversations.history reads them.
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self._last_ts = 0.0
        # Tests fill these: users.info and users.lookupByEmail answer from `users`,
        # usergroups.users.list from `usergroups`.
        self.users: dict[str, dict[str, str]] = {}
        self.usergroups: dict[str, list[str]] = {}
        self.calls: list[Call] = []
        # What a person would see besides channel messages: ephemerals (chat.postEphemeral), the modal
        # open for each user (views.open, by the trigger_id of their interaction), each user's App Home
        # (views.publish). `triggers` maps a trigger_id the sandbox handed out to the user it was for.
        self.ephemerals: list[Ephemeral] = []
        self.modals: dict[str, dict[str, Any]] = {}
        self.home_views: dict[str, dict[str, Any]] = {}
        self.triggers: dict[str, str] = {}
        self.edited: set[tuple[str, str]] = set()
        self._response_targets: dict[
            str, tuple[str, str]
        ] = {}  # response id -> (user, channel)  # (channel, ts) of messages chat.update changed
        # Bumped on every change a person could see; `wait_for_change` wakes on it (the sandbox page's
        # live updates).
        self.version = 0
        self._state_changed = asyncio.Event()
        self._ephemeral_ids = itertools.count(1)
        self.responses: list[dict[str, Any]] = []
        self._response_ids: list[str] = []
        self._faults: dict[str, deque[_Fault]] = {}
        self._ts = itertools.count(100, 100)
        self._views = itertools.count(1)
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._base_url = ""

    # -- lifetime -----------------------------------------------------------------------------------

    def add_routes(self, router: web.UrlDispatcher, base_url: str, prefix: str = "") -> None:
        """Serve the Web API from another application's router under `prefix` (the sandbox mounts it
        at /sandbox/slack on the service's own port); `base_url` is where that application listens."""
        router.add_route("*", prefix + "/api/{method}", self._api)
        router.add_post(prefix + "/response_url/{id}", self._response_url)
        self._base_url = base_url.rstrip("/") + prefix

    async def start(self) -> SandboxSlack:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/response_url/{id}", self._response_url)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self._base_url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SandboxSlack:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def api_url(self) -> str:
        """The base_url for slack_sdk clients (it posts to `{base_url}{method}`)."""
        if not self._base_url:
            raise RuntimeError("SandboxSlack is not started")
        return f"{self._base_url}/api/"

    def response_url(self, response_id: str) -> str:
        """A response_url (as in an interaction payload) whose posts land in `responses`."""
        if not self._base_url:
            raise RuntimeError("SandboxSlack is not started")
        return f"{self._base_url}/response_url/{response_id}"

    # -- what tests ask -----------------------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def succeeded(self, method: str) -> list[Call]:
        """The calls to `method` that no queued fault answered."""
        return [call for call in self.calls_to(method) if not call.failed]

    def messages_in(self, channel: str) -> list[dict[str, Any]]:
        """The bot's messages in `channel` (a user id means the bot's DM with them), oldest first."""
        return list(self.messages.get(_dm_channel(channel), []))

    def responses_to(self, response_id: str) -> list[dict[str, Any]]:
        return [
            body for rid, body in zip(self._response_ids, self.responses, strict=True) if rid == response_id
        ]

    async def wait_for_calls(self, method: str, count: int, timeout: float = 30) -> list[Call]:
        """All calls to `method` (failed ones included) once there are at least `count`."""
        try:
            async with asyncio.timeout(timeout):
                while len(calls := self.calls_to(method)) < count:
                    # Each recorded call sets and replaces the event, so no wake-up is ever missed.
                    await self._changed.wait()
        except TimeoutError:
            got = len(self.calls_to(method))
            raise TimeoutError(f"expected {count} calls to {method} within {timeout}s, got {got}") from None
        return calls

    def fail(
        self,
        method: str,
        *,
        times: int | None = 1,
        status: int | None = None,
        error: str | None = None,
        retry_after: int = 1,
    ) -> None:
        """Queue a fault for `method`: by default one 429; `error=` alone is an HTTP 200 `ok: false`."""
        if status is None:
            status = 200 if error else 429
        if error is None:
            error = "ratelimited" if status == 429 else "internal_error"
        fault = _Fault(status, error, retry_after if status == 429 else None, times)
        self._faults.setdefault(method, deque()).append(fault)

    # -- what a person sees (the sandbox page) -------------------------------------------------------

    def touch(self) -> None:
        """Something visible changed: bump the version and wake whoever waits for a change."""
        self.version += 1
        changed, self._state_changed = self._state_changed, asyncio.Event()
        changed.set()

    async def wait_for_change(self, seen: int, timeout: float) -> int:
        """The version once it differs from `seen`, or `seen` again after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while self.version == seen:
                    await self._state_changed.wait()
        except TimeoutError:
            pass
        return self.version

    def new_trigger(self, user_id: str) -> str:
        """A trigger_id for an interaction of `user_id`'s: a modal opened with it shows to them."""
        trigger = f"{int(time.time())}.{secrets.token_hex(12)}"
        self.triggers[trigger] = user_id
        if len(self.triggers) > 1000:  # trigger_ids live 3 s on Slack; keep the newest only
            del self.triggers[next(iter(self.triggers))]
        return trigger

    def response_url_for(self, user_id: str, channel: str) -> str:
        """A response_url for an interaction of `user_id`'s in `channel`: what is posted to it shows to
        them there as an ephemeral, as Slack shows a response_url's default answer."""
        response_id = secrets.token_urlsafe(18)  # unguessable, as Slack's are: it is a capability
        self._response_targets[response_id] = (user_id, channel)
        if len(self._response_targets) > 1000:  # a response_url lives 30 minutes on Slack
            del self._response_targets[next(iter(self._response_targets))]
        return self.response_url(response_id)

    def ephemerals_for(self, user_id: str) -> list[Ephemeral]:
        return [e for e in self.ephemerals if e.user == user_id]

    def dismiss(self, user_id: str, ephemeral_id: str) -> bool:
        kept = [e for e in self.ephemerals if not (e.id == ephemeral_id and e.user == user_id)]
        dismissed = len(kept) != len(self.ephemerals)
        self.ephemerals = kept
        if dismissed:
            self.touch()
        return dismissed

    def add_ephemeral(self, channel: str, user_id: str, text: str, blocks: Any) -> Ephemeral:
        ephemeral = Ephemeral(
            id=f"e{next(self._ephemeral_ids)}",
            channel=_dm_channel(channel),
            user=user_id,
            ts=self._next_ts(),
            text=text,
            blocks=blocks if isinstance(blocks, list) else [],
        )
        self.ephemerals.append(ephemeral)
        if len(self.ephemerals) > 200:
            del self.ephemerals[0]
        self.touch()
        return ephemeral

    def close_modal(self, user_id: str, view_id: str | None = None) -> bool:
        view = self.modals.get(user_id)
        if view is None or (view_id is not None and view.get("id") != view_id):
            return False
        del self.modals[user_id]
        self.touch()
        return True

    # -- the HTTP side ------------------------------------------------------------------------------

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        if self.keep_calls is not None and len(self.calls) > self.keep_calls:
            del self.calls[: len(self.calls) - self.keep_calls]
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _take_fault(self, method: str) -> _Fault | None:
        queue = self._faults.get(method)
        if not queue:
            return None
        fault = queue[0]
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.popleft()
        return fault

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        try:
            params = await _read_params(request)
        except ValueError:
            return web.json_response({"ok": False, "error": "invalid_json"})
        if self.required_token is not None:
            auth = request.headers.get("Authorization", "")
            given = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else params.get("token")
            if not given:
                return web.json_response({"ok": False, "error": "not_authed"})
            if not secrets.compare_digest(str(given), self.required_token):
                return web.json_response({"ok": False, "error": "invalid_auth"})
        fault = self._take_fault(method)
        self._record(Call(method, params, CIMultiDict(request.headers), failed=fault is not None))
        if fault is not None:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return web.json_response(
                {"ok": False, "error": fault.error}, status=fault.status, headers=headers
            )
        handler = self.handlers().get(method)
        try:
            body = handler(params) if handler else {"ok": False, "error": "unknown_method"}
        except (ValueError, TypeError):  # a number that is not one, a list where text belongs
            body = {"ok": False, "error": "invalid_arguments"}
        return web.json_response(body)

    async def _response_url(self, request: web.Request) -> web.Response:
        response_id = request.match_info["id"]
        try:
            body = await _read_params(request)
        except ValueError:
            return web.Response(status=400, text="invalid_json")
        fault = self._take_fault("response_url")
        self._record(Call("response_url", body, CIMultiDict(request.headers), failed=fault is not None))
        if fault is not None:
            return web.Response(status=fault.status, text=fault.error)
        self._response_ids.append(response_id)
        self.responses.append(body)
        if self.keep_calls is not None and len(self.responses) > self.keep_calls:
            del self.responses[0], self._response_ids[0]
        target = self._response_targets.get(response_id)
        if target is not None and (body.get("text") or body.get("blocks")):
            self.add_ephemeral(target[1], target[0], str(body.get("text") or ""), body.get("blocks"))
        return web.Response(text="ok")

    # -- the methods --------------------------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        """The Web API methods answered, by name; a stand-in for more of Slack extends this table."""
        return {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.postEphemeral": self._post_ephemeral,
            "chat.getPermalink": self._permalink,
            "views.open": self._open_view,
            "views.publish": self._publish_view,
            "users.info": self._user_info,
            "users.lookupByEmail": self._user_by_email,
            "usergroups.users.list": self._usergroup_members,
            "conversations.open": self._open_dm,
            "conversations.history": self._history,
        }

    def _next_ts(self) -> str:
        if self.wall_clock:
            # Unique and increasing, like Slack's: never two messages with the same ts.
            self._last_ts = max(time.time(), self._last_ts + 0.000001)
            return f"{self._last_ts:.6f}"
        n = next(self._ts)
        return f"{1_700_000_000 + n // 1_000_000}.{n % 1_000_000:06d}"

    def _auth_test(self, _: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": WORKSPACE_URL,
            "team": "Example",
            "user": "approvals",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        # Posting to a user id lands in the bot's DM with them, as on Slack.
        if channel[0] in "UW":
            channel = "D" + channel[1:]
        ts = self._next_ts()
        message = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": ts}
        message |= {key: params[key] for key in ("text", "blocks") if key in params}
        stored = dict(message)
        if isinstance(params.get("metadata"), dict):
            stored["metadata"] = params["metadata"]
        kept = self.messages.setdefault(channel, [])
        kept.append(stored)
        if self.keep_calls is not None and len(kept) > self.keep_calls:
            # A long-running sandbox keeps each channel's newest messages only.
            for old in kept[: len(kept) - self.keep_calls]:
                self.edited.discard((channel, str(old["ts"])))
            del kept[: len(kept) - self.keep_calls]
        self.touch()
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _update(self, params: dict[str, Any]) -> dict[str, Any]:
        message = {key: params[key] for key in ("text", "blocks") if key in params}
        for stored in self.messages.get(str(params.get("channel") or ""), []):
            if stored["ts"] == params.get("ts"):
                for key, value in message.items():  # the metadata stays unless the update sends new
                    stored[key] = value
                if isinstance(params.get("metadata"), dict):
                    stored["metadata"] = params["metadata"]
                self.edited.add((str(params.get("channel")), str(stored["ts"])))
                self.touch()
        return {"ok": True, "channel": params.get("channel"), "ts": params.get("ts"), "message": message}

    def _permalink(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel") or ""), str(params.get("message_ts") or "")
        if self.permalink_base is not None:
            permalink = f"{self.permalink_base}?{urlencode({'c': channel, 'ts': ts})}"
            return {"ok": True, "channel": channel, "permalink": permalink}
        permalink = f"{WORKSPACE_URL}archives/{channel}/p{ts.replace('.', '')}"
        return {"ok": True, "channel": channel, "permalink": permalink}

    def _view(self, params: dict[str, Any]) -> dict[str, Any]:
        view = params.get("view")
        view = dict(view) if isinstance(view, dict) else {}
        return {"ok": True, "view": {**view, "id": f"V{next(self._views):08d}", "team_id": TEAM_ID}}

    def _open_view(self, params: dict[str, Any]) -> dict[str, Any]:
        answer = self._view(params)
        user = self.triggers.pop(str(params.get("trigger_id") or ""), None)
        if user is not None:
            self.modals[user] = answer["view"]
            self.touch()
        return answer

    def _publish_view(self, params: dict[str, Any]) -> dict[str, Any]:
        answer = self._view(params)
        user = str(params.get("user_id") or "")
        if user and (user in self.home_views or len(self.home_views) < 1000):
            self.home_views[user] = answer["view"]
            self.touch()
        return answer

    def _post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, user = str(params.get("channel") or ""), str(params.get("user") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not user:
            return {"ok": False, "error": "user_not_found"}
        ephemeral = self.add_ephemeral(channel, user, str(params.get("text") or ""), params.get("blocks"))
        return {"ok": True, "message_ts": ephemeral.ts}

    def _user_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user_id = str(params.get("user") or "")
        user = self.users.get(user_id)
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        name = user.get("name", user_id.lower())
        real_name = user.get("real_name", name)
        profile = {
            "email": user.get("email"),
            "real_name": real_name,
            "display_name": user.get("display_name", name),
        }
        return {
            "ok": True,
            "user": {
                "id": user_id,
                "team_id": TEAM_ID,
                "name": name,
                "real_name": real_name,
                "deleted": False,
                "is_bot": False,
                "profile": profile,
            },
        }

    def _user_by_email(self, params: dict[str, Any]) -> dict[str, Any]:
        """users.lookupByEmail: the user whose email this is, letter case aside (as Slack matches)."""
        email = str(params.get("email") or "").casefold()
        for user_id, user in self.users.items():
            if email and str(user.get("email") or "").casefold() == email:
                return self._user_info({"user": user_id})
        return {"ok": False, "error": "users_not_found"}

    def _usergroup_members(self, params: dict[str, Any]) -> dict[str, Any]:
        members = self.usergroups.get(str(params.get("usergroup") or ""))
        if members is None:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(members)}

    def _history(self, params: dict[str, Any]) -> dict[str, Any]:
        """conversations.history: newest first, `oldest`/`latest` exclusive unless `inclusive`, paged."""
        channel = str(params.get("channel") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        inclusive = _truthy(params.get("inclusive"))
        oldest = float(params.get("oldest") or 0)
        latest = float(params["latest"]) if params.get("latest") else None
        newest_first = sorted(self.messages.get(channel, []), key=lambda m: float(m["ts"]), reverse=True)

        def within(message: dict[str, Any]) -> bool:
            ts = float(message["ts"])
            after = ts >= oldest if inclusive else ts > oldest
            before = latest is None or (ts <= latest if inclusive else ts < latest)
            return after and before

        matching = [m for m in newest_first if within(m)]
        start = int(str(params.get("cursor") or "offset:0").removeprefix("offset:"))
        limit = int(params.get("limit") or 100)
        page = matching[start : start + limit]
        if not _truthy(params.get("include_all_metadata")):
            page = [{k: v for k, v in m.items() if k != "metadata"} for m in page]
        has_more = start + limit < len(matching)
        return {
            "ok": True,
            "messages": [dict(m) for m in page],
            "has_more": has_more,
            "pin_count": 0,
            "response_metadata": {"next_cursor": f"offset:{start + limit}" if has_more else ""},
        }

    def _open_dm(self, params: dict[str, Any]) -> dict[str, Any]:
        users = params.get("users") or ""
        first = (users if isinstance(users, list) else str(users).split(","))[0].strip()
        if not first:
            return {"ok": False, "error": "users_list_not_supplied"}
        return {"ok": True, "channel": {"id": "D" + first[1:]}}


def _dm_channel(channel: str) -> str:
    """Where a post to `channel` lands: a user id means the bot's DM with that user."""
    return "D" + channel[1:] if channel[:1] in ("U", "W") else channel


def _truthy(value: Any) -> bool:
    """A boolean Slack parameter as clients send it: true, "true" or "1" (slack_sdk sends 1)."""
    return value is True or str(value).lower() in ("1", "true")


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Query string and body (form or JSON) merged, with JSON-text fields decoded."""
    params: dict[str, Any] = dict(request.query)
    if request.can_read_body:
        if request.content_type == "application/json":
            body = await request.json()
            if isinstance(body, dict):
                params.update(body)
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            params.update(
                {key: value for key, value in (await request.post()).items() if isinstance(value, str)}
            )
    for key in JSON_FIELDS & params.keys():
        if isinstance(params[key], str):
            try:
                params[key] = json.loads(params[key])
            except ValueError:
                pass  # leave malformed JSON as sent: a test may be checking exactly that
    return params
