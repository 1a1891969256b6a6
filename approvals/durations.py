"""Durations as written in policies.yml: a number of seconds, or a number followed by s, m, h or d.

`parse_duration` turns `300`, `"300"`, `"90s"`, `"15m"`, `"24h"` or `"7d"` into seconds and rejects
everything else with a `ValueError` whose message can be shown to an operator as is.
"""

import re

MAX_SECONDS = 366 * 86_400
"""The longest duration accepted: anything longer is almost certainly a typo."""

_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3_600, "d": 86_400}
# ASCII digits only: `\d` would also accept other scripts' digits, which int() happily converts.
_DURATION = re.compile(r"([0-9]+)([smhd]?)")
_HINT = "use a number of seconds or a number followed by s, m, h or d"


def parse_duration(value: str | int, *, allow_zero: bool = False) -> int:
    """Return `value` in seconds; zero is rejected unless `allow_zero` is set."""
    # bool is an int subclass, and `required: true` must not read as one second.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} is not a duration: {_HINT}")
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{value!r} is not a duration: {_HINT}")
        digits, unit = match.groups()
        # Checked before int() so a thousand-digit string fails with this message, not Python's.
        if len(digits) > 12:
            raise ValueError(f"{value!r} is too long: durations are limited to 366 days")
        seconds = int(digits) * _UNIT_SECONDS[unit]
    if seconds < 0 or (seconds == 0 and not allow_zero):
        lowest = "zero or more" if allow_zero else "positive"
        raise ValueError(f"{value!r} is not a duration: it must be {lowest}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{value!r} is too long: durations are limited to 366 days")
    return seconds
