"""Slack's moving parts, built once by the composition root: Web API client, Bolt app, handlers."""

from __future__ import annotations

from dataclasses import dataclass

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.dispatcher import OutboxDispatcher
from app.metrics import Metrics
from app.oidc.provider import OidcProvider
from app.slack import listeners
from app.slack.clicks import ClickProcessor, StepUpLinks
from app.slack.delivery import SlackDelivery
from app.slack.directory import SlackDirectory
from app.slack.reminders import SLACK_REMIND_DM, SlackReminders
from app.waiters import RequestWaiters
from approvals.delivery.outbox import SLACK_NOTIFY, SLACK_POST, SLACK_UPDATE
from approvals.requests.reminders import SLACK_REMIND

SLACK_TIMEOUT_SECONDS = 10


@dataclass
class SlackRuntime:
    client: AsyncWebClient
    bolt: AsyncApp
    directory: SlackDirectory
    clicks: ClickProcessor
    delivery: SlackDelivery


def build_slack(
    settings: Settings,
    *,
    engine: AsyncEngine,
    dispatcher: OutboxDispatcher,
    waiters: RequestWaiters,
    metrics: Metrics,
    oidc: OidcProvider | None = None,
    single_statements: AsyncEngine | None = None,
) -> SlackRuntime:
    """The Slack runtime; every client it makes honours SLACK_API_URL."""
    assert settings.slack_bot_token is not None
    client = AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        timeout=SLACK_TIMEOUT_SECONDS,
    )
    signing_secret = (
        settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
    )
    bolt = AsyncApp(
        client=client,
        signing_secret=signing_secret,
        request_verification_enabled=signing_secret is not None,
        process_before_response=False,
        raise_error_for_unhandled_request=False,
    )
    directory = SlackDirectory(client)

    def after_commit(request_id: str) -> None:
        waiters.notify(request_id)
        dispatcher.kick()

    step_up = StepUpLinks(issuer=oidc.issuer, public_url=settings.public_url) if oidc is not None else None
    clicks = ClickProcessor(
        engine=engine,
        client=client,
        directory=directory,
        after_commit=after_commit,
        step_up=step_up,
        single_statements=single_statements,
    )
    delivery = SlackDelivery(engine=engine, client=client, directory=directory, metrics=metrics)
    dispatcher.register(SLACK_NOTIFY, delivery.notify)
    dispatcher.register(SLACK_POST, delivery.post)
    dispatcher.register(SLACK_UPDATE, delivery.update)
    reminders = SlackReminders(engine=engine, client=client, directory=directory)
    dispatcher.register(SLACK_REMIND, reminders.fan_out)
    dispatcher.register(SLACK_REMIND_DM, reminders.direct_message)
    listeners.register(bolt, engine=engine, clicks=clicks, directory=directory)
    return SlackRuntime(client=client, bolt=bolt, directory=directory, clicks=clicks, delivery=delivery)
