"""requesters as identities: requests.requester_email and requests.requester_slack_id

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 10:00:00

Self-approval was refused by comparing `on_behalf_of`, free text, with the clicker's Slack email, so
a display-name form, a +tag, a mailto: or a full-width letter let a requester approve their own
request. A request now also stores who the requester is: the normalised mailbox of an email
requester and the Slack user it resolved to at intake (or the Slack user ID the agent gave).
`on_behalf_of` stays as the agent sent it, for display. Rows written before this migration keep
both columns empty: the self-approval check normalises their `on_behalf_of` instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("requester_email", sa.String(length=320), nullable=True))
    op.add_column("requests", sa.Column("requester_slack_id", sa.String(length=40), nullable=True))


def downgrade() -> None:
    op.drop_column("requests", "requester_slack_id")
    op.drop_column("requests", "requester_email")
