"""Structured JSON logs on stdout; a processor strips anything that looks like a credential."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_KEYS = re.compile(r"(token|secret|password|authorization|api_key|key_hash|cookie)", re.I)
_SECRET_VALUES = re.compile(r"(apk_|apa_|whsec_|xox[abprs]-|xapp-)[A-Za-z0-9_\-+/=]+")


def _scrub(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Secrets never reach the log, whoever passed them in by mistake."""
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key):
            event[key] = "[redacted]"
        elif isinstance(value, str):
            event[key] = _SECRET_VALUES.sub(r"\1[redacted]", value)
    return event


def configure_logging(level: str = "INFO", *, stream: TextIO = sys.stdout) -> None:
    """JSON lines: one event per line with a timestamp, level and logger name.

    Our events (structlog) and the libraries' (slack_bolt, aiohttp, apscheduler: the standard `logging`
    module) go through the same processors and the same JSON renderer, so every line is JSON and every
    line is scrubbed of credentials.
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _scrub,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # Python's warnings (a library's, say) as log lines too, not bare text
    for noisy in ("aiohttp.access", "apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # drop below-level events before any work is done on them
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
