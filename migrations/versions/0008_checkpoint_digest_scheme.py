"""checkpoint scheme: which running-hash form a signed checkpoint uses

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 15:10:00

Scheme 1 (every checkpoint before this migration) advances a running hash one event at a time:
SHA-256 over the previous value and each covered event's hash, in id order. That is a chain of
millions of tiny hashes, which only a client can walk. Scheme 2 hashes the previous checkpoint's
running hash and every covered event's hash, in id order, as one SHA-256 over their concatenation:
the same commitment to the same sequence, which PostgreSQL computes itself (string_agg, sha256)
when `approvals audit verify` checks it. Existing checkpoints keep scheme 1 and verify as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scheme", sa.SmallInteger(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("audit_checkpoints", schema=None) as batch_op:
        batch_op.drop_column("scheme")
