"""Output that nobody reads, in process: writes never block, lines are dropped and counted, a
notice says how many once the reader is back, and the exit waits a bounded time. The installed
``qtasks run`` behind a stalled pipe or a stopped terminal: reliability/test_rel_output_stalls.py.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtasks_cli.ui import output

# --- in process ------------------------------------------------------------------------------


def test_a_full_pipe_drops_counts_and_tells_once_read_again() -> None:
    read_end, write_end = os.pipe()
    drain = output._TextDrain(write_end, "test", "utf-8", "strict")
    notices: list[int] = []
    drain.notice = notices.append  # type: ignore[method-assign]
    try:
        started = time.monotonic()
        for i in range(output.MAX_QUEUED * 3):
            drain.put(f"line {i} " + "z" * 100 + "\n", 1, 110)
        # Every write returned at once although nobody reads the pipe.
        assert time.monotonic() - started < 30
        assert drain.dropped.total > 0
        # The reader comes back: everything queued is written, then the notice. (On a busy
        # machine the puts may fill the queue while the first batch still fits in the pipe:
        # a first notice then tells those few, once that batch is written; every dropped
        # line is told once.)
        got = b""
        deadline = time.monotonic() + 30
        while sum(notices) < drain.dropped.total and time.monotonic() < deadline:
            os.set_blocking(read_end, False)
            try:
                got += os.read(read_end, 1 << 20)
            except BlockingIOError:
                time.sleep(0.01)
        assert sum(notices) == drain.dropped.total, notices
        assert got.startswith(b"line 0 ")
    finally:
        os.close(read_end)
        os.close(write_end)


def test_the_exit_does_not_wait_for_a_reader_that_never_reads() -> None:
    read_end, write_end = os.pipe()
    drain = output._TextDrain(write_end, "test", "utf-8", "strict")
    try:
        for _ in range(2000):
            drain.put("w" * 1000 + "\n", 1, 1001)
        started = time.monotonic()
        drain.settle(time.monotonic() + 30)
        waited = time.monotonic() - started
        # It gives up after STALL_WAIT without progress, long before the 30 s deadline.
        assert waited < 15, waited
        assert drain.queue.unfinished_tasks > 0
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_normal_exit_writes_what_is_queued(tmp_path: Path) -> None:
    """An error printed just before ``sys.exit`` reaches the reader (atexit drains the queue)."""
    script = (
        "import logging, sys\n"
        "from qtasks_cli.ui import log\n"
        "log.configure('plain')\n"
        "for i in range(2000):\n"
        "    print(f'out {i}')\n"
        "logging.getLogger('x').warning('a warning')\n"
        "print('the last error', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 3
    assert done.stdout.splitlines()[-1] == "out 1999"
    assert "the last error" in done.stderr
    assert "a warning" in done.stderr


# --- whole lines: a dropped piece takes its line with it, and a line counts once ---------------


class _Scripted(output._TextDrain):
    """A text drain whose queue accepts or refuses each piece as a script says (no thread)."""

    def __init__(self, script: list[bool]) -> None:
        self.script = iter(script)
        self.queued: list[str] = []
        super().__init__(-1, "test", "utf-8", "strict")

    def _run(self) -> None:  # no drain thread: the test reads ``queued``
        return

    def put(self, item: object, lines: int = 1, size: int = 0) -> bool:
        if next(self.script, True):
            self.queued.append(str(item))
            return True
        self.dropped.add(lines)
        return False


@st.composite
def _writes(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """Lines (line i is one character, ``chr(0x100 + i)``, repeated: a glued or mixed line
    shows) and the writes that made them: the text cut at random places, ``\n`` included."""
    lengths = draw(st.lists(st.integers(1, 5), min_size=1, max_size=12))
    lines = [chr(0x100 + i) * n for i, n in enumerate(lengths)]
    ended = draw(st.booleans())
    text = "\n".join(lines) + ("\n" if ended else "")
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=20))))
    bounds = [0, *[c for c in cuts if c < len(text)], len(text)]
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    return lines, pieces


@settings(max_examples=300, deadline=None)
@given(case=_writes(), script=st.lists(st.booleans(), max_size=30))
def test_dropping_keeps_whole_lines_and_counts_each_line_once(
    case: tuple[list[str], list[str]], script: list[bool]
) -> None:
    lines, pieces = case
    drain = _Scripted(script)
    for piece in pieces:
        drain.offer(piece)
    written = "".join(drain.queued).split("\n")
    if written[-1] == "":
        written.pop()
    # Each written line is one original line, whole or cut short: never glued to another,
    # never missing its middle, in order.
    seen: list[int] = []
    for line in written:
        assert line, (pieces, script, drain.queued)  # no line is empty: no stray newline
        index = ord(line[0]) - 0x100
        assert set(line) == {line[0]}, (pieces, script, drain.queued)
        assert len(line) <= len(lines[index]), (pieces, script, drain.queued)
        assert not seen or index > seen[-1], (pieces, script, drain.queued)
        seen.append(index)
    complete = sum(lines[i] in written for i in seen)
    # Exactly the lines not written whole are counted, each once however many of its pieces
    # were dropped.
    assert drain.dropped.total == len(lines) - complete, (pieces, script, drain.queued)
    # Nothing is counted when nothing was refused.
    if all(script[: len(pieces)]) and len(script) >= len(pieces):
        assert drain.dropped.total == 0 and "".join(drain.queued) == "".join(pieces)


def test_a_filter_a_job_adds_to_the_daemons_handler_sees_only_the_jobs_records() -> None:
    """``for h in logging.getLogger().handlers: h.addFilter(f)`` in a job: ``f`` runs for the
    job's own records, never for the daemon's (a slow one ran in every log line of the event
    loop; one that raised killed the daemon's threads that log)."""
    import logging

    read_end, write_end = os.pipe()
    drain = output._RecordDrain(write_end, logging.Formatter("%(name)s %(message)s"))
    handler = output.BoundedQueueHandler(drain)
    seen: list[str] = []

    class Picky(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(record.name)
            if record.name.startswith("shop"):
                return "keep" in record.getMessage()
            raise AttributeError("request_id")  # as `record.request_id is not None` would

    handler.addFilter(Picky())
    try:
        for name, message in (
            ("qtasks.supervisor", "tick fired"),
            ("asyncio", "task exception"),
            ("shop.orders", "keep this"),
            ("shop.orders", "drop this"),
        ):
            record = logging.LogRecord(name, logging.INFO, __file__, 1, message, (), None)
            handler.handle(record)
        assert seen == ["shop.orders", "shop.orders"]
        deadline = time.monotonic() + 30
        text = b""
        while text.count(b"\n") < 3 and time.monotonic() < deadline:
            text += os.read(read_end, 65536)
        assert text.decode().splitlines() == [
            "qtasks.supervisor tick fired",
            "asyncio task exception",
            "shop.orders keep this",
        ]
    finally:
        os.close(read_end)


def test_a_writer_redacting_megabytes_holds_no_lock_another_writer_waits_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tee that hides secrets in what is printed reads and redacts a write outside its
    lock: the event loop writes through it too (an async job's print, the held partial line
    of a run that ended), and it used to wait there while another thread's megabytes were
    redacted (a loop frozen 15 s, 14 fires missed)."""
    import io
    import threading

    from qtasks_cli import output as run_output
    from qtasks_cli import redaction

    inner = io.StringIO()
    tee = run_output._Tee(inner, 1, keep=False)
    entered, go_on = threading.Event(), threading.Event()
    real = redaction.redact_known

    def slow(text: str) -> str:
        if "big" in text:
            entered.set()
            assert go_on.wait(30)
        return real(text)

    monkeypatch.setattr(redaction, "known_secrets", lambda: True)
    monkeypatch.setattr(redaction, "redact_known", slow)
    big = threading.Thread(target=tee._put, args=("run-a", "big line\n"))
    big.start()
    try:
        assert entered.wait(30)
        others = threading.Thread(
            target=lambda: (
                tee._put("run-b", "hello\n"),
                tee._put("run-c", "partial"),
                tee.release("run-c"),
            )
        )
        others.start()
        others.join(30)
        assert not others.is_alive(), "a writer waited for another writer's redaction"
        assert inner.getvalue() == "hello\npartial"
    finally:
        go_on.set()
        big.join(30)
    assert inner.getvalue() == "hello\npartialbig line\n"
