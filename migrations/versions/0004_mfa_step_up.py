"""MFA step-up: identity links, step-up intents, latest verified step-ups

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 02:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "identity_links",
        sa.Column("slack_user_id", sa.String(length=40), nullable=False),
        sa.Column("issuer", sa.String(length=500), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("linked_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("slack_user_id", name=op.f("pk_identity_links")),
        sa.UniqueConstraint("issuer", "subject", name="uq_identity_links_issuer_subject"),
    )
    op.create_table(
        "step_up_intents",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=40), nullable=False),
        sa.Column("approver_id", sa.String(length=40), nullable=False),
        sa.Column("decision", sa.String(length=10), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("click", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=64), nullable=True),
        sa.Column("nonce", sa.String(length=64), nullable=True),
        sa.Column("code_verifier", sa.String(length=128), nullable=True),
        sa.Column("failure", sa.String(length=40), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("expires_at", UTC_TIME, nullable=False),
        sa.Column("finished_at", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"], ["requests.id"], name=op.f("fk_step_up_intents_request_id_requests")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_step_up_intents")),
        sa.UniqueConstraint("state", name=op.f("uq_step_up_intents_state")),
    )
    op.create_index("ix_step_up_intents_request_id", "step_up_intents", ["request_id"])
    op.create_table(
        "step_ups",
        sa.Column("slack_user_id", sa.String(length=40), nullable=False),
        sa.Column("issuer", sa.String(length=500), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("amr", sa.JSON(), nullable=False),
        sa.Column("acr", sa.String(length=255), nullable=True),
        sa.Column("auth_time", UTC_TIME, nullable=False),
        sa.Column("verified_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("slack_user_id", name=op.f("pk_step_ups")),
    )


def downgrade() -> None:
    op.drop_table("step_ups")
    op.drop_index("ix_step_up_intents_request_id", table_name="step_up_intents")
    op.drop_table("step_up_intents")
    op.drop_table("identity_links")
