"""What a running service holds: the parts the composition root (app/bootstrap.py) builds once at start.

A module of its own so that handlers can name the type (app/http/context.py keys the aiohttp
application with it) without importing the composition root, which imports every adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from app.checkpoint_keys import CheckpointKey
from app.config import Settings
from app.dispatcher import OutboxDispatcher
from app.http.auth import PrincipalCache
from app.metrics import Metrics
from app.oidc.provider import OidcProvider
from app.ssrf import CallbackAllowList
from app.waiters import RequestWaiters
from app.witnesses import WitnessFile
from approvals.policies.versions import ActivePolicies

if TYPE_CHECKING:
    # For the annotation only: the Slack runtime's click handling links to the step-up pages, whose
    # handlers reach this container through app.http.context.
    from app.slack.runtime import SlackRuntime


@dataclass
class Container:
    """Everything a running service holds, built once at start and passed to whoever needs it."""

    settings: Settings
    # The pool's connections bound each statement (APPROVALS_STATEMENT_TIMEOUT_SECONDS, PostgreSQL):
    # `interactive` is the pool as it is, for the agent API, Slack, step-up and deliveries, which must
    # answer; `engine` is the same pool with the bound lifted, for compliance reads and sweeps.
    engine: AsyncEngine
    interactive: AsyncEngine
    policies: ActivePolicies
    allow_list: CallbackAllowList
    dispatcher: OutboxDispatcher
    checkpoint_key: CheckpointKey
    waiters: RequestWaiters = field(default_factory=RequestWaiters)
    principals: PrincipalCache = field(default_factory=PrincipalCache)
    metrics: Metrics = field(default_factory=Metrics)
    slack: SlackRuntime | None = None
    oidc: OidcProvider | None = None
    witness_file: WitnessFile | None = None
    # PostgreSQL only: a pool of its own whose connections are in autocommit, for a use case that
    # writes in exactly one statement (then its own transaction, atomic as any): BEGIN and COMMIT
    # cost such a use case two of its three round trips. See approvals.requests.use_cases.is_one_statement.
    single_statements: AsyncEngine | None = None

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
        if self.single_statements is not None:
            await self.single_statements.dispose()

    def committed(self, request_id: str, enqueued: frozenset[str] | None = None) -> None:
        """After a commit that changed a request: wake its long-pollers, deliver its outbox rows now.

        `enqueued` (when the caller knows it) names the outbox kinds the commit queued: a dispatcher
        with no handler for any of them is not woken for a sweep that could deliver nothing.
        """
        self.waiters.notify(request_id)
        self.dispatcher.kick(enqueued)
