"""outbox claim by kind: an index on (status, kind, next_attempt_at, id)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 15:00:00

A dispatcher claims only the kinds it has a handler for (no Slack settings: callbacks only). With the
index on (status, next_attempt_at) every claim walked past all the pending rows of the kinds it cannot
deliver (Slack cards queued while Slack is switched off, which wait for a replica or restart with Slack
configured), so claims got slower the more of them waited. The claim now asks per kind, and this index
answers each such claim in due order without visiting other kinds' rows. It replaces the old index,
which served only that claim.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_status_kind_next_attempt_at", ["status", "kind", "next_attempt_at", "id"], unique=False
        )
        batch_op.drop_index("ix_outbox_status_next_attempt_at")


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_status_next_attempt_at", ["status", "next_attempt_at"], unique=False)
        batch_op.drop_index("ix_outbox_status_kind_next_attempt_at")
