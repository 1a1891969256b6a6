"""The tests' polling helper: it returns what the check found, and fails naming what it waited for."""

from __future__ import annotations

import pytest

from tests.eventually import eventually, eventually_sync


async def test_returns_the_first_truthy_value() -> None:
    values = iter([None, 0, [], ["found"]])

    async def check() -> list[str] | int | None:
        return next(values)

    assert await eventually(check, interval=0, what="a value") == ["found"]


async def test_fails_naming_what_it_waited_for_and_the_last_value() -> None:
    async def check() -> int:
        return 0

    with pytest.raises(AssertionError, match=r"waited 0\.1 s for the card to be posted; last value seen 0"):
        await eventually(check, timeout=0.1, what="the card to be posted")


async def test_a_time_out_inside_the_check_is_not_taken_for_the_deadline() -> None:
    async def check() -> bool:
        raise TimeoutError("the client's own")

    with pytest.raises(TimeoutError, match="the client's own"):
        await eventually(check, what="anything")


def test_the_sync_twin_returns_the_value_and_fails_the_same_way() -> None:
    values = iter([False, "ready"])
    assert eventually_sync(lambda: next(values), interval=0, what="a value") == "ready"
    with pytest.raises(
        AssertionError, match=r"waited 0\.05 s for serve to become ready; last value seen None"
    ):
        eventually_sync(lambda: None, timeout=0.05, interval=0.01, what="serve to become ready")
