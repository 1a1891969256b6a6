"""Every log line is JSON, ours and the libraries' alike, and none carries a credential."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest
import structlog

from app.logs import configure_logging


@pytest.fixture(autouse=True)
def restored_logging() -> Iterator[None]:
    """configure_logging sets the process's logging up: put back what pytest had."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # An earlier test in this process (a CLI run in-process) may have captured warnings already, and
    # pytest has since put its own recorder in place: start from "not captured", as a fresh process does.
    logging.captureWarnings(False)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def test_library_records_and_ours_are_json_lines_scrubbed_of_credentials() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    structlog.get_logger("approvals").info("started", token="xoxb-123", note="key apk_abcdef")
    logging.getLogger("slack_bolt.App").warning(
        "As you gave `client` as well, `token` will be unused. xoxb-999"
    )
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    structlog.get_logger("approvals").debug("below the level")
    logging.getLogger("apscheduler.scheduler").info("quieted: below WARNING for this library")
    warnings.warn("a library's warning", RuntimeWarning, stacklevel=1)

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("approvals", "info"),
        ("slack_bolt.App", "warning"),
        ("aiohttp.server", "error"),
        ("py.warnings", "warning"),
    ]
    assert all(line["timestamp"].endswith("Z") for line in lines)
    assert lines[0]["token"] == "[redacted]" and lines[0]["note"] == "key apk_[redacted]"
    assert "xoxb-999" not in lines[1]["event"] and "xoxb-[redacted]" in lines[1]["event"]
    assert "ZeroDivisionError" in lines[2]["exception"]
