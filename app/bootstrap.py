"""The composition root: builds the engine, policies, dispatcher and adapters from settings.

What it builds is held by an app.container.Container; this module knows how the parts are made and
wired from the settings (the outbox lease, for one), app.slack.runtime how Slack's are.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import socket
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine
from yarl import URL

from app.checkpoint_keys import CheckpointKeyError, load_checkpoint_key
from app.config import Settings
from app.container import Container as Container  # re-exported: what build_container returns
from app.database import build_engine, database_url_of
from app.delivery.callbacks import CALLBACK_CONCURRENCY, CallbackDelivery
from app.dispatcher import OutboxDispatcher
from app.embedded_postgres import EmbeddedDatabaseError
from app.migrate import schema_state, upgrade_to_head
from app.oidc.provider import OidcProvider
from app.ssrf import CallbackAllowList
from app.statement_timeout import unbounded
from app.witnesses import HttpWitness, SlackWitness, WitnessFile
from approvals.audit.witnessing import WITNESS_HTTP, WITNESS_SLACK
from approvals.delivery.outbox import CALLBACK
from approvals.policies.policy_file import LoadedPolicies, load_policies
from approvals.policies.versions import record_policy_version
from approvals.requests.reminders import schedule_missing_reminders

log = structlog.get_logger("approvals")


class StartupError(Exception):
    """The service cannot start; the message tells the operator what to do."""


async def prepare_database(engine: AsyncEngine, settings: Settings) -> None:
    """Migrate when the operator asked for it; otherwise refuse an out-of-date schema."""
    state = await schema_state(engine)
    if state.up_to_date:
        return
    if settings.migrate_on_start:
        await upgrade_to_head(engine)
        log.info("database_migrated", revision=state.head, previous=state.current)
        return
    where = "unmigrated" if state.current is None else f"at revision {state.current}"
    raise StartupError(
        f"the database is {where}, this version needs {state.head}: run `approvals migrate` "
        "(or set APPROVALS_AUTO_MIGRATE=true)"
    )


def operator_identity() -> str:
    """Who loaded the policy file: the OS account and host running the process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def check_mfa_has_idp(loaded: LoadedPolicies, settings: Settings) -> None:
    """A policy that demands MFA with no IdP to prove it is a startup error, never a silent bypass."""
    if settings.oidc_issuer and settings.oidc_client_id:
        return
    for rule in loaded.policy_set.policies:
        if rule.mfa.required:
            raise StartupError(
                f"policy {rule.display_name!r} in {loaded.path} requires MFA but no identity provider is "
                "configured: set APPROVALS_OIDC_ISSUER, APPROVALS_OIDC_CLIENT_ID and "
                "APPROVALS_OIDC_CLIENT_SECRET, or set mfa.required to false (to try it with a development "
                "identity provider, run `approvals serve --sandbox`)"
            )


def check_requesters_can_resolve(loaded: LoadedPolicies, settings: Settings) -> None:
    """A rule that needs requesters found in Slack, with no Slack to ask, would refuse every request."""
    if settings.slack_enabled:
        return
    for rule in loaded.policy_set.policies:
        if rule.requester_must_resolve:
            raise StartupError(
                f"policy {rule.display_name!r} in {loaded.path} has requester_must_resolve: true but Slack "
                "is not configured: set SLACK_BOT_TOKEN (and SLACK_SIGNING_SECRET or SLACK_APP_TOKEN), or "
                "set requester_must_resolve to false"
            )


async def build_container(
    settings: Settings, *, loaded: LoadedPolicies | None = None, loaded_by: str | None = None
) -> Container:
    """Load policies, open and check the database, and record the policy version in force."""
    loaded = loaded or load_policies(settings.policies)
    check_mfa_has_idp(loaded, settings)
    check_requesters_can_resolve(loaded, settings)
    try:
        checkpoint_key = load_checkpoint_key(settings)
    except CheckpointKeyError as exc:
        raise StartupError(str(exc)) from None
    pool: dict[str, Any] = {
        "statement_timeout_seconds": settings.statement_timeout_seconds,
        "pool_size": settings.database_pool_size,
        "max_overflow": settings.database_max_overflow,
    }
    try:
        url = database_url_of(settings)
    except EmbeddedDatabaseError as exc:
        raise StartupError(str(exc)) from None
    bounded = build_engine(url, **pool)
    engine = unbounded(bounded)
    try:
        await prepare_database(engine, settings)
        async with engine.begin() as conn:
            policies = await record_policy_version(conn, loaded, loaded_by=loaded_by or operator_identity())
            await schedule_missing_reminders(conn)
    except BaseException:
        await engine.dispose()
        raise
    container = Container(
        settings=settings,
        engine=engine,
        interactive=bounded,
        single_statements=build_engine(url, isolation_level="AUTOCOMMIT", **pool),
        policies=policies,
        allow_list=CallbackAllowList.parse(settings.callback_allow_hosts),
        dispatcher=OutboxDispatcher(bounded, lease=dt.timedelta(seconds=settings.outbox_lease_seconds)),
        checkpoint_key=checkpoint_key,
        oidc=build_oidc(settings),
    )
    callbacks = CallbackDelivery(engine=bounded, allow=container.allow_list, metrics=container.metrics)
    container.dispatcher.register(
        CALLBACK, callbacks.deliver, concurrency=CALLBACK_CONCURRENCY, prepare=callbacks.prepare
    )
    container.dispatcher.on_close(callbacks.close)
    if settings.slack_enabled:
        # Imported here so that Slack's libraries load only when Slack is configured: the CLI's
        # commands import this module too (a quarter second each on a slow host).
        from app.slack.runtime import build_slack

        container.slack = build_slack(
            settings,
            engine=container.interactive,
            dispatcher=container.dispatcher,
            waiters=container.waiters,
            metrics=container.metrics,
            oidc=container.oidc,
            single_statements=container.single_statements,
        )
    register_witnesses(container)
    return container


def register_witnesses(container: Container) -> None:
    """The witness file and the HTTP and Slack witnesses' outbox handlers, as configured."""
    settings = container.settings
    path = settings.witness_file_path
    container.witness_file = WitnessFile(path) if path is not None else None
    if settings.checkpoint_witness_url and settings.checkpoint_witness_secret is not None:
        http = HttpWitness(
            url=settings.checkpoint_witness_url, secret=settings.checkpoint_witness_secret.get_secret_value()
        )
        container.dispatcher.register(WITNESS_HTTP, http.deliver, concurrency=1)
    channel = settings.checkpoint_witness_slack_channel
    if channel and container.slack is not None:
        slack = SlackWitness(client=container.slack.client, channel=channel)
        container.dispatcher.register(WITNESS_SLACK, slack.deliver, concurrency=1)
    # Where copies of the checkpoints go: only the witness URL's host (its path or query may hold a token).
    log.info(
        "checkpoint_witnesses",
        file=str(path) if path is not None else None,
        http=URL(settings.checkpoint_witness_url).host if settings.checkpoint_witness_url else None,
        slack_channel=settings.checkpoint_witness_slack_channel,
    )


def build_oidc(settings: Settings) -> OidcProvider | None:
    """The IdP client for MFA step-up, when one is configured."""
    if not settings.oidc_enabled:
        return None
    assert settings.oidc_issuer is not None and settings.oidc_client_id is not None
    secret = settings.oidc_client_secret
    return OidcProvider(
        issuer=settings.oidc_issuer,
        client_id=settings.oidc_client_id,
        client_secret=secret.get_secret_value() if secret is not None else None,
        refetch_interval=settings.oidc_jwks_refetch_seconds,
    )
