"""`approvals audit verify` as one use case: every chain, every signed checkpoint, and the rows beside them.

The chains and the checkpoints are independent checks of the same log, each consistent in its own
transaction, so they run side by side on separate connections: PostgreSQL hashes chains in one
session while this process checks checkpoint signatures against another's results. A third
compares the request rows with their chains (approvals.audit.consistency), which is what catches a
log rolled back to an older checkpoint while the service's other tables moved on.

Besides a broken link, verification reports findings (Finding): a request row that disagrees with
its chain always fails it; the checkpoints' timeline (the newest one's age, and gaps longer than
two checkpoint intervals, where heartbeats should have been) fails it only when strict, since a
service that was simply stopped leaves such gaps too. Callers may add findings of their own (a
witness's copy of the checkpoints, say) to the same list.

A caller that shows progress passes a plain callable (`Progress`): it is called once as each of
VERIFY_STEPS is done, with what that step checked, in words.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from approvals.audit.checkpoints import (
    CheckpointProblem,
    CheckpointTimeline,
    Verifier,
    checkpoint_timeline,
    verify_checkpoints,
)
from approvals.audit.consistency import Consistency, check_consistency
from approvals.audit.events import VerifyReport, verify_all

# A gap is reported when checkpoints are further apart than this many intervals (heartbeats come
# about one an interval, at most 1.75 apart: approvals.audit.checkpoints.HEARTBEAT_SHARE).
GAP_INTERVALS = 2
# The three independent checks verify_audit_log runs side by side; each reports itself done once.
VERIFY_STEPS = ("hash chains", "signed checkpoints", "request rows")

# Told what was just done ("hash chains: 1301 chains, 5120 events"); it must not block.
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Finding:
    """Something verification found besides a broken link. `fails`: always fails verification;
    otherwise it does only when strict. `code` names the kind, for --json readers."""

    code: str
    message: str
    fails: bool
    request_id: str | None = None
    checkpoint: int | None = None

    def fails_when(self, strict: bool) -> bool:
        return self.fails or strict

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"code": self.code, "message": self.message, "fails": self.fails}
        if self.request_id is not None:
            found["request_id"] = self.request_id
        if self.checkpoint is not None:
            found["checkpoint"] = self.checkpoint
        return found


@dataclass(frozen=True)
class LogVerdict:
    chains: VerifyReport
    checkpoints: int
    checkpoint_problem: CheckpointProblem | None
    findings: list[Finding] = field(default_factory=list)
    timeline: CheckpointTimeline | None = None  # None when no interval was given
    requests: int = 0  # request rows compared with their chains

    @property
    def broken(self) -> bool:
        """A chain or checkpoint does not verify."""
        return not self.chains.ok or self.checkpoint_problem is not None

    def passes(self, *, strict: bool = False, findings: list[Finding] | None = None) -> bool:
        """Nothing broken and no finding that fails (every finding fails when strict); judged on
        `findings` when given (the verdict's own plus a caller's), else on the verdict's own."""
        found = self.findings if findings is None else findings
        return not self.broken and not any(f.fails_when(strict) for f in found)

    @property
    def ok(self) -> bool:
        return self.passes()


async def verify_audit_log(
    engine: AsyncEngine,
    *,
    verify: Verifier,
    exported: dict[str, Any] | None = None,
    hash_in_database: bool = True,
    interval: dt.timedelta | None = None,
    as_of: dt.datetime | None = None,
    gaps_since: dt.datetime | None = None,
    progress: Progress | None = None,
) -> LogVerdict:
    """Recompute every hash chain and every signed checkpoint (see verify_all, verify_checkpoints),
    compare every request row with its chain (check_consistency), and, given the checkpoint
    `interval`, report the newest checkpoint's age and every gap as seen from `as_of` (default now),
    gaps between checkpoints only from `gaps_since` on (a log kept before heartbeats has idle gaps).
    `progress`, if given, hears of each of VERIFY_STEPS as it is done, in whatever order they end."""

    def done(what: str) -> None:
        if progress is not None:
            progress(what)

    async def chains() -> VerifyReport:
        async with engine.begin() as conn:
            report = await verify_all(conn, hash_in_database=hash_in_database)
        done(f"hash chains: {report.chains} chains, {report.events} events")
        return report

    async def checkpoints() -> tuple[int, CheckpointProblem | None]:
        async with engine.begin() as conn:
            found = await verify_checkpoints(
                conn, verify=verify, exported=exported, hash_in_database=hash_in_database
            )
        done(f"signed checkpoints: {found[0]} checkpoints")
        return found

    async def rows() -> tuple[Consistency, CheckpointTimeline | None]:
        async with engine.begin() as conn:
            consistency = await check_consistency(conn)
            timeline = None
            if interval is not None:
                timeline = await checkpoint_timeline(
                    conn, longest=interval * GAP_INTERVALS, as_of=as_of, since=gaps_since
                )
        done(f"request rows: {consistency.requests} requests")
        return consistency, timeline

    report, (count, problem), (consistency, timeline) = await asyncio.gather(chains(), checkpoints(), rows())
    findings = _consistency_findings(consistency)
    if timeline is not None and interval is not None:
        findings += timeline_findings(timeline, interval)
    return LogVerdict(report, count, problem, findings, timeline, consistency.requests)


def _consistency_findings(consistency: Consistency) -> list[Finding]:
    findings = [
        Finding(
            "row_disagrees_with_chain", f"request {p.request_id}: {p.problem}", True, request_id=p.request_id
        )
        for p in consistency.problems
    ]
    if consistency.more:
        findings.append(
            Finding(
                "row_disagrees_with_chain", "more requests disagree with their chains than are named", True
            )
        )
    return findings


def timeline_findings(timeline: CheckpointTimeline, interval: dt.timedelta) -> list[Finding]:
    """The checkpoint timeline's findings: none yet, the newest too old, a gap between two."""
    seconds = _seconds(interval)
    if timeline.newest is None:
        return [
            Finding(
                "no_checkpoint",
                f"no checkpoint yet: the service writes the first {seconds} s after it starts "
                "(`approvals audit checkpoint` writes one now)",
                False,
            )
        ]
    limit = f"more than {GAP_INTERVALS} checkpoint intervals of {seconds} s"
    findings = []
    for gap in timeline.gaps:
        if gap.until is None:
            message = (
                f"the newest checkpoint ({gap.after}) is {_seconds(gap.length)} s old at "
                f"{timeline.as_of.isoformat()}, {limit}: the service stopped, or newer checkpoints were removed"
            )
            findings.append(Finding("checkpoint_too_old", message, False, checkpoint=gap.after))
        else:
            message = (
                f"{_seconds(gap.length)} s passed between checkpoints {gap.after} and {gap.until}, {limit}"
            )
            findings.append(Finding("checkpoint_gap", message, False, checkpoint=gap.until))
    if timeline.more_gaps:
        findings.append(
            Finding("checkpoint_gap", f"{timeline.more_gaps} more gaps between checkpoints", False)
        )
    return findings


def _seconds(length: dt.timedelta) -> int:
    return round(length.total_seconds())
