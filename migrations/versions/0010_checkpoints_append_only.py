"""audit_checkpoints append-only: on PostgreSQL a trigger refuses every UPDATE, DELETE and TRUNCATE

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 16:40:00

Checkpoints are what make the removal of whole chains, or of the newest events, detectable: deleting
the newest checkpoints and every event after the last one left used to verify as OK. Like the events
and the purge records, they can now only be added to. The function of migration 0005 (which names
its table in the message) serves here too.
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints "
        "FOR EACH ROW EXECUTE FUNCTION audit_purges_append_only()"
    )
    op.execute(
        "CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_purges_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_no_truncate ON audit_checkpoints")
    op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_append_only ON audit_checkpoints")
