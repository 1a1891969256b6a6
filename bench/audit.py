"""Audit benchmark: verification, filtered chain queries and chain export on a large PostgreSQL log.

Usage:

    .venv/bin/python bench/audit.py [--requests 1000000] [--days 365] [--checkpoint-interval 300]
                                    [--samples 100] [--export-chains 100000] [--hash-sample 200000]
                                    [--reuse] [--keep] [--only verify,queries,export]
                                    [--database bench_audit]
                                    [--postgres postgresql://postgres@127.0.0.1:5432/postgres]

    # a quick check that every figure comes out (keep --days small with few requests, or the
    # checkpoint every 5 simulated minutes outnumbers the events and verify measures signatures):
    .venv/bin/python bench/audit.py --requests 20000 --days 7 --samples 30 --export-chains 5000

What it does, in one run on one PostgreSQL server:

1. seeds the database `bench_audit` (dropped and recreated; with --reuse a database seeded earlier
   with the same options, as its COMMENT says, is kept and only migrated to head): `approvals
   migrate` (app.migrate), then --requests requests spread over --days days ending now, as the
   service would have written them, bulk-loaded with COPY: 40 agents, 200 approvers, 14 policy rules
   in 12 policy versions; about 30% of requests allowed or denied by policy, the rest posted to Slack
   and approved (by one or two approvers), rejected, expired (with reminders), cancelled or, in the
   last day, still pending; decisions with MFA evidence where the rule asks for it, cards, refused
   clicks, delivery attempts, outcomes; the agents' and the policies' own chains; about 5 audit
   events per request, hash-chained with approvals.audit.events.event_hash and stored as the service stores
   them (ids in time order, so a request's events are spread through the table as in production), a
   chain_heads row per chain, and a signed checkpoint every --checkpoint-interval seconds of
   simulated time, as the scheduler makes them (the last one by approvals.audit.checkpoints.
   create_checkpoint itself); then VACUUM ANALYZE. The outbox, idempotency keys and the click inbox
   stay empty: nothing measured here reads them. 1,000,000 requests take about 20 minutes and 5.5 GB.
2. before each phase, reads the tables it uses into the OS page cache (pg_prewarm): the phases are
   measured warm, as on a server whose database fits in memory, not on whatever earlier work left
   in the cache (on a small VM the disk would be what is measured).
3. measures, with the service's own code on a SQLAlchemy engine from app.database.build_engine:
   - verify: approvals.audit.verification.verify_audit_log (what `approvals audit verify` does:
     verify_all and verify_checkpoints side by side on two connections, PostgreSQL hashing the log),
     events/s over the whole log, then the same with hash_in_database=False (`--in-process`);
     against baselines in the same run: SHA-256 in a tight loop over the same bytes verification
     hashes (each event's canonical body, built beforehand from --hash-sample events, and the
     checkpoints' running hash over its hash), and a bare read of every event row as the in-process
     path reads it (id order, JSON as text) through a raw psycopg server-side cursor;
   - filtered query: what `GET /v1/audit/chains` does for one page (count_chains, then chain_page
     with limit 100, on a pooled connection), --samples times per filter with random values: agent,
     policy, approver (Slack id or email), status, a date range of 1 to 30 days, and agent + status
     + 30 days together; p50/p95/max per filter; against a bare indexed SELECT (a request by primary
     key and its events by chain, raw psycopg);
   - export: what `approvals audit export --format jsonl` does (count_chains, then
     approvals.audit.chain_json.iter_chain_texts, each chain's JSON written by PostgreSQL, to /dev/null),
     unfiltered, stopping after --export-chains chains (0: all); chains/s; then the same chains
     assembled in Python (iter_chains + app.chain_formats.jsonl, the chains API's path); against bare reads of the same rows
     (requests in export order, then each page's decisions, cards, attempts and events by request
     id; raw psycopg, nothing assembled or serialised).
4. prints the figures with their ratios to the baselines and the targets (verify >= 200,000
   events/s, filtered query p95 < 200 ms, export >= 10,000 chains/s), and for each phase the CPU
   used by this process, by its PostgreSQL backend and by everything else on the host (other work on
   a small machine skews every figure).

It measures and never asserts: the exit status is 0 whatever the figures (1 if it could not run, 2
if verification did not pass, since then the seed, not the code, is wrong). The database is dropped
at the end unless --keep or --reuse is given.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import datetime as dt
import hashlib
import heapq
import json
import os
import random
import resource
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from _common import cpu_seconds, database_url, fmt, host_cpu_seconds, recreate_databases
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg import sql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.chain_formats import compact_json
from app.checkpoint_keys import CheckpointKey
from app.database import build_engine
from app.migrate import upgrade_to_head
from approvals.audit.chain_json import iter_chain_texts
from approvals.audit.chains import ChainFilter, chain_page, count_chains, iter_chains
from approvals.audit.checkpoints import SCHEME_DIGEST, checkpoint_body, create_checkpoint
from approvals.audit.events import GENESIS_HASH, canonical_json, canonical_text, event_hash, format_time
from approvals.audit.verification import verify_audit_log
from approvals.policies.policy_file import LoadedPolicies, evaluate, parse_policies

DEFAULT_DB = "bench_audit"
SEED_VERSION = 1  # bump when the generated data changes, so --reuse reseeds
RNG_SEED = 20261127
# A fixed test key: the seeded checkpoints are signed with it and verified against it.
CHECKPOINT_SEED = hashlib.sha256(b"bench/audit.py checkpoint key").digest()
CHECKPOINT_LAG = dt.timedelta(seconds=30)  # approvals.audit.checkpoints.DEFAULT_LAG
TARGET_VERIFY_EPS = 200_000
TARGET_QUERY_P95_MS = 200.0
TARGET_EXPORT_CPS = 10_000
PAGE_LIMIT = 100  # GET /v1/audit/chains default limit
EXPORT_PAGE = 500  # approvals.audit.chains.PAGE


# ---------------------------------------------------------------------------------------------------
# The world the seeded data describes: agents, approvers, policies.

ACTIONS = [
    "send_offer_letter",
    "refund_customer",
    "deploy_production",
    "rotate_credentials",
    "grant_access",
    "wire_transfer",
    "send_email_campaign",
    "create_vendor",
    "update_pricing",
    "close_account",
    "read_customer",
    "read_invoice",
    "export_report",
    "delete_record",
    "drop_table",
    "archive_ticket",  # no rule: denied by default
]


def policy_yaml(revision: int, finance: str, security: str, users: list[str]) -> str:
    """Fourteen rules covering users and usergroups, one and two approvers, MFA, reminders, DMs."""
    u = users

    def people(*indexes: int) -> str:
        return "[" + ", ".join(u[i] for i in indexes) + "]"

    return f"""\
# bench/audit.py policies, revision {revision}
default: deny
policies:
  - action: send_offer_letter
    decision: require_approval
    approvers: {{users: {people(0, 1, 2)}}}
    channel: C0HIRING
    expires_in: 24h
    remind_at: [50%, 90%]
    redact: [params.salary]
  - name: refunds
    action: refund_customer
    decision: require_approval
    approvers: {{usergroups: [{finance}]}}
    required_approvals: 2
    dm_approvers: true
    expires_in: 4h
  - name: production deploys
    action: deploy_production
    decision: require_approval
    approvers: {{users: {people(3, 4, 5, 6)}}}
    mfa: {{required: true, max_age: 300}}
    channel: C0DEPLOY
    expires_in: 2h
    remind_at: [30m]
  - action: rotate_credentials
    decision: require_approval
    approvers: {{usergroups: [{security}]}}
    mfa: {{required: true}}
    channel: C0SECURITY
    expires_in: 8h
  - action: grant_access
    decision: require_approval
    approvers: {{users: {people(7, 8, 9, 10, 11)}, usergroups: [{security}]}}
    channel: C0ACCESS
    expires_in: 24h
    remind_at: [50%]
  - name: payments
    action: wire_transfer
    decision: require_approval
    approvers: {{usergroups: [{finance}]}}
    required_approvals: 2
    mfa: {{required: true, max_age: 600}}
    channel: C0PAYMENTS
    expires_in: 4h
    redact: [params.account]
  - action: send_email_campaign
    decision: require_approval
    approvers: {{users: {people(12, 13)}}}
    channel: C0MARKETING
    expires_in: 48h
    remind_at: [50%]
  - action: create_vendor
    decision: require_approval
    approvers: {{users: {people(14, 15, 16)}}}
    channel: C0PROCUREMENT
    expires_in: 72h
  - action: update_pricing
    decision: require_approval
    approvers: {{users: {people(17, 18)}}}
    dm_approvers: true
    expires_in: 12h
  - action: close_account
    decision: require_approval
    approvers: {{users: {people(19, 20, 21)}}}
    channel: C0SUPPORT
    expires_in: 24h
  - action: read_*
    decision: allow
  - action: export_report
    decision: allow
  - action: delete_*
    decision: deny
  - action: drop_*
    decision: deny
"""


@dataclass(frozen=True)
class Person:
    user_id: str
    name: str
    email: str
    team_id: str


@dataclass(frozen=True)
class Agent:
    id: str
    name: str
    owner: str
    actions: tuple[str, ...]


@dataclass(frozen=True)
class Version:
    id: int
    loaded_at: dt.datetime
    loaded: LoadedPolicies


@dataclass
class World:
    start: dt.datetime
    end: dt.datetime
    agents: list[Agent]
    agent_weights: list[float]
    approvers: list[Person]
    groups: dict[str, list[Person]]
    requesters: list[str]
    versions: list[Version]
    snapshots: list[dict[str, Any]]


def hexid(rng: random.Random, prefix: str) -> str:
    """approvals.identity.keys.new_id's shape (prefix + 24 hex digits), from a seeded generator."""
    return f"{prefix}{rng.getrandbits(96):024x}"


def build_world(rng: random.Random, start: dt.datetime, end: dt.datetime) -> World:
    first = ["ada", "ben", "chloe", "dan", "eve", "farid", "grace", "hugo", "ines", "jon", "kim", "lea"]
    last = ["ng", "smith", "garcia", "ito", "muller", "rossi", "dubois", "kowalski", "silva", "okafor"]
    approvers = []
    for i in range(200):
        given, family = first[i % len(first)], last[(i // len(first)) % len(last)]
        approvers.append(
            Person(
                user_id=f"U0{i:07d}",
                name=f"{given}.{family}{i}",
                email=f"{given}.{family}{i}@example.com",
                team_id="T0EXAMPLE",
            )
        )
    groups = {"S0FINANCE": approvers[40:60], "S0SECURITY": approvers[60:75]}
    users = [p.user_id for p in approvers]
    agents = []
    for i in range(40):
        actions = tuple(sorted(rng.sample(ACTIONS, rng.randint(2, 5))))
        agents.append(Agent(hexid(rng, "agt_"), f"agent-{i:03d}", f"owner{i % 15}@example.com", actions))
    weights = [1.0 / (i + 1) ** 0.7 for i in range(len(agents))]  # a few busy agents, a long tail
    versions = []
    for revision in range(12):
        text = policy_yaml(revision + 1, "S0FINANCE", "S0SECURITY", users)
        loaded = parse_policies(text, "policies.yml")
        at = start - dt.timedelta(days=1) if revision == 0 else start + (end - start) * revision / 12
        versions.append(Version(revision + 1, at, loaded))
    snapshots = [rule.model_dump(mode="json") for rule in versions[0].loaded.policy_set.policies]
    requesters = [f"{first[i % 12]}.{last[i % 10]}{i}@example.com" for i in range(500)]
    return World(start, end, agents, weights, approvers, groups, requesters, versions, snapshots)


# ---------------------------------------------------------------------------------------------------
# COPY text format.

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def cell(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_ESCAPES)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


def stored_json(value: Any) -> str:
    """What the service writes into a JSON column (app.database.build_engine's json_serializer)."""
    return canonical_text(value)


def line(values: tuple[Any, ...]) -> str:
    return "\t".join(cell(v) for v in values) + "\n"


class CopyBuffer:
    """COPY rows for one table, kept as text until the parent rows they reference are committed."""

    def __init__(self, table: str, columns: list[str]) -> None:
        self.table, self.columns = table, columns
        self.chunks: list[str] = []
        self.rows = 0

    def add(self, *values: Any) -> None:
        self.chunks.append(line(values))
        self.rows += 1

    def load(self, conn: psycopg.Connection[Any]) -> None:
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(self.table), sql.SQL(", ").join(map(sql.Identifier, self.columns))
        )
        with conn.cursor() as cur, cur.copy(statement) as copy:
            for i in range(0, len(self.chunks), 5000):
                copy.write("".join(self.chunks[i : i + 5000]))
        conn.commit()
        self.chunks = []


class CopyStream:
    """A COPY kept open for the whole seeding, written as rows come (a table nothing references)."""

    def __init__(self, conn: psycopg.Connection[Any], table: str, columns: list[str]) -> None:
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        self.conn = conn
        self.cursor = conn.cursor()
        self._copy_cm = self.cursor.copy(statement)
        self.copy = self._copy_cm.__enter__()
        self.pending: list[str] = []
        self.rows = 0

    def add(self, *values: Any) -> None:
        self.pending.append(line(values))
        self.rows += 1
        if len(self.pending) >= 5000:
            self.flush()

    def add_line(self, text: str) -> None:
        self.pending.append(text)
        self.rows += 1
        if len(self.pending) >= 5000:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.copy.write("".join(self.pending))
            self.pending = []

    def close(self) -> None:
        self.flush()
        self._copy_cm.__exit__(None, None, None)
        self.cursor.close()
        self.conn.commit()


# ---------------------------------------------------------------------------------------------------
# Seeding.

EVENT_COLUMNS = ["id", "chain_id", "seq", "kind", "actor", "data", "created_at", "prev_hash", "hash"]
REQUEST_COLUMNS = [
    "id",
    "agent_id",
    "action",
    "title",
    "summary",
    "params",
    "payload_sha256",
    "on_behalf_of",
    "links",
    "callback_url",
    "status",
    "decided_by",
    "reason",
    "policy_name",
    "policy_version_id",
    "policy_rule",
    "required_approvals",
    "created_at",
    "expires_at",
    "decided_at",
    "outcome_status",
    "outcome_detail",
    "outcome_external_ref",
    "outcome_at",
    "delivery_error",
]
DECISION_COLUMNS = [
    "id",
    "request_id",
    "approver_id",
    "decision",
    "reason",
    "approver_name",
    "approver_email",
    "team_id",
    "action_ts",
    "policy_version_id",
    "mfa",
    "created_at",
]
MESSAGE_COLUMNS = ["id", "request_id", "destination", "channel", "ts", "permalink", "created_at"]
ATTEMPT_COLUMNS = [
    "id",
    "outbox_id",
    "request_id",
    "kind",
    "attempt",
    "target",
    "started_at",
    "latency_ms",
    "status_code",
    "result",
    "error",
]
CHECKPOINT_COLUMNS = [
    "number",
    "created_at",
    "first_event_id",
    "last_event_id",
    "event_count",
    "total_events",
    "running_hash",
    "key_id",
    "signature",
    "scheme",
]


@dataclass(order=True)
class Pending:
    """An event waiting in time order for its id."""

    at: dt.datetime
    order: int
    chain_id: str = field(compare=False)
    seq: int = field(compare=False)
    kind: str = field(compare=False)
    actor: str = field(compare=False)
    data: str = field(compare=False)  # as stored
    prev_hash: str = field(compare=False)
    hash: str = field(compare=False)


class EventLog:
    """Assigns ids in time order, writes events, and signs a checkpoint whenever the scheduler would."""

    def __init__(
        self,
        stream: CopyStream,
        checkpoints: CopyBuffer,
        key: CheckpointKey,
        first_boundary: dt.datetime,
        interval: dt.timedelta,
    ) -> None:
        self.stream, self.checkpoints, self.key = stream, checkpoints, key
        self.heap: list[Pending] = []
        self.order = 0
        self.next_id = 1
        self.heads: dict[str, tuple[int, str]] = {}
        self.boundary, self.interval = first_boundary, interval
        self.covered_id, self.running, self.total = 0, GENESIS_HASH, 0
        self.number = 0
        self.window: list[str] = []  # hashes of events since the last checkpoint

    def chain(self, chain_id: str, events: list[tuple[dt.datetime, str, str, dict[str, Any]]]) -> None:
        """Hash a whole chain (time, kind, actor, data) and queue its events."""
        prev, seq = GENESIS_HASH, 0
        for at, kind, actor, data in events:
            seq += 1
            # As append_events does: the hash covers the data as the database gives it back.
            stored = json.loads(canonical_json(data))
            digest = event_hash(
                chain_id=chain_id, seq=seq, kind=kind, actor=actor, data=stored, created_at=at, prev_hash=prev
            )
            self.order += 1
            heapq.heappush(
                self.heap,
                Pending(at, self.order, chain_id, seq, kind, actor, stored_json(stored), prev, digest),
            )
            prev = digest
        self.heads[chain_id] = (seq, prev)

    def release(self, until: dt.datetime | None) -> None:
        """Give ids to every queued event at or before `until` (all of them when None)."""
        heap = self.heap
        while heap and (until is None or heap[0].at <= until):
            event = heapq.heappop(heap)
            while self.boundary - CHECKPOINT_LAG < event.at:
                self._checkpoint()
            event_id = self.next_id
            self.next_id += 1
            self.stream.add(
                event_id,
                event.chain_id,
                event.seq,
                event.kind,
                event.actor,
                event.data,
                event.at,
                event.prev_hash,
                event.hash,
            )
            self.window.append(event.hash)

    def _checkpoint(self) -> None:
        """What create_checkpoint writes at `self.boundary`: everything older than the lag, if any."""
        at = self.boundary
        self.boundary += self.interval
        if not self.window:
            return
        running = hashlib.sha256("".join([self.running, *self.window]).encode()).hexdigest()  # SCHEME_DIGEST
        self.number += 1
        last_id = self.next_id - 1
        row: dict[str, Any] = {
            "number": self.number,
            "created_at": at,
            "first_event_id": self.covered_id,
            "last_event_id": last_id,
            "event_count": len(self.window),
            "total_events": self.total + len(self.window),
            "running_hash": running,
            "key_id": self.key.key_id,
            "scheme": SCHEME_DIGEST,
        }
        row["signature"] = self.key.sign(checkpoint_body(row))
        self.checkpoints.add(*(row[c] for c in CHECKPOINT_COLUMNS))
        self.covered_id, self.running, self.total = last_id, running, row["total_events"]
        self.window = []


def iso(value: dt.datetime) -> str:
    return value.isoformat()


class Seeder:
    def __init__(self, world: World, rng: random.Random, log: EventLog) -> None:
        self.w, self.rng, self.log = world, rng, log
        self.requests = CopyBuffer("requests", REQUEST_COLUMNS)
        self.decisions = CopyBuffer("decisions", DECISION_COLUMNS)
        self.messages = CopyBuffer("slack_messages", MESSAGE_COLUMNS)
        self.attempts = CopyBuffer("delivery_attempts", ATTEMPT_COLUMNS)
        self.decision_id = self.message_id = self.attempt_id = self.outbox_id = 0
        self.version_starts = [v.loaded_at for v in world.versions]
        self.statuses: dict[str, int] = {}

    def _attempt(self, request_id: str, kind: str, target: str | None, at: dt.datetime, **extra: Any) -> None:
        self.attempt_id += 1
        self.outbox_id += 1
        rng = self.rng
        ok = extra.get("result", "delivered") == "delivered"
        self.attempts.add(
            self.attempt_id,
            self.outbox_id,
            request_id,
            kind,
            extra.get("attempt", 1),
            target,
            at,
            rng.randint(40, 900),
            200 if ok else 503,
            extra.get("result", "delivered"),
            None if ok else "HTTP 503 from the agent",
        )

    def _ts(self, at: dt.datetime) -> str:
        return f"{at.timestamp():.6f}"

    def request(self, t0: dt.datetime) -> None:
        w, rng = self.w, self.rng
        agent = rng.choices(w.agents, weights=w.agent_weights)[0]
        action = rng.choice(agent.actions)
        version = w.versions[bisect.bisect_right(self.version_starts, t0) - 1]
        evaluation = evaluate(version.loaded.policy_set, action)
        rule = evaluation.rule
        snapshot = None if evaluation.rule_index is None else w.snapshots[evaluation.rule_index]
        lifetime = dt.timedelta(seconds=rule.expires_in if rule is not None else 86_400)
        request_id = hexid(rng, "req_")
        requester = rng.choice(w.requesters)
        customer = f"cus_{rng.getrandbits(40):010x}"
        params: dict[str, Any] = {
            "customer_id": customer,
            "amount": rng.randint(10, 250_000),
            "currency": rng.choice(["EUR", "USD", "GBP"]),
            "ticket": f"T-{rng.randint(1000, 999_999)}",
        }
        if action == "send_offer_letter":
            params |= {"candidate": f"cand_{rng.getrandbits(32):08x}", "salary": rng.randint(40, 250) * 1000}
        if action == "wire_transfer":
            params["account"] = f"DE{rng.getrandbits(64):020d}"
        links = [{"title": "ticket", "url": f"https://tickets.example.com/{params['ticket']}"}]
        callback = f"https://{agent.name}.agents.example.com/callback" if rng.random() < 0.5 else None
        title = f"{action.replace('_', ' ').capitalize()} for {customer}"
        summary = (
            f"{agent.name} asks to {action.replace('_', ' ')} on behalf of {requester}: "
            f"amount {params['amount']} {params['currency']}, see {params['ticket']}."
        )
        payload = hashlib.sha256(
            canonical_json(
                {
                    "action": action,
                    "title": title,
                    "summary": summary,
                    "params": params,
                    "on_behalf_of": requester,
                    "links": links,
                    "callback_url": callback,
                }
            )
        ).hexdigest()
        expires_at = t0 + lifetime
        agent_actor = f"agent:{agent.name}"
        events: list[tuple[dt.datetime, str, str, dict[str, Any]]] = [
            (
                t0,
                "request_created",
                agent_actor,
                {
                    "agent_id": agent.id,
                    "agent": agent.name,
                    "action": action,
                    "on_behalf_of": requester,
                    "payload_sha256": payload,
                    "callback_url": callback,
                    "expires_in_requested": None,
                    "expires_at": iso(expires_at),
                    "idempotency_key": f"idem-{rng.getrandbits(48):012x}" if rng.random() < 0.6 else None,
                },
            ),
            (
                t0,
                "policy_evaluated",
                "policy",
                {
                    "inputs": {"action": action, "agent": agent.name},
                    "policy": evaluation.policy_name,
                    "policy_version": version.id,
                    "policy_sha256": version.loaded.sha256,
                    "rule_index": evaluation.rule_index,
                    "decision": evaluation.decision,
                    "reason": evaluation.reason,
                },
            ),
        ]
        status, decided_by, reason, decided_at = "pending", None, None, None
        outcome: tuple[str, str, str, dt.datetime] | None = None
        end = w.end
        if evaluation.decision != "require_approval":
            status = "approved" if evaluation.decision == "allow" else "rejected"
            decided_by, reason, decided_at = "policy", evaluation.reason, t0
            events.append((t0, f"request_{status}", "policy", {"decided_by": "policy", "reason": reason}))
            if callback:
                self._attempt(request_id, "callback", callback, t0 + dt.timedelta(seconds=1))
        else:
            assert rule is not None
            users = [p for p in w.approvers if p.user_id in rule.approvers.users]
            for group in rule.approvers.usergroups:
                users += [p for p in w.groups[group] if p not in users]
            posted = t0 + dt.timedelta(milliseconds=rng.randint(300, 2500))
            destinations = (
                [p.user_id for p in rng.sample(users, min(3, len(users)))]
                if rule.dm_approvers
                else [rule.channel or "C0GENERAL"]
            )
            for destination in destinations:
                if posted > end:
                    break
                channel = destination if destination.startswith("C") else f"D{destination[1:]}"
                ts = self._ts(posted)
                permalink = f"https://example.slack.com/archives/{channel}/p{ts.replace('.', '')}"
                self.message_id += 1
                self.messages.add(self.message_id, request_id, destination, channel, ts, permalink, posted)
                self._attempt(request_id, "slack_notify", destination, posted)
                events.append(
                    (
                        posted,
                        "notification_posted",
                        "slack",
                        {"destination": destination, "channel": channel, "ts": ts, "permalink": permalink},
                    )
                )
            roll = rng.random()
            wanted = (
                "approved"
                if roll < 0.70
                else "rejected"
                if roll < 0.83
                else "cancelled"
                if roll < 0.89
                else "expired"
            )
            decide_at = posted + dt.timedelta(seconds=rng.expovariate(1 / 900))
            if wanted == "expired" or decide_at >= expires_at:
                wanted, decide_at = "expired", expires_at + dt.timedelta(milliseconds=rng.randint(50, 1500))
            # Reminders before the decision (or the expiry).
            for n, fraction in enumerate(self._reminders(rule.remind_at, lifetime), start=1):
                at = t0 + fraction
                if at < decide_at and at <= end:
                    events.append(
                        (at, "reminder_sent", "scheduler", {"reminder": n, "of": len(rule.remind_at)})
                    )
                    self._attempt(request_id, "slack_remind", destinations[0], at)
            if rng.random() < 0.05 and posted + dt.timedelta(seconds=30) < min(decide_at, end):
                stranger = rng.choice(w.approvers[100:])
                at = posted + dt.timedelta(seconds=rng.randint(5, 30))
                events.append(
                    (
                        at,
                        "click_refused",
                        f"slack:{stranger.user_id}",
                        {
                            **self._identity(stranger, at),
                            "choice": "approve",
                            "reason": "not_approver",
                            "status": "pending",
                        },
                    )
                )
            if wanted in ("approved", "rejected"):
                choice = "approve" if wanted == "approved" else "reject"
                count = rule.required_approvals if choice == "approve" else 1
                deciders = rng.sample(users, count)
                times = [decide_at]
                for _ in deciders[1:]:
                    times.append(times[-1] + dt.timedelta(seconds=rng.randint(20, 600)))
                decide_at = times[-1]
                if decide_at >= expires_at:  # the last approver came too late
                    wanted, decide_at = (
                        "expired",
                        expires_at + dt.timedelta(milliseconds=rng.randint(50, 1500)),
                    )
            if decide_at <= end:
                if wanted == "expired":
                    status, decided_by, reason = "expired", "system", "no decision before expiry"
                    events.append((decide_at, "request_expired", "scheduler", {"decided_by": "system"}))
                elif wanted == "cancelled":
                    status, decided_by, reason = "cancelled", "agent", "cancelled by the agent"
                    events.append((decide_at, "request_cancelled", agent_actor, {"decided_by": "agent"}))
                else:
                    why = "budget not approved" if choice == "reject" else None
                    for person, at in zip(deciders, times, strict=True):
                        mfa = self._mfa(person, at) if rule.mfa.required else None
                        action_ts = self._ts(at)
                        self.decision_id += 1
                        self.decisions.add(
                            self.decision_id,
                            request_id,
                            person.user_id,
                            choice,
                            why,
                            person.name,
                            person.email,
                            person.team_id,
                            action_ts,
                            version.id,
                            None if mfa is None else stored_json(mfa),
                            at,
                        )
                        events.append(
                            (
                                at,
                                "decision_recorded",
                                f"slack:{person.user_id}",
                                {
                                    **self._identity(person, at),
                                    "choice": choice,
                                    "reason": why,
                                    "policy_version": version.id,
                                    "mfa": mfa,
                                },
                            )
                        )
                    status, decided_by, reason = wanted, "human", why
                    events.append(
                        (
                            decide_at,
                            f"request_{status}",
                            f"slack:{deciders[-1].user_id}",
                            {
                                "decided_by": "human",
                                "approvals": count if choice == "approve" else 0,
                                "required": rule.required_approvals,
                            },
                        )
                    )
                decided_at = decide_at
                self._attempt(request_id, "slack_update", destinations[0], decide_at)
                if callback:
                    when = decide_at + dt.timedelta(milliseconds=rng.randint(200, 2000))
                    if rng.random() < 0.05:
                        self._attempt(request_id, "callback", callback, when, result="retry")
                        when += dt.timedelta(seconds=30)
                        self._attempt(request_id, "callback", callback, when, attempt=2)
                    else:
                        self._attempt(request_id, "callback", callback, when)
        if status == "approved" and rng.random() < 0.85:
            at = (decided_at or t0) + dt.timedelta(seconds=rng.randint(5, 600))
            if at <= end:
                result = "succeeded" if rng.random() < 0.95 else "failed"
                ref = f"ext-{rng.getrandbits(40):010x}"
                detail = "done" if result == "succeeded" else "the downstream API refused it"
                outcome = (result, detail, ref, at)
                events.append(
                    (
                        at,
                        "outcome_recorded",
                        agent_actor,
                        {"status": result, "detail": detail, "external_ref": ref},
                    )
                )
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.requests.add(
            request_id,
            agent.id,
            action,
            title,
            summary,
            stored_json(params),
            payload,
            requester,
            stored_json(links),
            callback,
            status,
            decided_by,
            reason,
            evaluation.policy_name,
            version.id,
            None if snapshot is None else stored_json(snapshot),
            rule.required_approvals if rule is not None else 1,
            t0,
            expires_at,
            decided_at,
            *(outcome if outcome else (None, None, None, None)),
            None,
        )
        events.sort(key=lambda e: e[0])  # stable: same-time events keep their order
        self.log.chain(request_id, events)

    @staticmethod
    def _reminders(remind_at: list[str], lifetime: dt.timedelta) -> list[dt.timedelta]:
        out = []
        for r in remind_at:
            if r.endswith("%"):
                out.append(lifetime * int(r[:-1]) / 100)
            else:
                from approvals.durations import parse_duration

                out.append(dt.timedelta(seconds=parse_duration(r)))
        return out

    def _identity(self, person: Person, at: dt.datetime) -> dict[str, Any]:
        return {
            "user_id": person.user_id,
            "team_id": person.team_id,
            "user_name": person.name,
            "email": person.email,
            "action_ts": self._ts(at),
        }

    def _mfa(self, person: Person, at: dt.datetime) -> dict[str, Any]:
        auth = at - dt.timedelta(seconds=self.rng.randint(5, 280))
        return {
            "iss": "https://login.example.com",
            "sub": f"00u{person.user_id[2:]}",
            "amr": ["pwd", "otp"],
            "acr": None,
            "auth_time": auth.isoformat().replace("+00:00", "Z"),
            "verified_at": at.isoformat().replace("+00:00", "Z"),
            "reused": False,
        }


def checkpoint_key() -> CheckpointKey:
    return CheckpointKey(Ed25519PrivateKey.from_private_bytes(CHECKPOINT_SEED))


def seed_signature(args: argparse.Namespace) -> str:
    return (
        f"bench/audit.py seed v{SEED_VERSION}: requests={args.requests} days={args.days} "
        f"checkpoint_interval={args.checkpoint_interval}"
    )


def existing_seed(admin_url: str, name: str) -> str | None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", [name]
        ).fetchone()
    return None if row is None else (row[0] or "")


async def migrate(url: str) -> None:
    engine = build_engine(url)
    try:
        await upgrade_to_head(engine)
    finally:
        await engine.dispose()


async def final_checkpoint(url: str, key: CheckpointKey) -> dict[str, Any] | None:
    """The real create_checkpoint, as `approvals audit checkpoint` runs it, over the trailing events."""
    engine = build_engine(url)
    try:
        async with engine.begin() as conn:
            return await create_checkpoint(conn, sign=key.sign, key_id=key.key_id, lag=dt.timedelta(0))
    finally:
        await engine.dispose()


def seed(args: argparse.Namespace, url: str) -> dict[str, Any]:
    """Build the database; returns what was written (counts, seconds)."""
    began = time.monotonic()
    libpq = psycopg_url(url)
    with psycopg.connect(libpq, autocommit=True) as conn:
        now = conn.execute("SELECT clock_timestamp()").fetchone()[0].astimezone(dt.UTC)  # type: ignore[index]
    end = now - dt.timedelta(minutes=10)
    start = end - dt.timedelta(days=args.days)
    rng = random.Random(RNG_SEED)
    world = build_world(rng, start, end)
    key = checkpoint_key()

    events_conn = psycopg.connect(libpq)
    parents = psycopg.connect(libpq)
    stream = CopyStream(events_conn, "audit_events", EVENT_COLUMNS)
    checkpoints = CopyBuffer("audit_checkpoints", CHECKPOINT_COLUMNS)
    interval = dt.timedelta(seconds=args.checkpoint_interval)
    log = EventLog(stream, checkpoints, key, start + interval, interval)
    seeder = Seeder(world, rng, log)

    # Agents, their chains, the policy versions and theirs, before any request.
    agents_rows = CopyBuffer(
        "agents", ["id", "name", "owner", "purpose", "risk", "actions", "webhook_secret", "created_at"]
    )
    registered = start - dt.timedelta(days=2)
    for i, agent in enumerate(world.agents):
        at = registered + dt.timedelta(minutes=i)
        risk = ["low", "medium", "high"][i % 3]
        purpose = f"automates {', '.join(agent.actions)}"
        agents_rows.add(
            agent.id,
            agent.name,
            agent.owner,
            purpose,
            risk,
            stored_json(list(agent.actions)),
            base64.b64encode(rng.randbytes(24)).decode(),
            at,
        )
        log.chain(
            f"agent:{agent.id}",
            [
                (
                    at,
                    "agent_registered",
                    "cli",
                    {
                        "agent_id": agent.id,
                        "name": agent.name,
                        "owner": agent.owner,
                        "purpose": purpose,
                        "risk": risk,
                        "actions": list(agent.actions),
                        "key_id": hexid(rng, "key_"),
                    },
                )
            ],
        )
    versions_rows = CopyBuffer(
        "policy_versions", ["id", "sha256", "content", "source", "loaded_by", "loaded_at"]
    )
    policy_events = []
    for v in world.versions:
        versions_rows.add(v.id, v.loaded.sha256, v.loaded.content, "policies.yml", "serve", v.loaded_at)
        policy_events.append(
            (
                v.loaded_at,
                "policy_version_recorded",
                "serve",
                {"version": v.id, "sha256": v.loaded.sha256, "source": "policies.yml"},
            )
        )
    log.chain("policies", policy_events)
    agents_rows.load(parents)
    versions_rows.load(parents)

    # Requests in creation order; each request's events wait in the log's heap for their turn.
    span = (end - start).total_seconds()
    offsets = sorted(rng.random() * span for _ in range(args.requests))
    report_every = max(1, args.requests // 10)
    for n, offset in enumerate(offsets, start=1):
        t0 = start + dt.timedelta(seconds=offset)
        log.release(t0)
        seeder.request(t0)
        if n % report_every == 0:
            print(
                f"  seeded {n:,} requests, {log.next_id - 1:,} events so far "
                f"({time.monotonic() - began:.0f} s)",
                flush=True,
            )
    log.release(None)  # the events after the scheduler's last checkpoint go to create_checkpoint below
    stream.close()
    events_conn.close()
    print(f"  events written ({time.monotonic() - began:.0f} s); loading the rest", flush=True)
    seeder.requests.load(parents)
    for buffer in (seeder.decisions, seeder.messages, seeder.attempts, checkpoints):
        buffer.load(parents)
    heads = CopyBuffer("chain_heads", ["chain_id", "seq", "hash"])
    for chain_id, (seq, digest) in log.heads.items():
        heads.add(chain_id, seq, digest)
    heads.load(parents)
    for table, column, last in (
        ("audit_events", "id", log.next_id - 1),
        ("decisions", "id", seeder.decision_id),
        ("slack_messages", "id", seeder.message_id),
        ("delivery_attempts", "id", seeder.attempt_id),
        ("policy_versions", "id", len(world.versions)),
    ):
        parents.execute("SELECT setval(pg_get_serial_sequence(%s, %s), %s)", [table, column, max(last, 1)])
    parents.commit()
    parents.close()
    final = asyncio.run(final_checkpoint(url, key))
    print(f"  loaded ({time.monotonic() - began:.0f} s); VACUUM ANALYZE", flush=True)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return {
        "requests": args.requests,
        "events": log.next_id - 1,
        "chains": len(log.heads),
        "checkpoints": log.number + (1 if final else 0),
        "decisions": seeder.decision_id,
        "statuses": seeder.statuses,
        "seconds": time.monotonic() - began,
    }


def psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


# ---------------------------------------------------------------------------------------------------
# Measuring.


class Phase:
    """Wall time and CPU of one measured phase: this process, its PostgreSQL backends, the rest."""

    def __init__(self, backend_pids: list[int]) -> None:
        self.pids = backend_pids

    def _snapshot(self) -> tuple[float, float, float | None, float | None]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        backends = [cpu_seconds(pid) for pid in self.pids]
        pg = None if any(b is None for b in backends) else sum(b or 0.0 for b in backends)
        return time.perf_counter(), own.ru_utime + own.ru_stime, pg, host_cpu_seconds()

    def __enter__(self) -> Phase:
        self.before = self._snapshot()
        return self

    def __exit__(self, *_: object) -> None:
        after = self._snapshot()
        self.wall = after[0] - self.before[0]
        self.own = (after[1] - self.before[1]) / self.wall
        b0, b1, h0, h1 = self.before[2], after[2], self.before[3], after[3]
        self.pg = None if b0 is None or b1 is None else (b1 - b0) / self.wall
        host = None if h0 is None or h1 is None else (h1 - h0) / self.wall
        self.other = None if host is None else max(0.0, host - self.own - (self.pg or 0.0))

    def cpu(self) -> str:
        return f"own {fmt(self.own * 100, '.0f', '%')}, pg {fmt(None if self.pg is None else self.pg * 100, '.0f', '%')}, other {fmt(None if self.other is None else self.other * 100, '.0f', '%')}"


async def backend_pid(conn: AsyncConnection) -> int:
    from sqlalchemy import text

    return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


@dataclass
class Figures:
    """Everything measured, for the report."""

    size: dict[str, Any] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)
    queries: dict[str, dict[str, Any]] = field(default_factory=dict)
    query_baseline: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    export_baseline: dict[str, Any] = field(default_factory=dict)


async def measure_verify(engine: AsyncEngine, key: CheckpointKey) -> dict[str, Any]:
    """`approvals audit verify`: approvals.audit.verification.verify_audit_log, as the CLI runs it
    (chains and checkpoints side by side on two connections; PostgreSQL hashes the log), then the
    same with --in-process (every hash recomputed in this process) for comparison."""
    async with engine.connect() as one, engine.connect() as two:  # the two sessions it will use
        pids = [await backend_pid(one), await backend_pid(two)]
    with Phase(pids) as phase:
        t0 = time.perf_counter()
        verdict = await verify_audit_log(engine, verify=key.verify)
        t1 = time.perf_counter()
    with Phase(pids) as in_process_phase:
        in_process = await verify_audit_log(engine, verify=key.verify, hash_in_database=False)
    report = verdict.chains
    return {
        "events": report.events,
        "chains": report.chains,
        "checkpoints": verdict.checkpoints,
        "ok": verdict.ok and in_process.ok,
        "problem": str(
            report.first_break or verdict.checkpoint_problem or in_process.chains.first_break or ""
        ),
        "seconds": t1 - t0,
        "eps": report.events / (t1 - t0),
        "phase": phase,
        "in_process_eps": report.events / in_process_phase.wall,
        "in_process_seconds": in_process_phase.wall,
        "in_process_phase": in_process_phase,
    }


EVENT_ROWS = "SELECT chain_id, seq, kind, actor, data, created_at, prev_hash, hash FROM audit_events"


def baseline_hash(libpq: str, sample: int) -> dict[str, Any]:
    """SHA-256 over the bytes verification hashes, in a tight loop: each event's canonical body
    (exactly event_hash's, built beforehand from `sample` events read in chain order) and the
    checkpoints' running-hash step over its hash."""
    with psycopg.connect(libpq) as conn:
        rows = conn.execute(f"{EVENT_ROWS} ORDER BY chain_id, seq LIMIT %s", [sample]).fetchall()
    bodies = [
        canonical_json(
            {
                "chain_id": chain_id,
                "seq": seq,
                "kind": kind,
                "actor": actor,
                "data": data,
                "created_at": format_time(created_at),
                "prev_hash": prev_hash,
            }
        )
        for chain_id, seq, kind, actor, data, created_at, prev_hash, _ in rows
    ]
    stored = [row[7] for row in rows]
    sha256 = hashlib.sha256
    with Phase([]) as phase:
        running = sha256(GENESIS_HASH.encode())
        digests = []
        for body in bodies:
            digest = sha256(body).hexdigest()
            running.update(digest.encode())  # the checkpoints' running hash (scheme 2)
            digests.append(digest)
    assert digests == stored, "the baseline's bytes are not the ones the hashes were made from"
    return {"events": len(bodies), "eps": len(bodies) / phase.wall, "phase": phase}


def baseline_read(libpq: str) -> dict[str, Any]:
    """Every event row as verify_all reads it (id order, JSON as text) through a raw psycopg
    server-side cursor, nothing else: the floor set by the database and the driver."""
    with psycopg.connect(libpq) as conn:
        with Phase([conn.info.backend_pid]) as phase, conn.cursor(name="bench_read") as cur:
            cur.itersize = 10_000
            cur.execute(
                "SELECT chain_id, seq, kind, actor, data::text, created_at, prev_hash, hash "
                "FROM audit_events ORDER BY id"
            )
            count = sum(1 for _ in cur)
        conn.rollback()
    return {"events": count, "eps": count / phase.wall, "phase": phase}


@dataclass(frozen=True)
class Values:
    """Real filter values, read from the seeded database."""

    agents: list[str]
    policies: list[str]
    approvers: list[str]
    start: dt.datetime
    end: dt.datetime
    request_ids: list[str]


def filter_values(libpq: str) -> Values:
    with psycopg.connect(libpq) as conn:
        agents = [r[0] for r in conn.execute("SELECT name FROM agents ORDER BY name")]
        content = conn.execute("SELECT content FROM policy_versions ORDER BY id DESC LIMIT 1").fetchone()
        people = conn.execute(
            "SELECT DISTINCT approver_id, approver_email FROM decisions WHERE id % 50 = 0"
        ).fetchall()
        start, end = conn.execute("SELECT min(created_at), max(created_at) FROM requests").fetchone()  # type: ignore[misc]
        ids = [r[0] for r in conn.execute("SELECT id FROM requests TABLESAMPLE SYSTEM (1) LIMIT 5000")]
        if not ids:  # a small log: a 1 % block sample can come back empty, so take them all
            ids = [r[0] for r in conn.execute("SELECT id FROM requests LIMIT 5000")]
    policies = ["default"]
    if content is not None:
        policies += [rule.display_name for rule in parse_policies(content[0]).policy_set.policies]
    approvers = [p[0] for p in people] + [p[1] for p in people]
    return Values(agents, policies, approvers, start, end, ids)


STATUSES = ["pending", "approved", "rejected", "expired", "cancelled"]


def random_filters(kind: str, values: Values, rng: random.Random) -> ChainFilter:
    span = (values.end - values.start).total_seconds()

    def window(days: int) -> tuple[dt.datetime, dt.datetime]:
        width = dt.timedelta(days=days)
        begin = values.start + dt.timedelta(seconds=rng.random() * max(0.0, span - width.total_seconds()))
        begin = begin.replace(hour=0, minute=0, second=0, microsecond=0)
        return begin, begin + width

    if kind == "agent":
        return ChainFilter(agent=rng.choice(values.agents))
    if kind == "policy":
        return ChainFilter(policy=rng.choice(values.policies))
    if kind == "approver":
        return ChainFilter(approver=rng.choice(values.approvers))
    if kind == "status":
        return ChainFilter(status=rng.choice(STATUSES))
    if kind == "date range":
        begin, until = window(rng.randint(1, 30))
        return ChainFilter(created_from=begin, created_to=until)
    begin, until = window(30)
    return ChainFilter(
        agent=rng.choice(values.agents), status=rng.choice(STATUSES), created_from=begin, created_to=until
    )


FILTER_KINDS = ["agent", "policy", "approver", "status", "date range", "agent+status+30 days"]


async def measure_queries(
    engine: AsyncEngine, values: Values, samples: int, rng: random.Random
) -> dict[str, dict[str, Any]]:
    """GET /v1/audit/chains' database work: count_chains, then the first page of 100 chains."""
    results: dict[str, dict[str, Any]] = {}
    for kind in FILTER_KINDS:
        totals, counts, pages, populations = [], [], [], []
        async with engine.connect() as conn:
            pid = await backend_pid(conn)
            await conn.rollback()
        # The API takes a pooled connection per request; the pool hands this one back each time.
        with Phase([pid]) as phase:
            for _ in range(samples):
                wanted = random_filters(kind, values, rng)
                async with engine.connect() as conn:
                    t0 = time.perf_counter()
                    population = await count_chains(conn, wanted)
                    t1 = time.perf_counter()
                    await chain_page(conn, wanted, limit=PAGE_LIMIT)
                    t2 = time.perf_counter()
                totals.append((t2 - t0) * 1000)
                counts.append((t1 - t0) * 1000)
                pages.append((t2 - t1) * 1000)
                populations.append(population)
        results[kind] = {
            "p50": percentile(totals, 50),
            "p95": percentile(totals, 95),
            "max": max(totals),
            "count_p95": percentile(counts, 95),
            "page_p95": percentile(pages, 95),
            "population": statistics.median(populations),
            "population_max": max(populations),
            "phase": phase,
        }
    return results


def baseline_query(libpq: str, values: Values, samples: int, rng: random.Random) -> dict[str, Any]:
    """A bare indexed SELECT: one request by primary key and its events by chain, raw psycopg."""
    times = []
    with psycopg.connect(libpq, autocommit=True) as conn:
        with Phase([conn.info.backend_pid]) as phase:
            for _ in range(samples):
                request_id = rng.choice(values.request_ids)
                t0 = time.perf_counter()
                conn.execute("SELECT * FROM requests WHERE id = %s", [request_id]).fetchall()
                conn.execute(
                    "SELECT * FROM audit_events WHERE chain_id = %s ORDER BY seq", [request_id]
                ).fetchall()
                times.append((time.perf_counter() - t0) * 1000)
    return {"p50": percentile(times, 50), "p95": percentile(times, 95), "max": max(times), "phase": phase}


async def measure_export(engine: AsyncEngine, limit: int) -> dict[str, Any]:
    """`approvals audit export --format jsonl`: the population, then every chain as PostgreSQL writes
    it (approvals.audit.chain_json), in pages; and the same chains assembled in Python (approvals.audit.chains
    and app.chain_formats.jsonl, what the chains API and CSV export do) for comparison."""
    wanted = ChainFilter()
    figures: dict[str, Any] = {}
    for name in ("database", "python"):
        written = 0
        with open(os.devnull, "w", encoding="utf-8") as sink:
            async with engine.connect() as conn, engine.connect() as one, engine.connect() as two:
                pids = [await backend_pid(c) for c in (conn, one, two)]
                with Phase(pids if name == "database" else pids[:1]) as phase:
                    population = await count_chains(conn, wanted)
                    chains = (
                        iter_chain_texts(conn, wanted, builders=[one, two])  # as the CLI does
                        if name == "database"
                        else _python_chains(conn, wanted)
                    )
                    async for chain in chains:
                        sink.write(chain + "\n")
                        written += 1
                        if limit and written >= limit:
                            break
                    await chains.aclose()
        figures[name] = {
            "population": population,
            "chains": written,
            "cps": written / phase.wall,
            "phase": phase,
        }
    return {**figures["database"], "python": figures["python"]}


async def _python_chains(conn: AsyncConnection, wanted: ChainFilter) -> AsyncIterator[str]:
    async for chain in iter_chains(conn, wanted):
        yield compact_json(chain)


def baseline_export(libpq: str, limit: int) -> dict[str, Any]:
    """The same rows read bare: requests in export order (keyset pages of 500), then each page's
    decisions, cards, delivery attempts and events by request id. Nothing assembled or serialised."""
    read = 0
    with psycopg.connect(libpq, autocommit=True) as conn:
        with Phase([conn.info.backend_pid]) as phase:
            after: tuple[Any, Any] | None = None
            while True:
                if after is None:
                    page = conn.execute(
                        "SELECT * FROM requests ORDER BY created_at, id LIMIT %s", [EXPORT_PAGE]
                    ).fetchall()
                else:
                    page = conn.execute(
                        "SELECT * FROM requests WHERE (created_at, id) > (%s, %s) "
                        "ORDER BY created_at, id LIMIT %s",
                        [*after, EXPORT_PAGE],
                    ).fetchall()
                if not page:
                    break
                ids = [row[0] for row in page]
                for statement in (
                    "SELECT * FROM decisions WHERE request_id = ANY(%s) ORDER BY id",
                    "SELECT * FROM slack_messages WHERE request_id = ANY(%s) ORDER BY id",
                    "SELECT * FROM delivery_attempts WHERE request_id = ANY(%s) ORDER BY id",
                    "SELECT * FROM audit_events WHERE chain_id = ANY(%s) ORDER BY chain_id, seq",
                ):
                    conn.execute(statement, [ids]).fetchall()
                read += len(page)
                created_at_index = REQUEST_COLUMNS.index("created_at")
                after = (page[-1][created_at_index], page[-1][0])
                if limit and read >= limit:
                    break
    return {"chains": read, "cps": read / phase.wall, "phase": phase}


# ---------------------------------------------------------------------------------------------------
# The report.


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def print_report(f: Figures) -> None:
    size, v = f.size, f.verify
    print()
    print(
        f"audit log on PostgreSQL: {size['requests']:,} requests, {size['events']:,} events in "
        f"{size['chains']:,} chains, {size['decisions']:,} decisions, {size['checkpoints']:,} checkpoints; "
        f"database {size['db_size']}"
    )
    print(
        f"host: {os.cpu_count()} CPUs, load average {size['load']} before measuring; each phase "
        "starts after pg_prewarm of the tables it reads (warm: MB read, seconds taken)"
    )
    if v:
        print_verify(f)
    if f.queries:
        print_queries(f)
    if f.export:
        print_export(f)
    print(
        "\ncpu: share of one core during the phase: own = this process, pg = its PostgreSQL backend, "
        "other = the rest of the host\n(other work, other backends, PostgreSQL's parallel workers, the kernel)"
    )


def print_verify(f: Figures) -> None:
    v = f.verify
    print()
    print(
        "verify (`approvals audit verify`: every chain and checkpoint, on two connections; "
        f"warm {v['warm'][0]:,.0f} MB in {v['warm'][1]:.0f} s)"
    )
    hashing, read = v["hash_baseline"], v["read_baseline"]
    rows = [
        (
            "service",
            f"{v['eps']:,.0f} events/s",
            f"{v['seconds']:.1f} s (chains and checkpoints side by side, hashed in PostgreSQL)",
            "",
            v["phase"].cpu(),
        ),
        (
            "service --in-process",
            f"{v['in_process_eps']:,.0f} events/s",
            f"{v['in_process_seconds']:.1f} s (every hash recomputed in this process)",
            "",
            v["in_process_phase"].cpu(),
        ),
        (
            "baseline: sha256 loop",
            f"{hashing['eps']:,.0f} events/s",
            f"{hashing['events']:,} events' bytes",
            f"ratio {v['eps'] / hashing['eps']:.2f}",
            hashing["phase"].cpu(),
        ),
        (
            "baseline: bare read",
            f"{read['eps']:,.0f} events/s",
            f"{read['phase'].wall:.1f} s",
            f"ratio {v['eps'] / read['eps']:.2f}",
            read["phase"].cpu(),
        ),
    ]
    for name, figure, detail, ratio, cpu in rows:
        print(f"  {name:<22} {figure:>18}  {ratio:<11} {detail:<48} {cpu}")
    ok = "passed" if v["ok"] else f"FAILED: {v['problem']}"
    print(f"  verification {ok}")
    print(f"  target >= {TARGET_VERIFY_EPS:,} events/s: {verdict(v['eps'] >= TARGET_VERIFY_EPS)}")


def print_queries(f: Figures) -> None:
    print()
    qb = f.query_baseline
    print(
        f"filtered query (GET /v1/audit/chains: count_chains + chain_page limit {PAGE_LIMIT}), "
        f"{f.size['samples']} random values per filter; warm {qb['warm'][0]:,.0f} MB in {qb['warm'][1]:.0f} s"
    )
    header = (
        f"  {'filter':<22} {'population':>10} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
        f"{'count p95':>9} {'page p95':>9} {'p95 ratio':>9}  cpu"
    )
    print(header)
    for kind, r in f.queries.items():
        print(
            f"  {kind:<22} {r['population']:>10,.0f} {r['p50']:>8.1f} {r['p95']:>8.1f} {r['max']:>8.1f} "
            f"{r['count_p95']:>9.1f} {r['page_p95']:>9.1f} {r['p95'] / qb['p95']:>8.0f}x  {r['phase'].cpu()}"
        )
    print(
        f"  {'baseline: by id':<22} {1:>10} {qb['p50']:>8.2f} {qb['p95']:>8.2f} {qb['max']:>8.2f} "
        f"{'':>9} {'':>9} {'':>9}  {qb['phase'].cpu()}"
    )
    worst = max(r["p95"] for r in f.queries.values())
    print(
        f"  target p95 < {TARGET_QUERY_P95_MS:g} ms (worst filter {worst:.1f} ms): {verdict(worst < TARGET_QUERY_P95_MS)}"
    )


def print_export(f: Figures) -> None:
    print()
    e, eb = f.export, f.export_baseline
    print(
        "export (`approvals audit export --format jsonl`: count_chains + iter_chain_texts, unfiltered; "
        f"warm {e['warm'][0]:,.0f} MB in {e['warm'][1]:.0f} s)"
    )
    py = e["python"]
    print(
        f"  {'service':<22} {e['cps']:>12,.0f} chains/s  {e['chains']:,} of {e['population']:,} chains "
        f"in {e['phase'].wall:.1f} s  {e['phase'].cpu()}"
    )
    print(
        f"  {'assembled in Python':<22} {py['cps']:>12,.0f} chains/s  (iter_chains + jsonl: the chains API's path) "
        f"in {py['phase'].wall:.1f} s  {py['phase'].cpu()}"
    )
    print(
        f"  {'baseline: bare reads':<22} {eb['cps']:>12,.0f} chains/s  ratio {e['cps'] / eb['cps']:.2f}  "
        f"{eb['chains']:,} chains in {eb['phase'].wall:.1f} s  {eb['phase'].cpu()}"
    )
    print(f"  target >= {TARGET_EXPORT_CPS:,} chains/s: {verdict(e['cps'] >= TARGET_EXPORT_CPS)}")


VERIFY_TABLES = ["audit_events", "chain_heads", "audit_checkpoints", "audit_purges", "audit_purged_events"]
CHAIN_TABLES = [
    "requests",
    "agents",
    "policy_versions",
    "decisions",
    "slack_messages",
    "delivery_attempts",
    "audit_events",
]


def warm(libpq: str, tables: list[str]) -> tuple[float, float]:
    """Read these tables, their TOAST and their indexes into the OS page cache (pg_prewarm 'read'):
    each phase starts warm, as on a server whose database fits in memory, instead of measuring the
    disk in whatever state earlier work left the cache. Returns (MB read, seconds)."""
    began = time.monotonic()
    with psycopg.connect(libpq, autocommit=True) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        except psycopg.Error as exc:
            print(f"  (no pg_prewarm, measuring on the cache as it is: {exc})", flush=True)
            return 0.0, 0.0
        row = conn.execute(
            """
            WITH wanted AS (
                SELECT c.oid FROM pg_class c WHERE c.relname = ANY(%(tables)s) AND c.relkind = 'r'
                UNION ALL
                SELECT c.reltoastrelid FROM pg_class c
                WHERE c.relname = ANY(%(tables)s) AND c.relkind = 'r' AND c.reltoastrelid <> 0
                UNION ALL
                SELECT i.indexrelid FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
                WHERE c.relname = ANY(%(tables)s) AND c.relkind = 'r'
            )
            SELECT coalesce(sum(pg_relation_size(oid)), 0) / 1e6, count(pg_prewarm(oid, 'read'))
            FROM wanted WHERE pg_relation_size(oid) > 0
            """,
            {"tables": tables},
        ).fetchone()
    return (float(row[0]) if row else 0.0), time.monotonic() - began


def database_counts(libpq: str) -> dict[str, Any]:
    with psycopg.connect(libpq) as conn:

        def one(query: str) -> Any:
            row = conn.execute(query).fetchone()
            return row[0] if row else None

        return {
            "db_size": one("SELECT pg_size_pretty(pg_database_size(current_database()))"),
            "requests": one("SELECT count(*) FROM requests"),
            "events": one("SELECT count(*) FROM audit_events"),
            "chains": one("SELECT count(*) FROM chain_heads"),
            "decisions": one("SELECT count(*) FROM decisions"),
            "checkpoints": one("SELECT count(*) FROM audit_checkpoints"),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000, help="requests to seed (~5 events each)")
    parser.add_argument("--days", type=int, default=365, help="the seeded requests span this many days")
    parser.add_argument(
        "--checkpoint-interval", type=int, default=300, help="simulated seconds between checkpoints"
    )
    parser.add_argument("--samples", type=int, default=100, help="random values per filter")
    parser.add_argument("--export-chains", type=int, default=100_000, help="chains to export (0: all)")
    parser.add_argument("--hash-sample", type=int, default=200_000, help="events in the sha256 baseline")
    parser.add_argument("--database", default=DEFAULT_DB)
    parser.add_argument(
        "--reuse", action="store_true", help="keep a database seeded earlier with these options"
    )
    parser.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="URL of any database on the server; the bench database is made beside it",
    )
    parser.add_argument(
        "--only", default="verify,queries,export", help="comma-separated phases to run (seeding always)"
    )
    args = parser.parse_args()
    phases = {p.strip() for p in args.only.split(",")}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    url = database_url(args.postgres, args.database)
    libpq = psycopg_url(url)
    figures = Figures(size={"requests": args.requests, "samples": args.samples})
    key = checkpoint_key()
    try:
        signature = seed_signature(args)
        if args.reuse and existing_seed(args.postgres, args.database) == signature:
            print(f"reusing {args.database} ({signature}); migrating to head", flush=True)
            asyncio.run(migrate(url))
            with psycopg.connect(libpq, autocommit=True) as conn:
                conn.execute("ANALYZE")
        else:
            print(f"seeding {args.database}: {args.requests:,} requests over {args.days} days", flush=True)
            recreate_databases(args.postgres, [args.database])
            asyncio.run(migrate(url))
            seeded = seed(args, url)
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        sql.Identifier(args.database), sql.Literal(signature)
                    )
                )
            print(
                f"seeded in {seeded['seconds']:.0f} s: {seeded['events']:,} events, {seeded['chains']:,} chains, "
                f"{seeded['checkpoints']:,} checkpoints, {seeded['decisions']:,} decisions; "
                f"statuses {seeded['statuses']}",
                flush=True,
            )
        figures.size.update(database_counts(libpq))
        figures.size["load"] = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        rng = random.Random(RNG_SEED + 1)

        async def measured() -> None:
            # Each phase: warm its tables, run the service's code, then its baselines (blocking
            # psycopg calls: nothing else runs on this event loop meanwhile).
            engine = build_engine(url)
            try:
                if "verify" in phases:
                    warmed = warm(libpq, VERIFY_TABLES)
                    print(f"verify (warm: {warmed[0]:,.0f} MB in {warmed[1]:.0f} s) ...", flush=True)
                    figures.verify = await measure_verify(engine, key)
                    figures.verify["warm"] = warmed
                    print("  baselines: sha256 loop, bare read ...", flush=True)
                    figures.verify["hash_baseline"] = baseline_hash(libpq, args.hash_sample)
                    figures.verify["read_baseline"] = baseline_read(libpq)
                if "queries" in phases:
                    warmed = warm(libpq, CHAIN_TABLES)
                    print(
                        f"filtered queries (warm: {warmed[0]:,.0f} MB in {warmed[1]:.0f} s) ...", flush=True
                    )
                    figures.queries = await measure_queries(engine, values, args.samples, rng)
                    figures.query_baseline = baseline_query(libpq, values, max(args.samples, 200), rng)
                    figures.query_baseline["warm"] = warmed
                if "export" in phases:
                    warmed = warm(libpq, CHAIN_TABLES)
                    print(f"export (warm: {warmed[0]:,.0f} MB in {warmed[1]:.0f} s) ...", flush=True)
                    figures.export = await measure_export(engine, args.export_chains)
                    figures.export["warm"] = warmed
                    print("  baseline: bare reads ...", flush=True)
                    figures.export_baseline = baseline_export(libpq, args.export_chains)
            finally:
                await engine.dispose()

        values = filter_values(libpq)
        asyncio.run(measured())
        print_report(figures)
        if figures.verify and not figures.verify["ok"]:
            return 2
    except (psycopg.Error, OSError) as exc:
        print(f"\nbench could not complete: {exc}", file=sys.stderr)
        return 1
    finally:
        if not (args.keep or args.reuse):
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.database))
                )
            print(f"dropped {args.database}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
