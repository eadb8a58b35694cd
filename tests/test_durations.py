from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qtasks_cli.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (0, 0),
        (30, 30),
        (1.5, 1.5),
        ("45", 45),
        ("500ms", 0.5),
        ("30s", 30),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1m30s250ms", 90.25),
        (" 2h ", 7200),
        ("1.5h", 5400),
    ],
)
def test_parses(text: object, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "bad", ["", "abc", "5x", "-5s", -1, "1h-30m", "h", True, None, [1], "30 s s", float("nan")]
)
def test_rejects(bad: object) -> None:
    with pytest.raises(DurationError) as err:
        parse_duration(bad)
    assert "expected seconds or a duration" in str(err.value)


def test_negative_message_says_negative() -> None:
    with pytest.raises(DurationError, match="negative"):
        parse_duration("-5s")


@given(st.integers(min_value=0, max_value=10**9))
def test_format_round_trips(ms: int) -> None:
    delta = timedelta(milliseconds=ms)
    assert parse_duration(format_duration(delta)) == delta


def test_format_examples() -> None:
    assert format_duration(timedelta(hours=1, minutes=30)) == "1h30m"
    assert format_duration(timedelta(milliseconds=500)) == "500ms"
    assert format_duration(timedelta(0)) == "0s"
