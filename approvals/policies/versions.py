"""Policy versions: every distinct policy file content that was loaded, recorded once, with its hash."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.events import append_event
from approvals.db import db_now, insert_ignoring_conflict
from approvals.policies.policy_file import LoadedPolicies, PolicySet
from approvals.tables import policy_versions

POLICY_CHAIN = "policies"


@dataclass(frozen=True)
class ActivePolicies:
    """The policy set requests are judged under, and the recorded version it came from."""

    policy_set: PolicySet
    version: int
    sha256: str
    snapshots: tuple[dict[str, Any], ...] = ()

    def rule_snapshot(self, rule_index: int | None) -> dict[str, Any] | None:
        """The rule as stored on each request it judged (computed once per load, not per request)."""
        return None if rule_index is None else self.snapshots[rule_index]


async def record_policy_version(
    conn: AsyncConnection, loaded: LoadedPolicies, *, loaded_by: str
) -> ActivePolicies:
    """Record the loaded content (once per distinct content) and return it as the active version."""
    now = await db_now(conn)
    inserted = await insert_ignoring_conflict(
        conn,
        policy_versions,
        {
            "sha256": loaded.sha256,
            "content": loaded.content,
            "source": loaded.path,
            "loaded_by": loaded_by,
            "loaded_at": now,
        },
        returning=policy_versions.c.id,
    )
    if inserted is not None:
        version = int(inserted.id)
        await append_event(
            conn,
            chain_id=POLICY_CHAIN,
            kind="policy_version_recorded",
            actor=loaded_by,
            data={"version": version, "sha256": loaded.sha256, "source": loaded.path},
        )
    else:
        version = int(
            (
                await conn.execute(
                    select(policy_versions.c.id).where(policy_versions.c.sha256 == loaded.sha256)
                )
            ).scalar_one()
        )
    return ActivePolicies(
        policy_set=loaded.policy_set,
        version=version,
        sha256=loaded.sha256,
        snapshots=tuple(rule.model_dump(mode="json") for rule in loaded.policy_set.policies),
    )
