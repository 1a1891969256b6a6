"""The figures of the auditor's report for one period: read-only questions over requests created in it.

Every figure but verification is about the *population*: the requests created in [start, end). Their
refused clicks, expiries and decisions count even when they happened after `end`, so every table
reconciles with the population. Verification covers the whole log, because a broken link anywhere
makes every figure suspect. Nothing here writes; the caller owns the (read-only) transaction.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Date, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.chains import get_chain
from approvals.audit.checkpoints import Verifier, verify_checkpoints
from approvals.audit.events import verify_all
from approvals.audit.verification import Progress
from approvals.db import db_now
from approvals.requests.lifecycle import STATUSES, Status
from approvals.tables import agents, audit_events, decisions, requests

REFUSAL_REASONS = ("not_approver", "self_approval", "not_pending", "already_decided")
# The weekly refusals chart: each of the rules' reasons, and "other" for the rest (failed MFA step-ups'
# reasons), so that the chart's series add up to the counts table's rows.
REFUSAL_SERIES = (*REFUSAL_REASONS, "other")
# How a final request ended, for the weekly chart: its status, and for approved and rejected, whether a
# person decided or the policy did at once.
DECISION_OUTCOMES = ("approved", "rejected", "allowed by policy", "denied by policy", "expired", "cancelled")
# What gather_report does, in order; its progress callback is called with each as it is done.
REPORT_STEPS = (
    "counts",
    "refused clicks",
    "expiries",
    "time to decision",
    "weekly figures",
    "MFA coverage",
    "verification",
    "sample chains",
)
# Refusals of a decision: a click the rules turned down, and (with MFA) a step-up that failed.
REFUSAL_KINDS = ("click_refused", "step_up_failed")
# Bucket edges in seconds for time-to-decision: the spans a person reasons in, not equal widths.
DECISION_BUCKETS: tuple[tuple[str, float], ...] = (
    ("< 1 min", 60),
    ("1-5 min", 5 * 60),
    ("5-15 min", 15 * 60),
    ("15-60 min", 3600),
    ("1-4 h", 4 * 3600),
    ("4-24 h", 24 * 3600),
    ("≥ 24 h", float("inf")),
)
# Tables list at most this many rows (the counts always cover everything): a report must stay openable.
LIST_LIMIT = 500
SAMPLE_SIZE = 20


@dataclass(frozen=True)
class PolicyCounts:
    policy: str
    total: int
    by_status: dict[str, int]
    outcomes: dict[str, int]  # succeeded | failed


@dataclass(frozen=True)
class Bucket:
    label: str
    upper_seconds: float
    count: int


@dataclass(frozen=True)
class DecisionTimes:
    """How long people took: request creation to the human decision that made it final."""

    count: int
    buckets: list[Bucket]
    median_seconds: float | None
    p90_seconds: float | None
    max_seconds: float | None


@dataclass(frozen=True)
class Week:
    """One ISO week (Monday to Sunday, UTC) and its count per series."""

    monday: dt.date
    counts: dict[str, int]

    @property
    def label(self) -> str:
        """2026-W44: ISO 8601's week, whose year is the ISO year (2026-W01 may start in December 2025)."""
        year, week, _ = self.monday.isocalendar()
        return f"{year}-W{week:02d}"

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Weekly:
    """Counts per ISO week and series, every week of the span listed (empty ones too), oldest first."""

    series: tuple[str, ...]
    weeks: list[Week]

    @property
    def total(self) -> int:
        return sum(week.total for week in self.weeks)

    def series_total(self, name: str) -> int:
        return sum(week.counts[name] for week in self.weeks)


@dataclass(frozen=True)
class Refusal:
    at: dt.datetime
    kind: str
    request_id: str
    title: str
    policy: str
    user_id: str | None
    user_name: str | None
    email: str | None
    choice: str | None
    reason: str


@dataclass(frozen=True)
class Expiry:
    request_id: str
    title: str
    agent: str
    policy: str
    created_at: dt.datetime
    expires_at: dt.datetime
    expired_at: dt.datetime | None
    approvals: int
    required: int


@dataclass(frozen=True)
class MfaPolicy:
    policy: str
    required: bool  # the policy rule the request was judged under demanded MFA
    decisions: int
    with_mfa: int


@dataclass(frozen=True)
class MfaCoverage:
    decisions: int
    with_mfa: int
    by_policy: list[MfaPolicy]

    @property
    def share(self) -> float | None:
        """with_mfa / decisions, None when no person decided anything (0 % would be misleading)."""
        return self.with_mfa / self.decisions if self.decisions else None

    @property
    def missing_where_required(self) -> int:
        return sum(p.decisions - p.with_mfa for p in self.by_policy if p.required)


@dataclass(frozen=True)
class Verification:
    ok: bool
    chains: int
    events: int
    checkpoints: int
    broken_chain: str | None = None
    broken_seq: int | None = None
    broken_checkpoint: int | None = None
    problem: str | None = None

    @property
    def summary(self) -> str:
        """The same words as `approvals audit verify`."""
        if self.broken_chain is not None:
            return f"BROKEN: chain {self.broken_chain} at event {self.broken_seq}: {self.problem}"
        if self.broken_checkpoint is not None:
            return f"BROKEN: checkpoint {self.broken_checkpoint}: {self.problem}"
        return f"OK: {self.chains} chains, {self.events} events and {self.checkpoints} checkpoints verified"


@dataclass(frozen=True)
class ReportData:
    start: dt.datetime
    end: dt.datetime
    generated_at: dt.datetime
    population: int
    by_status: dict[str, int]
    by_decider: dict[str, int]  # human | policy | agent | system | pending (not decided yet)
    by_outcome: dict[str, int]  # succeeded | failed | none
    by_policy: list[PolicyCounts]
    decision_times: DecisionTimes
    refusals_by_reason: dict[str, int]
    refusals: list[Refusal]
    refusals_total: int
    expiries: list[Expiry]
    expiries_total: int
    mfa: MfaCoverage
    verification: Verification
    decisions_by_week: Weekly
    refusals_by_week: Weekly
    sample: list[dict[str, Any]] = field(default_factory=list)
    sample_size: int = SAMPLE_SIZE


def _in_period(start: dt.datetime, end: dt.datetime) -> Any:
    return requests.c.created_at >= start, requests.c.created_at < end


async def _counts(
    conn: AsyncConnection, start: dt.datetime, end: dt.datetime
) -> tuple[dict[str, int], dict[str, int], dict[str, int], list[PolicyCounts]]:
    rows = await conn.execute(
        select(
            requests.c.policy_name,
            requests.c.status,
            requests.c.decided_by,
            requests.c.outcome_status,
            func.count().label("n"),
        )
        .where(*_in_period(start, end))
        .group_by(requests.c.policy_name, requests.c.status, requests.c.decided_by, requests.c.outcome_status)
    )
    by_status: Counter[str] = Counter(dict.fromkeys(STATUSES, 0))
    by_decider: Counter[str] = Counter()
    by_outcome: Counter[str] = Counter({"succeeded": 0, "failed": 0, "none": 0})
    policies: dict[str, tuple[Counter[str], Counter[str]]] = {}
    for row in rows:
        n = int(row.n)
        by_status[row.status] += n
        by_decider[row.decided_by or "pending"] += n
        by_outcome[row.outcome_status or "none"] += n
        statuses, outcomes = policies.setdefault(row.policy_name, (Counter(), Counter()))
        statuses[row.status] += n
        if row.outcome_status:
            outcomes[row.outcome_status] += n
    by_policy = [
        PolicyCounts(
            policy=name,
            total=sum(statuses.values()),
            by_status={s: statuses[s] for s in by_status},
            outcomes={o: outcomes[o] for o in ("succeeded", "failed")},
        )
        for name, (statuses, outcomes) in policies.items()
    ]
    by_policy.sort(key=lambda p: (-p.total, p.policy))
    return dict(by_status), dict(by_decider), dict(by_outcome), by_policy


def decision_histogram(seconds: list[float]) -> DecisionTimes:
    """Bucket durations by DECISION_BUCKETS and summarise them (median, 90th percentile, longest)."""
    counts = [0] * len(DECISION_BUCKETS)
    for value in seconds:
        index = next(i for i, (_label, upper) in enumerate(DECISION_BUCKETS) if value < upper)
        counts[index] += 1
    ordered = sorted(seconds)
    p90 = None
    if ordered:
        # Nearest-rank percentile: always a duration someone actually took, no interpolation.
        p90 = ordered[max(0, -(-len(ordered) * 9 // 10) - 1)]
    return DecisionTimes(
        count=len(ordered),
        buckets=[Bucket(label, upper, n) for (label, upper), n in zip(DECISION_BUCKETS, counts, strict=True)],
        median_seconds=statistics.median(ordered) if ordered else None,
        p90_seconds=p90,
        max_seconds=ordered[-1] if ordered else None,
    )


async def _decision_times(conn: AsyncConnection, start: dt.datetime, end: dt.datetime) -> DecisionTimes:
    # Each duration is needed here (for the median and p90), so it is computed here from the two times.
    result = await conn.stream(
        select(requests.c.created_at, requests.c.decided_at)
        .where(*_in_period(start, end), requests.c.decided_by == "human", requests.c.decided_at.is_not(None))
        .execution_options(yield_per=5000)
    )
    seconds = [max(0.0, (row.decided_at - row.created_at).total_seconds()) async for row in result]
    return decision_histogram(seconds)


async def _refusals(
    conn: AsyncConnection, start: dt.datetime, end: dt.datetime
) -> tuple[dict[str, int], list[Refusal], int]:
    # Refusals are audit events on the request's own chain: the chain id is the request id.
    joined = audit_events.join(requests, requests.c.id == audit_events.c.chain_id)
    scope = (audit_events.c.kind.in_(REFUSAL_KINDS), *_in_period(start, end))
    reason = audit_events.c.data["reason"].as_string()
    by_reason: Counter[str] = Counter(dict.fromkeys(REFUSAL_REASONS, 0))
    for row in await conn.execute(
        select(reason.label("reason"), func.count().label("n"))
        .select_from(joined)
        .where(*scope)
        .group_by(reason)
    ):
        by_reason[row.reason or "unknown"] += int(row.n)
    rows = await conn.execute(
        select(
            audit_events.c.created_at,
            audit_events.c.kind,
            audit_events.c.data,
            requests.c.id,
            requests.c.title,
            requests.c.policy_name,
        )
        .select_from(joined)
        .where(*scope)
        .order_by(audit_events.c.created_at, audit_events.c.id)
        .limit(LIST_LIMIT)
    )
    listed = [
        Refusal(
            at=row.created_at,
            kind=row.kind,
            request_id=row.id,
            title=row.title,
            policy=row.policy_name,
            user_id=_text(row.data.get("user_id")),
            user_name=_text(row.data.get("user_name")),
            email=_text(row.data.get("email")),
            choice=_text(row.data.get("choice")),
            reason=_text(row.data.get("reason")) or "unknown",
        )
        for row in rows
    ]
    return dict(by_reason), listed, sum(by_reason.values())


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _week_of(column: Any) -> Any:
    """The Monday of a timestamp's ISO week in UTC, whatever the session's time zone (PostgreSQL's
    date_trunc('week') starts weeks on Monday, as ISO 8601 does)."""
    return cast(func.date_trunc("week", func.timezone("UTC", column)), Date)


def monday_of(moment: dt.datetime) -> dt.date:
    day = moment.astimezone(dt.UTC).date()
    return day - dt.timedelta(days=day.weekday())


def decision_outcome(status: str, decided_by: str | None) -> str:
    """The DECISION_OUTCOMES entry of a final request."""
    if decided_by == "policy" and status == Status.APPROVED:
        return "allowed by policy"
    if decided_by == "policy" and status == Status.REJECTED:
        return "denied by policy"
    return str(status)


def weekly(
    series: tuple[str, ...], counts: Iterable[tuple[dt.date, str, int]], first: dt.date, last: dt.date
) -> Weekly:
    """Every week from the one of `first` to the one of `last` (and any later week a count falls in),
    with the counts (Monday, series, n) added up."""
    per_week: dict[dt.date, Counter[str]] = {}
    for monday, name, n in counts:
        if name not in series:
            raise ValueError(f"{name!r} is none of the series {series}")
        per_week.setdefault(monday, Counter())[name] += n
    week = first - dt.timedelta(days=first.weekday())
    end = max([last - dt.timedelta(days=last.weekday()), *per_week])
    weeks = []
    while week <= end:
        found = per_week.get(week, Counter())
        weeks.append(Week(week, {name: found[name] for name in series}))
        week += dt.timedelta(weeks=1)
    return Weekly(series, weeks)


async def _by_week(
    conn: AsyncConnection, start: dt.datetime, end: dt.datetime, now: dt.datetime
) -> tuple[Weekly, Weekly]:
    """Final states per week they were reached, by outcome; refused clicks per week, by reason.

    Both span the same weeks, so the two charts line up: from the period's first week to its last one
    (or this week, for a period not over yet), and on to the last week a decision or refusal of the
    population fell in.
    """
    decided = await conn.execute(
        select(
            _week_of(requests.c.decided_at).label("week"),
            requests.c.status,
            requests.c.decided_by,
            func.count().label("n"),
        )
        .where(
            *_in_period(start, end), requests.c.status != Status.PENDING, requests.c.decided_at.is_not(None)
        )
        .group_by("week", requests.c.status, requests.c.decided_by)
    )
    decisions_counts = [
        (row.week, decision_outcome(row.status, row.decided_by), int(row.n)) for row in decided
    ]
    reason = audit_events.c.data["reason"].as_string()
    refused = await conn.execute(
        select(
            _week_of(audit_events.c.created_at).label("week"), reason.label("reason"), func.count().label("n")
        )
        .select_from(audit_events.join(requests, requests.c.id == audit_events.c.chain_id))
        .where(audit_events.c.kind.in_(REFUSAL_KINDS), *_in_period(start, end))
        .group_by("week", reason)
    )
    refusal_counts = [
        (row.week, row.reason if row.reason in REFUSAL_REASONS else "other", int(row.n)) for row in refused
    ]
    first = monday_of(start)
    # The period's last instant is just before `end`; weeks still to come have nothing to show.
    last = monday_of(min(end - dt.timedelta(microseconds=1), now))
    last = max([last, *(week for week, _, _ in decisions_counts + refusal_counts)])
    return (
        weekly(DECISION_OUTCOMES, decisions_counts, first, last),
        weekly(REFUSAL_SERIES, refusal_counts, first, last),
    )


async def _expiries(conn: AsyncConnection, start: dt.datetime, end: dt.datetime) -> tuple[list[Expiry], int]:
    expired = (*_in_period(start, end), requests.c.status == Status.EXPIRED)
    total = int((await conn.execute(select(func.count()).select_from(requests).where(*expired))).scalar_one())
    approvals = (
        select(func.count())
        .where(decisions.c.request_id == requests.c.id, decisions.c.decision == "approve")
        .scalar_subquery()
    )
    rows = await conn.execute(
        select(
            requests.c.id,
            requests.c.title,
            agents.c.name.label("agent"),
            requests.c.policy_name,
            requests.c.created_at,
            requests.c.expires_at,
            requests.c.decided_at,
            requests.c.required_approvals,
            approvals.label("approvals"),
        )
        .select_from(requests.join(agents, agents.c.id == requests.c.agent_id))
        .where(*expired)
        .order_by(requests.c.created_at, requests.c.id)
        .limit(LIST_LIMIT)
    )
    listed = [
        Expiry(
            request_id=row.id,
            title=row.title,
            agent=row.agent,
            policy=row.policy_name,
            created_at=row.created_at,
            expires_at=row.expires_at,
            expired_at=row.decided_at,
            approvals=int(row.approvals),
            required=int(row.required_approvals),
        )
        for row in rows
    ]
    return listed, total


async def _mfa(conn: AsyncConnection, start: dt.datetime, end: dt.datetime) -> MfaCoverage:
    # Evidence is judged in Python: a decision without MFA holds JSON null, which SQL sees as NOT NULL.
    result = await conn.stream(
        select(decisions.c.mfa, requests.c.policy_name, requests.c.policy_rule)
        .select_from(decisions.join(requests, requests.c.id == decisions.c.request_id))
        .where(*_in_period(start, end))
        .execution_options(yield_per=5000)
    )
    totals: Counter[tuple[str, bool]] = Counter()
    with_mfa: Counter[tuple[str, bool]] = Counter()
    async for row in result:
        mfa_rule = (row.policy_rule or {}).get("mfa") or {}
        key = (row.policy_name, bool(mfa_rule.get("required")))
        totals[key] += 1
        if row.mfa:
            with_mfa[key] += 1
    by_policy = [
        MfaPolicy(policy=name, required=required, decisions=n, with_mfa=with_mfa[(name, required)])
        for (name, required), n in sorted(totals.items())
    ]
    return MfaCoverage(decisions=sum(totals.values()), with_mfa=sum(with_mfa.values()), by_policy=by_policy)


async def verify_log(conn: AsyncConnection, *, verify: Verifier) -> Verification:
    """Every hash chain and every signed checkpoint, as `approvals audit verify` checks them."""
    report = await verify_all(conn)
    checkpoints, problem = await verify_checkpoints(conn, verify=verify)
    brk = report.first_break
    if brk is not None:
        return Verification(
            False, report.chains, report.events, checkpoints, brk.chain_id, brk.seq, problem=brk.problem
        )
    if problem is not None:
        return Verification(
            False,
            report.chains,
            report.events,
            checkpoints,
            broken_checkpoint=problem.number,
            problem=problem.problem,
        )
    return Verification(True, report.chains, report.events, checkpoints)


async def _sample(
    conn: AsyncConnection, start: dt.datetime, end: dt.datetime, population: int, size: int
) -> list[dict[str, Any]]:
    """Every (population / size)-th request in creation order: deterministic, and spread over the period.

    Only ids are streamed to pick the sample; the chains themselves are assembled for the picked few.
    """
    if population <= 0 or size <= 0:
        return []
    count = min(size, population)
    wanted = {(i * population) // count for i in range(count)}  # distinct: population / count >= 1
    picked: list[str] = []
    result = await conn.stream(
        select(requests.c.id)
        .where(*_in_period(start, end))
        .order_by(requests.c.created_at, requests.c.id)
        .execution_options(yield_per=5000)
    )
    index = 0
    async for row in result:
        if index in wanted:
            picked.append(row.id)
            if len(picked) == len(wanted):
                break
        index += 1
    await result.close()
    return [await get_chain(conn, request_id) for request_id in picked]


async def read_only_snapshot(conn: AsyncConnection) -> None:
    """Make the caller's transaction one read-only snapshot, so every figure describes the same instant.

    Must be the transaction's first statement: READ COMMITTED would let counts and lists taken a
    moment apart disagree.
    """
    await conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


async def gather_report(
    conn: AsyncConnection,
    *,
    start: dt.datetime,
    end: dt.datetime,
    verify: Verifier,
    sample_size: int = SAMPLE_SIZE,
    progress: Progress | None = None,
) -> ReportData:
    """Everything the report shows for requests created in [start, end), and the log's verification.

    `progress`, if given, is called with each of REPORT_STEPS as it is done."""

    def done(step: str) -> None:
        if progress is not None:
            progress(step)

    generated_at = await db_now(conn)
    by_status, by_decider, by_outcome, by_policy = await _counts(conn, start, end)
    population = sum(by_status.values())
    done("counts")
    refusals_by_reason, refusals, refusals_total = await _refusals(conn, start, end)
    done("refused clicks")
    expiries, expiries_total = await _expiries(conn, start, end)
    done("expiries")
    decision_times = await _decision_times(conn, start, end)
    done("time to decision")
    decisions_by_week, refusals_by_week = await _by_week(conn, start, end, generated_at)
    done("weekly figures")
    mfa = await _mfa(conn, start, end)
    done("MFA coverage")
    verification = await verify_log(conn, verify=verify)
    done("verification")
    sample = await _sample(conn, start, end, population, sample_size)
    done("sample chains")
    return ReportData(
        start=start,
        end=end,
        generated_at=generated_at,
        population=population,
        by_status=by_status,
        by_decider=by_decider,
        by_outcome=by_outcome,
        by_policy=by_policy,
        decision_times=decision_times,
        refusals_by_reason=refusals_by_reason,
        refusals=refusals,
        refusals_total=refusals_total,
        expiries=expiries,
        expiries_total=expiries_total,
        mfa=mfa,
        verification=verification,
        decisions_by_week=decisions_by_week,
        refusals_by_week=refusals_by_week,
        sample=sample,
        sample_size=sample_size,
    )
