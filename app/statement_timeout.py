"""A bound on each SQL statement of the service's own paths, and the way out of it.

A statement stuck behind a lock (a transaction that never ends) or on an overloaded server would
otherwise hold an agent's request or a Slack click forever. The server enforces the limit, so it
does not help against a server that is frozen outright (SIGSTOP): that needs the server back.

The bound is set on every connection of the serve process's pool when it is opened (the libpq
`options` parameter, app.database.build_engine), so the hot paths (intake, clicks, deliveries) pay
no round trip for it. What is legitimately long takes the `unbounded(engine)` view of the same
pool instead, whose every transaction starts with `SET LOCAL statement_timeout = 0`: compliance
reads (GET /v1/audit/chains can count a year of requests), the scheduler's sweeps, migrations.
SET LOCAL ends with the transaction and so never leaks to the next user of the pooled connection.
A statement that runs out is cancelled by the server (SQLSTATE 57014, `query_canceled`) and its
whole transaction rolls back; app.http.errors answers it with a 503. The CLI's engines (exports,
verification, the retention purge) carry no bound at all.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

OPTION = "approvals_unbounded"
QUERY_CANCELED = "57014"


def unbounded(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (same pool, same connections) whose transactions lift the statement bound."""
    if not event.contains(engine.sync_engine, "begin", _lift_timeout):
        event.listen(engine.sync_engine, "begin", _lift_timeout)
    return engine.execution_options(**{OPTION: True})


def _lift_timeout(conn: Any) -> None:
    # Runs for every transaction of the engine and its views; only the unbounded view carries the option.
    if conn.get_execution_options().get(OPTION):
        conn.exec_driver_sql("SET LOCAL statement_timeout = 0")


def is_statement_timeout(exc: BaseException) -> bool:
    """True for a statement the server cancelled (our timeout, or an operator's pg_cancel_backend)."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == QUERY_CANCELED
