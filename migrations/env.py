"""Alembic environment: migrations run on a connection our code hands over (see app/migrate.py)."""

from __future__ import annotations

from alembic import context

from approvals.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations with `approvals migrate`, which supplies the database connection")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
