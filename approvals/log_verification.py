"""`approvals audit verify` as one use case: every chain and every signed checkpoint, at once.

The chains and the checkpoints are independent checks of the same log, each consistent in its own
transaction, so they run side by side on two connections: PostgreSQL hashes chains in one
session while this process checks checkpoint signatures against the other's results.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from approvals.audit import VerifyReport, verify_all
from approvals.checkpoints import CheckpointProblem, Verifier, verify_checkpoints


@dataclass(frozen=True)
class LogVerdict:
    chains: VerifyReport
    checkpoints: int
    checkpoint_problem: CheckpointProblem | None

    @property
    def ok(self) -> bool:
        return self.chains.ok and self.checkpoint_problem is None


async def verify_audit_log(
    engine: AsyncEngine,
    *,
    verify: Verifier,
    exported: dict[str, Any] | None = None,
    hash_in_database: bool = True,
) -> LogVerdict:
    """Recompute every hash chain and every signed checkpoint (see verify_all, verify_checkpoints)."""

    async def chains() -> VerifyReport:
        async with engine.begin() as conn:
            return await verify_all(conn, hash_in_database=hash_in_database)

    async def checkpoints() -> tuple[int, CheckpointProblem | None]:
        async with engine.begin() as conn:
            return await verify_checkpoints(
                conn, verify=verify, exported=exported, hash_in_database=hash_in_database
            )

    if engine.dialect.name == "sqlite":  # one writer, one file: nothing to gain from a second session
        report = await chains()
        count, problem = await checkpoints()
    else:
        report, (count, problem) = await asyncio.gather(chains(), checkpoints())
    return LogVerdict(report, count, problem)
