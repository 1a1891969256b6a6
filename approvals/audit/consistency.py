"""The operational tables checked against the audit chains: every request row is what its chain says.

The chains and checkpoints prove what the log holds, not that it holds everything: someone with the
database can delete the newest checkpoints, every event after the last one kept and set the chain
heads back, and what remains verifies. What they cannot easily rewind is the rest of the service's
state, written in the same transactions as those events. So every request row must have its chain
(a `request_created` event), and what the row says must be what the chain's events say:

- `payload_sha256` is the one its `request_created` event recorded, and so is the requester's
  identity (`requester_email`, `requester_slack_id`: the self-approval check reads them);
- `status` is the final state its one `request_<status>` event recorded, or pending without one;
- its `decisions` rows are exactly its `decision_recorded` events (approver and choice);
- its execution outcome (`outcome_*` columns) is what its one `outcome_recorded` event recorded;

and a chain that records a request (`request_created`) still has its row. A retention purge removes
a request's rows and its chain together (approvals/audit/retention.py), so a purged request is simply
in neither. Any disagreement is a finding naming the request.

One statement finds the disagreeing requests in a single snapshot (a request and its events are
written in one transaction, so no half-written request is ever seen): the relevant events grouped
per chain, each decision event joined to its decision row on the way, the decision rows grouped per
request with those no event records counted, and both joined with the requests. It runs where the
rows lie, reading and aggregating the events in parallel workers (on a 100,000-request log of
508,454 events it took about as long as hashing every chain), and sends back only the
disagreements; only those requests are then read again to name what differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, and_, case, exists, func, literal, null, or_, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals.audit.findings_sql import use_parallel_workers
from approvals.requests.lifecycle import FINAL, STATUSES, Status, event_kind
from approvals.tables import audit_events, decisions, requests

CREATED = "request_created"
DECISION = "decision_recorded"
OUTCOME = "outcome_recorded"
FINAL_KINDS = tuple(event_kind(status) for status in STATUSES if status in FINAL)
_FINAL_PREFIX = len("request_")
# How many disagreeing requests verification names; one is enough to fail it.
MOST_NAMED = 100


@dataclass(frozen=True)
class RowProblem:
    """A request whose rows and chain disagree, and how."""

    request_id: str
    problem: str


@dataclass(frozen=True)
class Consistency:
    requests: int  # request rows checked
    problems: list[RowProblem]  # at most MOST_NAMED, in request id order
    more: bool  # more disagreeing requests than those named

    @property
    def ok(self) -> bool:
        return not self.problems


def _count(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _text(key: str) -> Any:
    return audit_events.c.data[key].as_string()


def _relevant() -> Any:
    """The events that say something about a request row, each with just the fields that do: a JSON
    field is read only from the kind that has it (PostgreSQL's json type is parsed at every read)."""
    e = audit_events.c
    created, outcome, decided = e.kind == CREATED, e.kind == OUTCOME, e.kind == DECISION
    return (
        select(
            e.chain_id,
            e.kind,
            case((created, _text("payload_sha256"))).label("payload"),
            case((created, audit_events.c.data[("requester", "email")].as_string())).label("requester_email"),
            case((created, audit_events.c.data[("requester", "slack_user_id")].as_string())).label(
                "requester_slack"
            ),
            case((outcome, _text("status"))).label("outcome_status"),
            case((outcome, _text("detail"))).label("outcome_detail"),
            case((outcome, _text("external_ref"))).label("outcome_ref"),
            case((decided, _text("user_id"))).label("user_id"),
            case((decided, _text("choice"))).label("choice"),
        )
        .where(e.kind.in_((CREATED, DECISION, OUTCOME, *FINAL_KINDS)))
        .subquery("relevant")
    )


def _per_chain() -> Any:
    """Per chain, what its relevant events say, in one pass over them. Each decision event is joined to
    the decision row of the same approver and choice on the way, and counted when it has none. Every
    aggregate here can be computed in parts (no DISTINCT): PostgreSQL then reads the events and
    aggregates them in parallel workers, without sorting them."""
    ev, d = _relevant(), decisions.c
    created, final, outcome, decided = (
        ev.c.kind == CREATED,
        ev.c.kind.in_(FINAL_KINDS),
        ev.c.kind == OUTCOME,
        ev.c.kind == DECISION,
    )
    matching = and_(d.request_id == ev.c.chain_id, d.approver_id == ev.c.user_id, d.decision == ev.c.choice)
    return (
        select(
            ev.c.chain_id.label("chain_id"),
            _count(created).label("created"),
            func.max(ev.c.payload).label("payload"),
            func.max(ev.c.requester_email).label("requester_email"),
            func.max(ev.c.requester_slack).label("requester_slack"),
            _count(final).label("finals"),
            func.max(case((final, ev.c.kind))).label("final_kind"),
            _count(outcome).label("outcomes"),
            func.max(ev.c.outcome_status).label("outcome_status"),
            func.max(ev.c.outcome_detail).label("outcome_detail"),
            func.max(ev.c.outcome_ref).label("outcome_ref"),
            _count(decided).label("decision_events"),
            _count(and_(decided, d.id.is_(None))).label("events_without_row"),
        )
        .select_from(ev.outerjoin(decisions, matching))
        .group_by(ev.c.chain_id)
        .cte("per_chain")
    )


def _decision_rows() -> Any:
    """Per request, its decision rows and how many of them no decision event records."""
    d, e = decisions.c, audit_events.c
    recorded = exists().where(
        e.chain_id == d.request_id,
        e.kind == DECISION,
        _text("user_id") == d.approver_id,
        _text("choice") == d.decision,
    )
    return (
        select(d.request_id, func.count().label("rows"), _count(~recorded).label("rows_without_event"))
        .group_by(d.request_id)
        .subquery("decision_rows")
    )


def _disagreements(limit: int) -> Any:
    """Requests whose row disagrees with their chain, and chains recording a request with no row."""
    r = requests.c
    ev = _per_chain()
    counted = _decision_rows()
    rows = func.coalesce(counted.c.rows, 0)
    # Typed as the string it stands for, so the statement is the one a plain "pending" would give.
    pending = literal(Status.PENDING, String)
    chain_status = case((ev.c.finals == 0, pending), else_=func.substr(ev.c.final_kind, _FINAL_PREFIX + 1))
    columns = (
        ev.c.created,
        ev.c.payload,
        ev.c.requester_email,
        ev.c.requester_slack,
        ev.c.finals,
        chain_status.label("chain_status"),
        ev.c.outcomes,
        ev.c.outcome_status,
        ev.c.outcome_detail,
        ev.c.outcome_ref,
        ev.c.decision_events,
        ev.c.events_without_row,
    )
    of_rows = (
        select(
            r.id.label("request_id"),
            literal(True).label("has_row"),
            r.status,
            r.payload_sha256,
            r.requester_email.label("row_requester_email"),
            r.requester_slack_id.label("row_requester_slack"),
            r.outcome_status.label("row_outcome_status"),
            r.outcome_detail.label("row_outcome_detail"),
            r.outcome_external_ref.label("row_outcome_ref"),
            rows.label("decision_rows"),
            func.coalesce(counted.c.rows_without_event, 0).label("rows_without_event"),
            *columns,
        )
        .select_from(
            requests.outerjoin(ev, ev.c.chain_id == r.id).outerjoin(counted, counted.c.request_id == r.id)
        )
        .where(
            or_(
                ev.c.chain_id.is_(None),
                ev.c.created != 1,
                r.payload_sha256.is_distinct_from(ev.c.payload),
                # Who may not approve: the self-approval check reads these columns.
                r.requester_email.is_distinct_from(ev.c.requester_email),
                r.requester_slack_id.is_distinct_from(ev.c.requester_slack),
                ev.c.finals > 1,
                r.status.is_distinct_from(chain_status),
                ev.c.outcomes > 1,
                r.outcome_status.is_distinct_from(ev.c.outcome_status),
                r.outcome_detail.is_distinct_from(ev.c.outcome_detail),
                r.outcome_external_ref.is_distinct_from(ev.c.outcome_ref),
                # Every event has its row, every row its event, and as many of each: one for one.
                rows != ev.c.decision_events,
                ev.c.events_without_row != 0,
                counted.c.rows_without_event != 0,
            )
        )
    )
    of_chains = select(
        ev.c.chain_id.label("request_id"),
        literal(False).label("has_row"),
        *(null().label(name) for name in ("status", "payload_sha256")),
        *(null().label(name) for name in ("row_requester_email", "row_requester_slack")),
        *(null().label(name) for name in ("row_outcome_status", "row_outcome_detail", "row_outcome_ref")),
        literal(0).label("decision_rows"),
        literal(0).label("rows_without_event"),
        *columns,
    ).where(ev.c.created > 0, ~exists().where(r.id == ev.c.chain_id))
    both = union_all(of_rows, of_chains).subquery("disagreements")
    return select(both).order_by(both.c.request_id).limit(limit)


async def check_consistency(conn: AsyncConnection, *, most: int = MOST_NAMED) -> Consistency:
    """Every request row against its chain (see the module docstring); the disagreements, named."""
    await use_parallel_workers(conn)
    # The planner prices the per-request subquery high enough to JIT-compile the statement with
    # optimisation, which costs more than the whole statement then takes to run.
    await conn.execute(text("SET LOCAL jit = off"))
    found = (await conn.execute(_disagreements(most + 1))).mappings().all()
    total = int((await conn.execute(select(func.count()).select_from(requests))).scalar_one())
    named = found[:most]
    decided = {row["request_id"] for row in named if row["has_row"]}
    pairs = await _decision_pairs(conn, sorted(decided)) if decided else {}
    problems = [
        RowProblem(row["request_id"], "; ".join(_describe(row, pairs.get(row["request_id"]))))
        for row in named
    ]
    return Consistency(total, problems, len(found) > most)


async def _decision_pairs(
    conn: AsyncConnection, request_ids: list[str]
) -> dict[str, tuple[set[tuple[Any, Any]], list[tuple[Any, Any]]]]:
    """For these requests: their (approver, choice) decision rows and decision_recorded events."""
    pairs: dict[str, tuple[set[tuple[Any, Any]], list[tuple[Any, Any]]]] = {
        request_id: (set(), []) for request_id in request_ids
    }
    d, e = decisions.c, audit_events.c
    for row in await conn.execute(
        select(d.request_id, d.approver_id, d.decision).where(d.request_id.in_(request_ids))
    ):
        pairs[row.request_id][0].add((row.approver_id, row.decision))
    for row in await conn.execute(
        select(e.chain_id, _text("user_id"), _text("choice"))
        .where(e.chain_id.in_(request_ids), e.kind == DECISION)
        .order_by(e.chain_id, e.seq)
    ):
        pairs[row[0]][1].append((row[1], row[2]))
    return pairs


def _describe(row: Any, pairs: tuple[set[tuple[Any, Any]], list[tuple[Any, Any]]] | None) -> list[str]:
    """What differs between a request's row and its chain, in words an operator can act on."""
    if not row["has_row"]:
        return ["its chain records the request (request_created) but the request row is missing"]
    if row["created"] is None or not row["created"]:
        return [
            "the request row has no audit chain (no request_created event): "
            "its events were removed, or the row was written behind the service's back"
        ]
    found: list[str] = []
    if row["created"] > 1:
        found.append(f"its chain records {row['created']} request_created events")
    if row["payload_sha256"] != row["payload"]:
        found.append(
            f"payload_sha256 is {row['payload_sha256']} but its request_created event says {row['payload']}"
        )
    stored_requester = (row["row_requester_email"], row["row_requester_slack"])
    recorded_requester = (row["requester_email"], row["requester_slack"])
    if stored_requester != recorded_requester:
        found.append(
            f"the requester stored (email, Slack user) {stored_requester!r} differs from its "
            f"request_created event's {recorded_requester!r}"
        )
    if row["finals"] > 1:
        found.append(f"its chain records {row['finals']} final states")
    if row["status"] != row["chain_status"]:
        found.append(f"status is {row['status']!r} but its chain says {row['chain_status']!r}")
    found += _outcome_problems(row)
    if (
        row["decision_rows"] != row["decision_events"]
        or row["events_without_row"]
        or row["rows_without_event"]
    ):
        found.append(_decision_problem(row, pairs))
    return found or ["its row and chain disagree"]  # the statement saw a difference this cannot name


def _outcome_problems(row: Any) -> list[str]:
    if row["outcomes"] > 1:
        return [f"its chain records {row['outcomes']} outcomes"]
    stored = (row["row_outcome_status"], row["row_outcome_detail"], row["row_outcome_ref"])
    recorded = (row["outcome_status"], row["outcome_detail"], row["outcome_ref"])
    if stored == recorded:
        return []
    if not row["outcomes"]:
        return [
            f"an outcome ({stored[0]!r}) is stored but its chain records none (no outcome_recorded event)"
        ]
    return [f"the stored outcome {stored!r} differs from its outcome_recorded event {recorded!r}"]


def _decision_problem(row: Any, pairs: tuple[set[tuple[Any, Any]], list[tuple[Any, Any]]] | None) -> str:
    """Name the decision rows without an event and the events without a row."""
    if pairs is None:
        return f"its {row['decision_rows']} decision rows differ from its {row['decision_events']} decision events"
    stored, recorded = pairs
    parts = [
        f"decision by {approver} ({choice}) has no decision_recorded event"
        for approver, choice in sorted(stored - set(recorded), key=str)
    ]
    parts += [
        f"decision_recorded by {approver} ({choice}) has no decision row"
        for approver, choice in sorted(set(recorded) - stored, key=str)
    ]
    if len(recorded) != len(set(recorded)):
        parts.append("its chain records a decision by the same approver twice")
    return "; ".join(parts) or "its decision rows differ from its decision_recorded events"
