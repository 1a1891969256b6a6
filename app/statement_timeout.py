"""A bound on each SQL statement of the interactive paths (agent API, Slack, step-up) on PostgreSQL.

A statement stuck behind a lock (a transaction that never ends) or on an overloaded server would
otherwise hold an agent's request or a Slack click forever. The server enforces the limit, so it
does not help against a server that is frozen outright (SIGSTOP): that needs the server back. The bound is per use case rather than per connection: exports,
verification and the retention purge are legitimately long and share the same pool, so they keep
no limit. `bounded(engine, seconds)` returns a view of the engine (same pool, same connections)
whose every transaction starts with `SET LOCAL statement_timeout`, which ends with the transaction
and so never leaks to the next user of the pooled connection. A statement that runs out is
cancelled by the server (SQLSTATE 57014, `query_canceled`) and its whole transaction rolls back;
app.http.errors answers it with a 503.

SQLite has no statement timeout (its writers already wait at most busy_timeout for the lock).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

OPTION = "approvals_statement_timeout_ms"
QUERY_CANCELED = "57014"


def bounded(engine: AsyncEngine, seconds: float) -> AsyncEngine:
    """The engine whose transactions bound each statement to `seconds` (0: the engine as it is)."""
    if seconds <= 0 or engine.dialect.name != "postgresql":
        return engine
    if not event.contains(engine.sync_engine, "begin", _set_local_timeout):
        event.listen(engine.sync_engine, "begin", _set_local_timeout)
    return engine.execution_options(**{OPTION: max(1, round(seconds * 1000))})


def _set_local_timeout(conn: Any) -> None:
    # Runs for every transaction of the engine and its views; only the bounded view carries the option.
    milliseconds = conn.get_execution_options().get(OPTION)
    if milliseconds:
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(milliseconds)}")


def is_statement_timeout(exc: BaseException) -> bool:
    """True for a statement the server cancelled (our timeout, or an operator's pg_cancel_backend)."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == QUERY_CANCELED
