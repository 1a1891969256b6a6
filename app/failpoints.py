"""Test hooks for crash-safety tests: kill this process at a named moment. Inert unless asked.

`failpoint(name)` does nothing unless the environment variable APPROVALS_FAILPOINT equals `name`.
When it does, it writes `failpoint <name>` to stderr and sends this process SIGKILL: no `finally`,
no shutdown handler, no flush of anything else runs, exactly as when the machine loses power or the
kernel's OOM killer strikes. tests/test_crash_safety.py starts `approvals serve` with the variable
set, drives it to that moment, then restarts it without the variable and checks nothing was lost or
done twice. Never set APPROVALS_FAILPOINT in production.

The names in use:

| name | where |
|---|---|
| `before_<kind>` | the outbox dispatcher leased a row of that kind and is about to run its handler |
| `after_<kind>` | the handler returned (Slack or the agent has it) and the row is not settled yet |
| `after_click_ack` | an Approve click is stored and acknowledged to Slack, not decided yet |

Kinds are the outbox kinds: `slack_notify`, `slack_post`, `slack_update`, `callback`.

`outbox_lease(default)` is the matching knob for the outbox lease: APPROVALS_OUTBOX_LEASE_SECONDS
overrides how long a row leased by one process stays invisible to the others (60 s by default).
A row whose process died mid-delivery is retried once its lease runs out, so tests shorten it to a
second. An operator may lower it too, but never below the longest delivery (Slack and callback
timeouts are 10 s): a lease that runs out while its delivery is still in flight lets another replica
deliver the same row a second time.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys

FAILPOINT_ENV = "APPROVALS_FAILPOINT"
LEASE_ENV = "APPROVALS_OUTBOX_LEASE_SECONDS"
MAX_LEASE_SECONDS = 3600.0


def failpoint(name: str) -> None:
    """SIGKILL this process when APPROVALS_FAILPOINT is `name`; otherwise do nothing at all."""
    if os.environ.get(FAILPOINT_ENV) != name:
        return
    sys.stderr.write(f"failpoint {name}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def outbox_lease(default: dt.timedelta) -> dt.timedelta:
    """The outbox lease: APPROVALS_OUTBOX_LEASE_SECONDS when set, else `default`."""
    raw = os.environ.get(LEASE_ENV, "").strip()
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= MAX_LEASE_SECONDS:  # also false for NaN
        from app.bootstrap import StartupError  # imported here: bootstrap imports the dispatcher

        raise StartupError(
            f"{LEASE_ENV}: must be a number of seconds above 0 and at most {MAX_LEASE_SECONDS:g}, got {raw!r}"
        )
    return dt.timedelta(seconds=seconds)
