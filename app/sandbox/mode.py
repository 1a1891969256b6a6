"""Sandbox mode: the service runs against a local Slack and a dev identity provider served on its own
port, so that a newcomer can see a card, approve it with an MFA step-up and watch the agent hear back,
with no Slack workspace and no IdP.

The service is configured as for any Slack and any IdP (SLACK_API_URL, a bot token and signing secret,
APPROVALS_OIDC_*), with values made up at each start and pointing at /sandbox/slack and /sandbox/idp:
every production code path runs. The sandbox refuses to start when a real Slack or IdP is configured,
and answers only on the loopback interface unless the operator says otherwise.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import SecretStr
from sqlalchemy.engine import make_url

from app.config import Settings
from app.oidc.routes import CALLBACK_PATH
from app.sandbox.demo_agent import DemoAgent
from app.sandbox.identity_provider import DevIdentityProvider
from app.sandbox.interactions import SlackSide
from app.sandbox.slack_api import SandboxSlack
from app.sandbox.workspace import WORKSPACE, Workspace, idp_people, load_workspace

SandboxChoice = Literal["on", "auto", "off"]
PREFIX = "/sandbox"
SLACK_PREFIX = PREFIX + "/slack"
IDP_PREFIX = PREFIX + "/idp"
AGENT_CALLBACK_PATH = PREFIX + "/agent/callback"
CLIENT_ID = "approvals-sandbox"
NOT_SLACK = "Local sandbox: this is not Slack, and the sign-in is not a real identity provider."
_LOOPBACK_NAMES = {"localhost", "localhost."}


class SandboxRefused(Exception):
    """The sandbox cannot run with these settings; the message says what to change."""


def wanted(choice: SandboxChoice, settings: Settings) -> bool:
    """`auto` (what `make run` asks for): on when neither Slack nor an IdP is configured."""
    if choice == "auto":
        return not (_slack_configured(settings) or settings.oidc_issuer)
    return choice == "on"


def is_loopback_host(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Sandbox:
    """The stand-ins and the demo agent; `app.sandbox.routes.register` serves them."""

    settings: Settings
    workspace: Workspace
    slack: SandboxSlack
    idp: DevIdentityProvider
    side: SlackSide
    demo: DemoAgent
    allow_remote: bool
    url: str  # the page, as a browser reaches it
    internal_url: str  # this process, as it reaches itself

    async def close(self) -> None:
        await self.side.close()
        await self.demo.close()


def prepare(settings: Settings, *, allow_remote: bool = False) -> tuple[Settings, Sandbox]:
    """The service's settings in sandbox mode, and the sandbox they point at."""
    if _slack_configured(settings):
        raise SandboxRefused(
            "the sandbox never runs with Slack configured: unset SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET and "
            "SLACK_APP_TOKEN, or start without --sandbox"
        )
    if settings.oidc_issuer or settings.oidc_client_id:
        raise SandboxRefused(
            "the sandbox brings its own development identity provider: unset APPROVALS_OIDC_ISSUER and "
            "APPROVALS_OIDC_CLIENT_ID, or start without --sandbox"
        )
    # Where this process reaches itself (the Slack API, its own /slack/events, the demo agent's API).
    own = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # noqa: S104
    internal = f"http://{_url_host(own)}:{settings.port}"
    public = browser_url(settings)
    if not allow_remote:
        # A proxy or tunnel in front (a public URL elsewhere) may rewrite the Host header, and the
        # loopback checks would then let the world in: that too is --sandbox-remote's to allow.
        for what, host in (
            ("APPROVALS_HOST", settings.host),
            ("APPROVALS_PUBLIC_URL", urlsplit(public).hostname),
        ):
            if not is_loopback_host(host or ""):
                raise SandboxRefused(
                    f"the sandbox has no sign-in, so it only serves the loopback interface, and {what} is "
                    f"{host}: use 127.0.0.1, or pass --sandbox-remote to let anyone who can reach it act as "
                    "any sandbox user"
                )
    # Made-up decisions never land in a real audit log: the sandbox runs on the embedded server (the
    # local database `make run` and the CLI share), or on a database named for it.
    if settings.database_url is not None and "sandbox" not in (
        make_url(settings.database_url).database or ""
    ):
        raise SandboxRefused(
            "the sandbox records made-up decisions, so it only runs on the embedded local database or on a "
            "database of its own: unset APPROVALS_DATABASE_URL, or give it one whose name contains 'sandbox'"
        )
    signing_secret = secrets.token_hex(16)
    bot_token = "xoxb-sandbox-" + secrets.token_hex(12)
    client_secret = secrets.token_urlsafe(24)
    sandboxed = settings.model_copy(
        update={
            "public_url": public,
            "slack_bot_token": SecretStr(bot_token),
            "slack_signing_secret": SecretStr(signing_secret),
            "slack_api_url": f"{internal}{SLACK_PREFIX}/api/",
            "oidc_issuer": f"{public}{IDP_PREFIX}",
            "oidc_client_id": CLIENT_ID,
            "oidc_client_secret": SecretStr(client_secret),
            # The demo agent's callback is this process, on the loopback interface.
            "callback_allow_hosts": [*settings.callback_allow_hosts, "127.0.0.1/32"],
        }
    )
    slack = SandboxSlack(wall_clock=True, keep_calls=1000)
    slack.permalink_base = public + PREFIX
    slack.required_token = bot_token
    load_workspace(slack, WORKSPACE)
    idp = DevIdentityProvider(
        idp_people(WORKSPACE),
        client_id=CLIENT_ID,
        client_secret=client_secret,
        redirect_uris={public + CALLBACK_PATH},
    )
    side = SlackSide(
        slack=slack, workspace=WORKSPACE, events_url=f"{internal}/slack/events", signing_secret=signing_secret
    )
    demo = DemoAgent(api_url=internal, callback_url=internal + AGENT_CALLBACK_PATH, on_change=slack.touch)
    sandbox = Sandbox(
        settings=sandboxed,
        workspace=WORKSPACE,
        slack=slack,
        idp=idp,
        side=side,
        demo=demo,
        allow_remote=allow_remote,
        url=public + PREFIX,
        internal_url=internal,
    )
    return sandboxed, sandbox


def browser_url(settings: Settings) -> str:
    """Where a browser reaches the service: APPROVALS_PUBLIC_URL, unless it was left at its default
    while APPROVALS_PORT moved (then the loopback address on that port)."""
    if "public_url" in settings.model_fields_set:
        return settings.public_url.rstrip("/")
    return f"http://127.0.0.1:{settings.port}"


def _slack_configured(settings: Settings) -> bool:
    return bool(settings.slack_bot_token or settings.slack_signing_secret or settings.slack_app_token)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
