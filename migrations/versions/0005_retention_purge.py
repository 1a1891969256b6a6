"""retention purge: signed purge records, purged events' hashes, a trigger that lets only a purge delete

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 10:00:00

On PostgreSQL the append-only trigger of 0001 is replaced by one that still refuses every UPDATE and
TRUNCATE of audit_events, and every DELETE except one made by a retention purge: the transaction has
set `approvals.purge` to the number of the latest purge record, that record's boundary is at least
365 days old, the row is older than the boundary, and the row's id, chain, seq and hash are already
recorded under that purge. So no event can leave without its hash staying behind for verification.
The purge tables themselves are append-only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger()

PURGE_AWARE_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    purge_no integer;
BEGIN
    IF TG_OP = 'DELETE' THEN
        purge_no := NULLIF(current_setting('approvals.purge', true), '')::integer;
        IF purge_no IS NOT NULL AND EXISTS (
            SELECT 1
            FROM audit_purges g
            JOIN audit_purged_events p ON p.purge_number = g.number
            WHERE g.number = purge_no
              AND g.number = (SELECT max(number) FROM audit_purges)
              AND g.boundary <= now() - interval '365 days'
              AND OLD.created_at < g.boundary
              AND p.event_id = OLD.id
              AND p.chain_id = OLD.chain_id
              AND p.seq = OLD.seq
              AND p.hash = OLD.hash
        ) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP;
END;
$$
"""

# The function as migration 0001 created it, restored on downgrade.
ORIGINAL_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP;
END;
$$
"""

PURGE_TABLES_FUNCTION = """
CREATE FUNCTION audit_purges_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP;
END;
$$
"""

PURGE_TABLES = ("audit_purges", "audit_purged_events")


def upgrade() -> None:
    op.create_table(
        "audit_purges",
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("purged_at", UTC_TIME, nullable=False),
        sa.Column("boundary", UTC_TIME, nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=False),
        sa.Column("checkpoint_number", sa.Integer(), nullable=False),
        sa.Column("last_event_id", BIG_ID, nullable=False),
        sa.Column("chain_count", sa.Integer(), nullable=False),
        sa.Column("event_count", BIG_ID, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_audit_purges")),
    )
    op.create_table(
        "audit_purged_events",
        sa.Column("event_id", BIG_ID, autoincrement=False, nullable=False),
        sa.Column("purge_number", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.String(length=80), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["purge_number"],
            ["audit_purges.number"],
            name=op.f("fk_audit_purged_events_purge_number_audit_purges"),
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_audit_purged_events")),
    )
    op.create_index("ix_audit_purged_events_purge_number", "audit_purged_events", ["purge_number"])
    op.create_index("ix_outbox_request_id", "outbox", ["request_id"])
    op.create_index("ix_slack_clicks_request_id", "slack_clicks", ["request_id"])

    # The existing triggers call this function by name: replacing it is enough.
    op.execute(PURGE_AWARE_FUNCTION)
    op.execute(PURGE_TABLES_FUNCTION)
    for table in PURGE_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION audit_purges_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_purges_append_only()"
        )


def downgrade() -> None:
    for table in PURGE_TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
    op.execute("DROP FUNCTION IF EXISTS audit_purges_append_only()")
    op.execute(ORIGINAL_FUNCTION)
    op.drop_index("ix_slack_clicks_request_id", table_name="slack_clicks")
    op.drop_index("ix_outbox_request_id", table_name="outbox")
    op.drop_index("ix_audit_purged_events_purge_number", table_name="audit_purged_events")
    op.drop_table("audit_purged_events")
    op.drop_table("audit_purges")
