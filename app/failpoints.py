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

Rows leased by the killed process are retaken once their lease runs out: the crash-safety tests
shorten it with the APPROVALS_OUTBOX_LEASE_SECONDS setting (app/config.py).
"""

from __future__ import annotations

import os
import signal
import sys

FAILPOINT_ENV = "APPROVALS_FAILPOINT"


def failpoint(name: str) -> None:
    """SIGKILL this process when APPROVALS_FAILPOINT is `name`; otherwise do nothing at all."""
    if os.environ.get(FAILPOINT_ENV) != name:
        return
    sys.stderr.write(f"failpoint {name}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
