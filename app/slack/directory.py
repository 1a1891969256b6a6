"""Who a Slack user is, and which user groups they belong to, asked of Slack with a short cache."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from approvals.requests.decisions import Clicker

# Group membership may change at any time: never trust an answer older than this.
GROUP_CACHE_SECONDS = 60.0
EMAIL_CACHE_SIZE = 10_000  # requester addresses remembered at most, least recently asked dropped first
# users.info answers that are about the user, not about Slack's health: asking again will not help.
UNKNOWN_USER_ERRORS = frozenset({"user_not_found", "user_not_visible"})


class UnknownSlackUser(Exception):
    """Slack says there is no such user (for us): a permanent answer, unlike a 5xx or ratelimited."""


class SlackDirectory:
    """users.info and usergroups.users.list, cached for at most GROUP_CACHE_SECONDS."""

    def __init__(self, client: AsyncWebClient, *, ttl: float = GROUP_CACHE_SECONDS) -> None:
        self._client = client
        self._ttl = ttl
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._users: dict[str, tuple[float, dict[str, Any]]] = {}
        # users.lookupByEmail answers by email, None where Slack knows nobody by it. Bounded: agents
        # choose these addresses, and each distinct one would otherwise stay for good.
        self._by_email: OrderedDict[str, tuple[float, dict[str, Any] | None]] = OrderedDict()

    async def group_members(self, group_id: str) -> frozenset[str]:
        cached = self._groups.get(group_id)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        try:
            response = await self._client.usergroups_users_list(usergroup=group_id)
            members = frozenset(response.get("users") or ())
        except SlackApiError as exc:
            if exc.response.get("error") in ("no_such_subteam", "subteam_not_found"):
                members = frozenset()
            else:
                raise
        self._groups[group_id] = (time.monotonic(), members)
        return members

    async def people(self, users: list[str], groups: list[str]) -> list[str]:
        """The listed users, then the members of the listed groups, each person once."""
        people = list(dict.fromkeys(users))
        for group in groups:
            people += [user for user in sorted(await self.group_members(group)) if user not in people]
        return people

    async def in_any_group(self, user_id: str, groups: list[str]) -> bool:
        """Whether the user is in one of the groups: stops at the first that has them."""
        for group in groups:
            if user_id in await self.group_members(group):
                return True
        return False

    async def groups_of(self, user_id: str, groups: list[str]) -> tuple[str, ...]:
        """Which of the groups have the user, in the rule's order, each once.

        Every group is looked at (the audit names them all), through the same cache as `in_any_group`:
        one usergroups.users.list per group at most every GROUP_CACHE_SECONDS.
        """
        found = []
        for group in dict.fromkeys(groups):
            if user_id in await self.group_members(group):
                found.append(group)
        return tuple(found)

    async def user(self, user_id: str) -> dict[str, Any]:
        cached = self._users.get(user_id)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        try:
            response = await self._client.users_info(user=user_id)
        except SlackApiError as exc:
            if exc.response.get("error") in UNKNOWN_USER_ERRORS:
                raise UnknownSlackUser(f"users.info: {exc.response.get('error')} for {user_id}") from exc
            raise
        user = dict(response.get("user") or {})
        self._users[user_id] = (time.monotonic(), user)
        return user

    async def clicker(self, user_id: str, team_id: str | None, groups: list[str]) -> Clicker:
        """The clicker's identity at click time: name and email from Slack, and which of `groups` have them."""
        user = await self.user(user_id)
        profile = user.get("profile") or {}
        return Clicker(
            user_id=user_id,
            team_id=team_id or user.get("team_id"),
            name=user.get("real_name") or profile.get("real_name") or user.get("name"),
            email=profile.get("email"),
            approver_groups=await self.groups_of(user_id, groups),
        )

    async def user_by_email(self, email: str) -> dict[str, Any] | None:
        """users.lookupByEmail: the Slack user with this email, or None when Slack has none (both
        cached like users.info). Any other failure is raised: whether it matters is the caller's call."""
        key = email.casefold()
        cached = self._by_email.get(key)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            self._by_email.move_to_end(key)
            return cached[1]
        try:
            response = await self._client.users_lookupByEmail(email=email)
            user: dict[str, Any] | None = dict(response.get("user") or {}) or None
        except SlackApiError as exc:
            if exc.response.get("error") != "users_not_found":
                raise
            user = None
        self._by_email[key] = (time.monotonic(), user)
        self._by_email.move_to_end(key)
        while len(self._by_email) > EMAIL_CACHE_SIZE:
            self._by_email.popitem(last=False)
        return user
