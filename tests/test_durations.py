"""Durations as written in policies.yml."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from approvals.durations import MAX_SECONDS, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (1, 1),
        (300, 300),
        ("300", 300),
        ("90s", 90),
        ("15m", 900),
        ("24h", 86_400),
        ("7d", 604_800),
        ("366d", MAX_SECONDS),
        (MAX_SECONDS, MAX_SECONDS),
        (" 15m ", 900),
    ],
)
def test_accepts_seconds_and_suffixed_numbers(value: str | int, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("15x", "'15x' is not a duration: use a number of seconds or a number followed by s, m, h or d"),
        ("", "is not a duration"),
        ("m", "is not a duration"),
        ("1.5h", "is not a duration"),
        ("15 m", "is not a duration"),
        ("15M", "is not a duration"),
        ("1h30m", "is not a duration"),
        ("-5m", "is not a duration"),
        ("\u0661\u0665m", "is not a duration"),  # Arabic-Indic digits, which int() would accept
        (0, "0 is not a duration: it must be positive"),
        ("0s", "it must be positive"),
        (-5, "it must be positive"),
        (True, "True is not a duration"),
        (False, "False is not a duration"),
        (1.5, "1.5 is not a duration"),
        (None, "None is not a duration"),
        ("367d", "'367d' is too long: durations are limited to 366 days"),
        (MAX_SECONDS + 1, "too long"),
        ("9" * 5000, "too long"),
    ],
)
def test_rejects_anything_else_with_a_clear_message(value: object, complaint: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_duration(value)  # type: ignore[arg-type]
    assert complaint in str(raised.value)


def test_zero_is_accepted_only_when_allowed() -> None:
    assert parse_duration(0, allow_zero=True) == 0
    assert parse_duration("0m", allow_zero=True) == 0
    with pytest.raises(ValueError, match="zero or more"):
        parse_duration(-1, allow_zero=True)


@given(st.integers(min_value=1, max_value=MAX_SECONDS // 60))
def test_minutes_are_sixty_seconds_each(n: int) -> None:
    assert parse_duration(f"{n}m") == 60 * n


@given(st.integers(min_value=1, max_value=MAX_SECONDS))
def test_a_number_of_seconds_reads_the_same_as_int_string_or_s_suffix(n: int) -> None:
    assert parse_duration(n) == parse_duration(str(n)) == parse_duration(f"{n}s") == n


@given(st.integers(min_value=MAX_SECONDS // 86_400 + 1, max_value=10**9))
def test_more_than_366_days_is_always_too_long(days: int) -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_duration(f"{days}d")
