"""click inbox: slack_clicks.next_attempt_at, when a click whose clicker Slack could not resolve is tried again

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 16:45:00

A click whose clicker `users.info` could not resolve used to be taken up again by every stranded-click
sweep (every two seconds, forever). It now waits until `next_attempt_at`, which doubles with each
failed attempt; after a few attempts (counted in the existing `attempts` column) it is refused with an
audit event. Both live in the row, so the schedule survives a restart and holds across replicas.
Existing clicks have no time set: they are due at once, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("slack_clicks", sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("slack_clicks", "next_attempt_at")
