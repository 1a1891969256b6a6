"""audit indexes: every compliance filter and the export order have an index

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 12:00:00

GET /v1/audit/chains and `approvals audit export` page through requests in (created_at, id) order,
filtered by agent, policy, status, approver or time. Without these a page of an unfiltered export,
a date range, or a rare status or policy sorts or scans the whole requests table, and an approver
filter scans every decision. The agent filter already has ix_requests_agent_id_created_at.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEXES = [
    ("ix_requests_created_at_id", "requests", ["created_at", "id"]),
    ("ix_requests_policy_name_created_at", "requests", ["policy_name", "created_at", "id"]),
    ("ix_requests_status_created_at", "requests", ["status", "created_at", "id"]),
    # With request_id, an approver's requests come from the index alone (no visit to each decision).
    ("ix_decisions_approver_id", "decisions", ["approver_id", "request_id"]),
    ("ix_decisions_approver_email", "decisions", ["approver_email", "request_id"]),
]


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
