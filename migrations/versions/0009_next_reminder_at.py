"""reminders: requests.next_reminder_at, and a partial index of the pending requests that have one

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 18:45:00

The reminder sweep used to read the 500 oldest pending requests that have a policy rule and look for
a `remind_at` point that had come due among them: with more than 500 pending requests, the ones
after the oldest 500 were never reminded (or escalated) while those stayed pending. Each request now
says when the sweep next has work for it, and the sweep reads only requests that are due, in that
order. Pending requests whose rule has reminders are due at once after this migration: the sweep
works out which of their points have passed (a reminder already sent is never sent twice) and moves
each on to its next point.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

PENDING_WITH_ONE = "status = 'pending' AND next_reminder_at IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_reminder_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_requests_next_reminder_at",
        "requests",
        ["next_reminder_at"],
        unique=False,
        postgresql_where=sa.text(PENDING_WITH_ONE),
    )
    bind = op.get_bind()
    pending = bind.execute(sa.text("SELECT id, policy_rule FROM requests WHERE status = 'pending'"))
    due = [row.id for row in pending if _has_reminders(row.policy_rule)]
    for start in range(0, len(due), 1000):
        bind.execute(
            sa.text("UPDATE requests SET next_reminder_at = created_at WHERE id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": due[start : start + 1000]},
        )


def _has_reminders(rule: Any) -> bool:
    return bool(isinstance(rule, dict) and rule.get("remind_at"))


def downgrade() -> None:
    op.drop_index("ix_requests_next_reminder_at", table_name="requests")
    op.drop_column("requests", "next_reminder_at")
