"""Text a job or a job file controls is read in time linear in its length: a regular
expression that backtracks over a long run of one character held the GIL for seconds (a line
of 30,000 OSC introducers froze the daemon's output thread, and with it the loop, for 2 s; 100,000
of them hung it). Each function is given 100,000 characters of every character class its
patterns care about, alone and in pairs; the bound is 50 times what a linear scan takes on a
busy machine and a twentieth of what the quadratic patterns took."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import pytest

from qtasks_cli import posixtz, redaction, text
from qtasks_cli.durations import DurationError, parse_duration

LENGTH = 100_000
BOUND = 5.0  # seconds for one call; quadratic patterns took 40-60 s on this length

SPECIAL = (
    [chr(c) for c in range(0x00, 0x20)]
    + [chr(c) for c in range(0x7F, 0xA0)]
    + list("[]\\P^_X;0a: -+.$%{}\"'")
    + ["\u200b", "\u2028", "\u202e", "\ufeff", "\ud800"]
)
PAIRS = ["\x1b", "\x9d", "\x9b", "\x90", "\\", "0", "a", ":", "\u2028", "["]


def inputs() -> list[str]:
    found = [c * LENGTH for c in SPECIAL]
    found += [(a + b) * (LENGTH // 2) for a, b in itertools.product(PAIRS, repeat=2)]
    found += ["\x9d" + "a" * LENGTH, "\x1b]" + "a" * LENGTH + "\x1b", "1h" * (LENGTH // 2) + "x"]
    return found


def _quiet(fn: Callable[[str], object]) -> Callable[[str], object]:
    def call(value: str) -> object:
        try:
            return fn(value)
        except (ValueError, DurationError):
            return None

    return call


FUNCTIONS: dict[str, Callable[[str], object]] = {
    "strip_sequences": text.strip_sequences,
    "visible": text.visible,
    "clean_text": text.clean_text,
    "clean_line": text.clean_line,
    "redact": lambda value: redaction.redact(value, (("hunter2", "${TOKEN}"),)),
    "parse_duration": _quiet(parse_duration),
    "canonical_rule": _quiet(posixtz.canonical_rule),
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_job_controlled_text_is_read_in_linear_time(name: str) -> None:
    fn = FUNCTIONS[name]
    slow = []
    for value in inputs():
        started = time.perf_counter()
        fn(value)
        took = time.perf_counter() - started
        if took > BOUND:
            slow.append((repr(value[:8]), round(took, 2)))
    assert not slow, f"{name} backtracks: {slow}"


def test_a_control_string_ends_where_a_terminal_leaves_it() -> None:
    """Any C1 control, CAN, SUB or ESC ends an OSC/DCS/SOS/PM/APC string (vt100.net's DEC
    parser): a string ended by BEL or ST goes with its payload; one left by anything else
    loses only its introducer."""
    strip = text.strip_sequences
    assert strip("a\x1b]0;title\x07b") == "ab"
    assert strip("a\x9d52;c;eA==\x9cb") == "ab"
    assert strip("a\x1bPq#0\x1b\\b") == "ab"
    assert strip("a\x9dtitle\x9dnext\x07b") == "atitleb"  # the second string starts anew
    assert strip("a\x1b]title\x18rest") == "atitle\x18rest"  # CAN: not ended
    assert strip("\x9d" * 5 + "x") == "x"
