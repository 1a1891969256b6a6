"""The one Jinja2 environment the service's HTML pages are rendered with (app/templates/*.j2).

Autoescaping is on for every template, whatever its name: the pages show text agents, Slack and
identity providers supplied, and a value reaches the markup only through `{{ }}`, which escapes it.
StrictUndefined turns a misspelt name in a template into an error instead of an empty string that
would quietly drop a figure from the auditor's report.

jinja2 is imported on first use, not with this module: the CLI imports the modules that render pages
when any of their commands runs, and only `audit report` renders one.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jinja2


@functools.cache
def environment() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("app", "templates"),
        # select_autoescape with default_for_string: every template escapes, *.html.j2 and any other.
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
