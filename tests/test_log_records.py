"""ui.records: a log record's text made once, by the right thread, bounded."""

from __future__ import annotations

import logging
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qtasks_cli import offloop
from qtasks_cli.ui import records

GATE = threading.Event()


class Hung:
    def __str__(self) -> str:
        GATE.wait(30)
        return "late"


def record(msg: object, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("shop", logging.INFO, __file__, 1, msg, args or None, info)


plain_values = st.one_of(st.text(), st.integers(), st.floats(), st.booleans(), st.none())


@given(st.lists(plain_values, max_size=5))
def test_plain_records_are_settled_where_they_are_even_on_the_loop(values: list[object]) -> None:
    r = record(" ".join(["%r"] * len(values)), *values)
    assert records.is_plain(r)
    assert records.settle(r, "defer")
    assert r.args is None and r.getMessage() == " ".join(repr(v) for v in values)


def test_a_record_that_needs_job_code_is_deferred_then_given_up_in_a_helper(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(offloop, "TEXT_TIMEOUT", 0.2)
    r = record("connection %s is slow", Hung())
    assert not records.is_plain(r)
    assert not records.settle(r, "defer")  # the loop hands it on untouched
    assert r.args is not None
    try:
        assert records.settle(r, "helper")
        assert "its text was not ready within" in r.getMessage()
    finally:
        GATE.set()


def test_traceback_and_size_are_cut_and_text_is_made_once() -> None:
    calls = []

    class Counted:
        def __str__(self) -> str:
            calls.append(1)
            return "x" * (records.MAX_CHARS * 3)

    try:
        raise ValueError("boom")
    except ValueError as exc:
        r = record("%s", Counted(), exc=exc)
    assert records.settle(r, "inline") and records.settle(r, "helper")
    assert len(calls) == 1
    assert len(r.getMessage()) < records.MAX_CHARS + 8 * 1024
    assert r.exc_info is None and r.exc_text is not None and "ValueError: boom" in r.exc_text


def test_a_message_that_raises_system_exit_is_a_placeholder() -> None:
    class Exits:
        def __str__(self) -> str:
            raise SystemExit(7)

    r = record("%s", Exits())
    assert records.settle(r, "inline")
    assert "could not be formatted: SystemExit" in r.getMessage()
