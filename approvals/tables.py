"""The schema: every table the service keeps, as SQLAlchemy Core. Migrations in `migrations/` build it."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from approvals.db import UTCDateTime

# Constraint names come from this convention, not from the server, so migrations can name them.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

agents = Table(
    "agents",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("owner", String(320), nullable=False),
    Column("purpose", Text, nullable=False, default=""),
    Column("risk", String(10), nullable=False),
    Column("actions", JSON, nullable=False),
    # Kept in clear: HMAC signing of callbacks needs the secret itself, not a hash of it.
    Column("webhook_secret", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("role", String(20), nullable=False),  # agent | auditor
    Column("agent_id", String(40), ForeignKey("agents.id")),
    Column("name", String(100), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(24), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
)

policy_versions = Table(
    "policy_versions",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("content", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("loaded_by", String(200), nullable=False),
    Column("loaded_at", UTCDateTime, nullable=False),
)

requests = Table(
    "requests",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("agent_id", String(40), ForeignKey("agents.id"), nullable=False),
    Column("action", String(200), nullable=False),
    Column("title", String(200), nullable=False),
    Column("summary", Text, nullable=False),
    Column("params", JSON, nullable=False),
    Column("payload_sha256", String(64), nullable=False),
    Column("on_behalf_of", String(320), nullable=False),
    Column("links", JSON, nullable=False),
    Column("callback_url", Text),
    Column("status", String(16), nullable=False),
    Column("decided_by", String(16)),
    Column("reason", Text),
    Column("policy_name", String(200), nullable=False),
    Column("policy_version_id", BigInteger, ForeignKey("policy_versions.id"), nullable=False),
    Column("policy_rule", JSON),
    Column("required_approvals", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("decided_at", UTCDateTime),
    Column("outcome_status", String(16)),
    Column("outcome_detail", Text),
    Column("outcome_external_ref", String(500)),
    Column("outcome_at", UTCDateTime),
    Column("delivery_error", Text),
    # When the reminder sweep next has work for this request (its next `remind_at` point); None once
    # it has none. Set when the request is created, moved on by each sweep that visits it.
    Column("next_reminder_at", UTCDateTime),
    # Who the requester is (migration 0011; both empty on older rows): the normalised mailbox of an
    # email `on_behalf_of`, and the Slack user it resolved to at intake or the ID the agent gave.
    Column("requester_email", String(320)),
    Column("requester_slack_id", String(40)),
    Index("ix_requests_status_expires_at", "status", "expires_at"),
    Index("ix_requests_agent_id_created_at", "agent_id", "created_at"),
    Index(
        "ix_requests_next_reminder_at",
        "next_reminder_at",
        postgresql_where=text("status = 'pending' AND next_reminder_at IS NOT NULL"),
    ),
)

decisions = Table(
    "decisions",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("request_id", String(40), ForeignKey("requests.id"), nullable=False),
    Column("approver_id", String(40), nullable=False),
    Column("decision", String(10), nullable=False),  # approve | reject
    Column("reason", Text),
    Column("approver_name", String(200)),
    Column("approver_email", String(320)),
    Column("team_id", String(40)),
    Column("action_ts", String(40)),
    Column("policy_version_id", BigInteger, ForeignKey("policy_versions.id")),
    Column("mfa", JSON),
    Column("created_at", UTCDateTime, nullable=False),
    # The database, not our code, guarantees one decision per approver per request.
    UniqueConstraint("request_id", "approver_id", name="uq_decisions_request_approver"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("agent_id", String(40), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("body_sha256", String(64), nullable=False),
    Column("request_id", String(40)),
    Column("response_status", Integer),
    Column("response_body", JSON),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_idempotency_keys_created_at", "created_at"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    # A chain per request ("req_..."); events about an agent or the system get their own chains.
    Column("chain_id", String(80), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("kind", String(60), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("data", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("chain_id", "seq", name="uq_audit_events_chain_seq"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("kind", String(40), nullable=False),
    Column("request_id", String(40)),
    # Unique per logical delivery, so a use case retried after a crash cannot enqueue it twice.
    Column("dedupe_key", String(200), nullable=False, unique=True),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # pending | done | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # A claim asks per kind (a process claims only kinds it can deliver), in due order.
    Index("ix_outbox_status_kind_next_attempt_at", "status", "kind", "next_attempt_at", "id"),
)

chain_heads = Table(
    "chain_heads",
    metadata,
    # One row per chain: locking it orders appends within a chain while chains append in parallel.
    Column("chain_id", String(80), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

slack_messages = Table(
    "slack_messages",
    metadata,
    # Every card we posted for a request, so each can be updated when the request changes.
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("request_id", String(40), ForeignKey("requests.id"), nullable=False),
    Column("destination", String(40), nullable=False),  # the channel or user id we posted to
    Column("channel", String(40), nullable=False),  # the conversation Slack put it in
    Column("ts", String(40), nullable=False),
    Column("permalink", Text),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("request_id", "destination", name="uq_slack_messages_request_destination"),
)

slack_clicks = Table(
    "slack_clicks",
    metadata,
    # The inbox: a click is stored before Slack gets its ack, then decided; a crash loses nothing.
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("dedupe_key", String(200), nullable=False, unique=True),
    Column("request_id", String(40), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # pending | done
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("processed_at", UTCDateTime),
    # When a click whose clicker Slack could not resolve is tried again (backing off); NULL: due now.
    Column("next_attempt_at", UTCDateTime),
    Index("ix_slack_clicks_status_id", "status", "id"),
)

delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    # One row per try of an outbox delivery: what an operator (and an auditor) sees of retries.
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("outbox_id", BigInteger, nullable=False),
    Column("request_id", String(40)),
    Column("kind", String(40), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("target", Text),
    Column("started_at", UTCDateTime, nullable=False),
    Column("latency_ms", Integer),
    Column("status_code", Integer),
    Column("result", String(16), nullable=False),  # delivered | retry | failed | gone | interrupted
    Column("error", Text),
    Index("ix_delivery_attempts_request_id", "request_id"),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    # Signed summaries of the whole log: deleting entire chains (head rows included) breaks them.
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("first_event_id", BigInteger, nullable=False),  # exclusive: the previous checkpoint's last id
    Column("last_event_id", BigInteger, nullable=False),
    Column("event_count", BigInteger, nullable=False),  # events covered by this checkpoint alone
    Column("total_events", BigInteger, nullable=False),  # events covered by this and all earlier checkpoints
    Column("running_hash", String(64), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", Text, nullable=False),
    # How running_hash is formed (approvals.audit.checkpoints: SCHEME_STEPWISE or SCHEME_DIGEST).
    Column("scheme", SmallInteger, nullable=False, server_default="1"),
)

identity_links = Table(
    "identity_links",
    metadata,
    # A Slack user bound to one identity at the IdP: made by their first verified step-up.
    Column("slack_user_id", String(40), primary_key=True),
    Column("issuer", String(500), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("email", String(320), nullable=False),
    Column("linked_at", UTCDateTime, nullable=False),
    UniqueConstraint("issuer", "subject", name="uq_identity_links_issuer_subject"),
)

step_up_intents = Table(
    "step_up_intents",
    metadata,
    # A click held until the approver proves a fresh MFA login; single use, short lived.
    Column("id", String(64), primary_key=True),
    Column("request_id", String(40), ForeignKey("requests.id"), nullable=False),
    Column("approver_id", String(40), nullable=False),
    Column("decision", String(10), nullable=False),  # approve | reject
    Column("reason", Text),
    Column("click", JSON, nullable=False),  # who clicked, as Slack told us, for the decision record
    Column("status", String(16), nullable=False),  # pending | started | decided | failed
    Column("state", String(64), unique=True),
    Column("nonce", String(64)),
    Column("code_verifier", String(128)),
    Column("failure", String(40)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Index("ix_step_up_intents_request_id", "request_id"),
)

step_ups = Table(
    "step_ups",
    metadata,
    # The latest verified step-up of each Slack user: it stays fresh for a policy's max_age.
    Column("slack_user_id", String(40), primary_key=True),
    Column("issuer", String(500), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("amr", JSON, nullable=False),
    Column("acr", String(255)),
    Column("auth_time", UTCDateTime, nullable=False),
    Column("verified_at", UTCDateTime, nullable=False),
)

audit_purges = Table(
    "audit_purges",
    metadata,
    # One signed record per retention purge: the boundary, what it removed, and a digest binding the
    # removed events' recorded hashes, so checkpoints over purged events still recompute.
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("purged_at", UTCDateTime, nullable=False),
    Column("boundary", UTCDateTime, nullable=False),  # every purged event is older than this
    Column("retention_days", Integer, nullable=False),
    Column("checkpoint_number", Integer, nullable=False),  # the signed checkpoint covering them all
    Column("last_event_id", BigInteger, nullable=False),  # that checkpoint's last event id
    Column("chain_count", Integer, nullable=False),
    Column("event_count", BigInteger, nullable=False),
    Column("digest", String(64), nullable=False),  # SHA-256 over the purged events' lines, id order
    Column("key_id", String(64), nullable=False),
    Column("signature", Text, nullable=False),
)

audit_purged_events = Table(
    "audit_purged_events",
    metadata,
    # What is left of a purged event: its place and its hash (not its content), enough for the
    # checkpoint that covered it to be recomputed and for an auditor to see exactly what went.
    Column("event_id", BigInteger, primary_key=True, autoincrement=False),
    Column("purge_number", Integer, ForeignKey("audit_purges.number"), nullable=False),
    Column("chain_id", String(80), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_purged_events_purge_number", "purge_number"),
)

# The purge deletes a request's outbox rows and clicks by request id; without these it would scan
# both tables (which keep every finished row) once per batch.
Index("ix_outbox_request_id", outbox.c.request_id)
Index("ix_slack_clicks_request_id", slack_clicks.c.request_id)

# Compliance queries (GET /v1/audit/chains, `approvals audit export`, migration 0006): each filter has
# an index that also gives the export order (created_at, id); approvers are found by id or email.
Index("ix_requests_created_at_id", requests.c.created_at, requests.c.id)
Index("ix_requests_policy_name_created_at", requests.c.policy_name, requests.c.created_at, requests.c.id)
Index("ix_requests_status_created_at", requests.c.status, requests.c.created_at, requests.c.id)
Index("ix_decisions_approver_id", decisions.c.approver_id, decisions.c.request_id)
Index("ix_decisions_approver_email", decisions.c.approver_email, decisions.c.request_id)
