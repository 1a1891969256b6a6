"""Text PostgreSQL can store, checked where it enters (agent JSON, query strings, Slack input).

PostgreSQL refuses a NUL character in text and JSON columns, and cannot encode a lone surrogate.
Refusing such text at the edge gives the caller a 4xx naming the field instead of a 500 from deep inside
a transaction.
"""

from __future__ import annotations

from typing import Any

NUL_MESSAGE = "must not contain a NUL character (\\u0000)"
SURROGATE_MESSAGE = "must be valid Unicode (a lone surrogate such as \\ud800 cannot be stored)"


def unstorable(text: str) -> str | None:
    """Why `text` cannot be stored, or None when it can."""
    if "\x00" in text:
        return NUL_MESSAGE
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return SURROGATE_MESSAGE
    return None


def _printable_key(key: str) -> str:
    # The field path goes back in a JSON error: escape what made the key unstorable, keep the rest.
    return "".join(f"\\u{ord(ch):04x}" if ch == "\x00" or 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in key)


def first_unstorable(document: Any, root: str = "") -> tuple[str, str] | None:
    """The dotted path of the first string (key or value) that cannot be stored, and why.

    Walks with an explicit stack: the document may be nested as deeply as the JSON parser allowed,
    which a recursive walk would not survive.
    """
    stack: list[tuple[str, Any]] = [(root, document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            reason = unstorable(value)
            if reason is not None:
                return path, reason
        elif isinstance(value, dict):
            children: list[tuple[str, Any]] = []
            for key, child in value.items():
                child_path = f"{path}.{_printable_key(key)}" if path else _printable_key(key)
                children += [(child_path, key), (child_path, child)]  # a key is checked as its field
            stack.extend(reversed(children))  # reversed: popped in document order
        elif isinstance(value, list):
            stack.extend(reversed([(f"{path}.{i}" if path else str(i), v) for i, v in enumerate(value)]))
    return None
