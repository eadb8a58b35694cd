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


def _event_line(event: object, *, journal: bool) -> str:
    from qtasks_cli.ui.log import PlainFormatter, event_level

    record = logging.LogRecord("qtasks.events", event_level(event), "", 0, "", (), None)  # type: ignore[arg-type]
    record.qtasks_event = event
    return PlainFormatter(journal=journal).format(record)


_LINE = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


_ONE_LINE = _LINE.filter(lambda t: bool(t.strip()) and t.splitlines() == [t])


@given(problems=st.lists(_ONE_LINE, min_size=1, max_size=5), journal=st.booleans())
def test_a_refused_files_problems_follow_the_record_one_per_line(
    problems: list[str], journal: bool
) -> None:
    """A multi-line message of the daemon's own (a reload's refused file) is shown as lines,
    never with a literal \\n; each line is cleaned of terminal controls."""
    from datetime import datetime, timezone

    from qtasks_cli.events import ReloadFailed

    message = "(the old configuration keeps running):\n" + "\n".join(problems)
    text = _event_line(
        ReloadFailed(time=datetime.now(timezone.utc), message=message), journal=journal
    )
    lines = text.split("\n")
    assert len(lines) == 1 + len(problems), lines
    assert lines[0].endswith("(the old configuration keeps running):"), lines[0]
    for line in lines:
        assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in line), line
        if journal:
            assert line.startswith("<3>ERROR"), line
    if not journal:
        assert all(line.startswith("  ") for line in lines[1:]), lines


@given(error=_LINE, journal=st.booleans())
def test_a_jobs_error_stays_on_its_records_line(error: str, journal: bool) -> None:
    """A job's text never makes a line of its own: its breaks are shown as \\n."""
    from datetime import datetime, timezone

    from qtasks_cli.events import Finished
    from qtasks_cli.models import RunStatus

    event = Finished(
        time=datetime.now(timezone.utc), job="j", run_id="r", status=RunStatus.FAILED,
        error=f"first\n{error}\nlast", level=logging.ERROR,
    )  # fmt: skip
    text = _event_line(event, journal=journal)
    assert "\n" not in text and "first\\n" in text, text
