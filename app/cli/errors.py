"""Database failures as one line an operator can act on: which database, what went wrong, what to check.

Every command opens the database the same way, so they fail the same ways: nothing listening, an unknown
host, a database that does not exist, credentials refused, a server that does not answer. The driver's
message names the cause; this turns it into a sentence naming APPROVALS_DATABASE_URL, never quoting a
password. `approvals --debug` shows the traceback instead.
"""

from __future__ import annotations

import re

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

# (pattern in the driver's message, what it means, what to do)
_CAUSES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (
        re.compile(r'database "(?P<name>[^"]+)" does not exist'),
        'the database "{name}" does not exist',
        "create it (createdb {name}) or fix the name in APPROVALS_DATABASE_URL",
    ),
    (
        re.compile(r"password authentication failed|no password supplied|role \"[^\"]+\" does not exist"),
        "the server refused the credentials",
        "check the user and password in APPROVALS_DATABASE_URL",
    ),
    (
        re.compile(r"could not translate host name|Name or service not known|nodename nor servname"),
        "the host name is unknown",
        "check the host in APPROVALS_DATABASE_URL",
    ),
    (
        re.compile(r"Connection refused|No such file or directory"),
        "nothing is listening there",
        "start PostgreSQL, or fix the host and port in APPROVALS_DATABASE_URL "
        "(unset it to use the embedded server)",
    ),
    (
        re.compile(r"timeout expired|timed out"),
        "the server did not answer in time",
        "check that the server is up and reachable from here",
    ),
)


def database_error_line(exc: BaseException, url: str | None) -> str | None:
    """One line for a failure to reach or use the database, or None when `exc` is not one."""
    if not isinstance(exc, DBAPIError):
        return None
    detail = str(getattr(exc, "orig", None) or exc)
    where = _where(url)
    for pattern, meaning, action in _CAUSES:
        found = pattern.search(detail)
        if found is not None:
            names = found.groupdict()
            return (
                f"error: cannot use the database {where}: {meaning.format(**names)}; {action.format(**names)}"
            )
    first = detail.strip().splitlines()[0] if detail.strip() else type(exc).__name__
    return f"error: the database {where} failed: {first} (run with --debug for the details)"


def _where(url: str | None) -> str:
    """The database as an operator would recognise it, without its password."""
    if url is None:
        return "(the embedded server)"
    try:
        parsed = make_url(url)
    except Exception:  # an unparsable URL was refused by the settings already; say little
        return "at APPROVALS_DATABASE_URL"
    host = parsed.host or parsed.query.get("host") or "localhost"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.database or '?'} at {host}{port}"
