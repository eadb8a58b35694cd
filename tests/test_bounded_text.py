"""Text made from what jobs hand back (failures.py, previews.py, offloop.py): bounded in size
and work, contained against every BaseException, the same as json.dumps/repr where those are
cheap; and release.py, which frees a large result in slices."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtasks_cli import failures, offloop, previews, release

PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=30,
)


def same(text: str) -> str:
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PLAIN)
def test_preview_is_the_json_when_it_fits_else_at_most_200_characters(value: Any) -> None:
    text = previews.preview(value, same)
    assert len(text) <= failures.PREVIEW_CHARS
    full = json.dumps(value, ensure_ascii=False)
    if len(full) <= failures.PREVIEW_CHARS:
        assert text == full
    elif len(repr(value)) <= failures.PREVIEW_CHARS:
        assert text == repr(value)  # the JSON is longer (escapes, Infinity), the repr fits
    else:
        assert text.endswith("…")


@settings(max_examples=200, deadline=None)
@given(PLAIN)
def test_repr_preview_matches_repr_when_short(value: Any) -> None:
    text = previews.preview(value, same, as_json=False)
    full = repr(value)
    if len(full) < failures.PREVIEW_CHARS and not isinstance(value, (set, frozenset)):
        assert text == full
    assert len(text) <= failures.PREVIEW_CHARS


def test_huge_plain_values_are_previewed_from_their_first_items() -> None:
    big = list(range(10_000_000))
    assert previews.preview(big, same).startswith("[0, 1, 2, 3")
    blob = b"x" * (20 * 1024 * 1024)
    assert previews.preview(blob, same).startswith("b'xxx")
    assert len(previews.preview({"k": "v" * 10_000_000}, same)) == failures.PREVIEW_CHARS
    assert previews.preview(10**100_000, same) == "<int of 332193 bits>"


def test_a_secret_straddling_the_limit_is_redacted_whole() -> None:
    secret = "hunter2-sekret-" * 4
    text = "a" * (failures.PREVIEW_CHARS - 5) + secret
    shown = failures.redacted(text, failures.PREVIEW_CHARS, lambda t: t.replace(secret, "${PW}"))
    assert "hunter" not in shown


class ExitsOnStr(Exception):
    def __str__(self) -> str:
        raise SystemExit(7)


class InterruptsOnRepr:
    def __repr__(self) -> str:
        raise KeyboardInterrupt


class NotesRaise(Exception):
    @property
    def __notes__(self) -> list[str]:
        raise SystemExit(3)


@pytest.mark.parametrize("exc", [ExitsOnStr("x"), NotesRaise("with notes")])
def test_describe_exception_contains_every_base_exception(exc: BaseException) -> None:
    try:
        raise exc
    except BaseException as raised:
        error_type, message, _text = failures.describe_exception(raised, same)
    assert error_type
    assert len(message) <= failures.ERROR_CHARS
    if isinstance(exc, ExitsOnStr):
        assert message == "<ExitsOnStr whose str() raised SystemExit>"


def test_repr_that_raises_or_hangs_gives_a_placeholder_off_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(offloop, "TEXT_TIMEOUT", 0.2)
    release_hang = threading.Event()

    class Hangs:
        def __repr__(self) -> str:
            release_hang.wait(30)
            return "late"

    async def main() -> tuple[str, str, float]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        raised = await previews.preview_off_loop(InterruptsOnRepr(), same)
        started = time.monotonic()
        hung = await offloop.off_loop(lambda: repr(Hangs()), fallback="gave up", timeout=0.2)
        took = time.monotonic() - started
        task.cancel()
        release_hang.set()
        assert ticks > 0  # the loop ran while the repr hung in its thread
        return raised, hung, took

    raised, hung, took = asyncio.run(main())
    assert "<InterruptsOnRepr object whose repr() raised KeyboardInterrupt>" in raised
    assert hung == "gave up"
    assert took < 20


def test_a_large_list_nobody_holds_is_emptied_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(release, "CHECK_EVERY", 0.01)
    value = list(range(300_000))
    probe = value  # the test keeps a reference: it must not be touched
    release.adopt(value)
    del value
    deadline = time.monotonic() + 10
    time.sleep(0.1)
    assert len(probe) == 300_000  # still held here: left alone
    freed = threading.Event()

    class Witness:
        def __del__(self) -> None:
            freed.set()

    watched = [Witness(), *([object()] * 200_000)]
    release.adopt(watched)
    del watched
    assert freed.wait(max(0.0, deadline - time.monotonic())), "the list nobody holds was not freed"
    assert len(probe) == 300_000
    assert sys.getrefcount(probe) >= 2


def test_a_text_that_swallows_the_stop_stays_slowed_through_later_nudges(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stop is raised once; a second one could land in the slowing trace function, which
    turns tracing off for the thread (it used to: a given-up loop then spun a core for good)."""
    monkeypatch.setattr(offloop, "_THROTTLE", 0.02)
    stop = threading.Event()
    lines = [0]

    class Swallows(Exception):
        def __str__(self) -> str:
            while not stop.is_set():
                try:
                    while not stop.is_set():
                        lines[0] += 1
                except BaseException:  # swallows the request to stop too
                    pass
            return "ended"

    async def give_up() -> str:
        return await offloop.off_loop(lambda: str(Swallows()), fallback="gave up", timeout=0.1)

    try:
        assert asyncio.run(give_up()) == "gave up"
        deadline = time.monotonic() + 30
        while not offloop._Helpers.throttled and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        assert offloop._Helpers.throttled, "the late thread was never reached"
        for _ in range(5):  # later values ask late threads again, as the daemon does
            started, before = time.monotonic(), lines[0]
            for _ in range(20):
                offloop._nudge_stuck()
                threading.Event().wait(0.005)
            elapsed = time.monotonic() - started
            # Each counted line sleeps 0.02 s first (the loop line and the count: 2 lines).
            assert lines[0] - before <= elapsed / 0.02 + 5, (lines[0] - before, elapsed)
    finally:
        stop.set()
    deadline = time.monotonic() + 30
    while offloop.stuck_threads() and time.monotonic() < deadline:
        offloop._nudge_stuck()
        threading.Event().wait(0.05)
    assert offloop.stuck_threads() == 0


class _WhoLocks:
    """A stand-in for ``_Helpers.lock`` that notes every thread that takes it."""

    def __init__(self) -> None:
        self.inner = threading.Lock()
        self.takers: set[int] = set()

    def __enter__(self) -> bool:
        self.takers.add(threading.get_ident())
        return self.inner.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)


@pytest.mark.parametrize("swallows_once", [False, True])
def test_a_late_thread_never_takes_the_lock_the_loop_waits_on(
    monkeypatch: pytest.MonkeyPatch, swallows_once: bool
) -> None:
    """Once job code in a late helper thread ends (stopped, or ending by itself after the
    stop was swallowed), the thread's own lines are not slowed and take no lock the loop
    takes: they used to hold ``_Helpers.lock`` across two throttled lines, and the loop's
    next value froze for a second behind it."""
    monkeypatch.setattr(offloop, "_THROTTLE", 0.02)
    lock = _WhoLocks()
    monkeypatch.setattr(offloop._Helpers, "lock", lock)
    threads: list[threading.Thread] = []
    real_start = offloop._start_helper

    def noting(fn: Any, deliver: Any) -> Any:
        thread = real_start(fn, deliver)
        threads.append(thread)
        return thread

    monkeypatch.setattr(offloop, "_start_helper", noting)
    stop = threading.Event()

    class Spins(Exception):
        def __str__(self) -> str:
            swallowed = False
            while not stop.is_set():
                try:
                    while not stop.is_set():
                        pass
                except BaseException:
                    if not swallows_once or swallowed:
                        raise
                    swallowed = True
            return "ended"

    async def give_up() -> str:
        return await offloop.off_loop(lambda: str(Spins()), fallback="gave up", timeout=0.1)

    assert asyncio.run(give_up()) == "gave up"
    deadline = time.monotonic() + 30
    while not offloop._Helpers.throttled and time.monotonic() < deadline:
        offloop._nudge_stuck()
        threading.Event().wait(0.01)
    stop.set()
    threads[0].join(30)
    assert not threads[0].is_alive()
    assert threads[0].ident not in lock.takers, "a late thread took the loop's lock"
    assert offloop.stuck_threads() == 0


def test_only_the_class_whose_own_text_hung_is_not_called_again() -> None:
    """A slow text is blamed on the class whose ``__str__``/``__repr__`` ran in the late
    thread, never on the builtin class holding it: a slow traceback of chained ValueErrors
    once made every later ValueError of every job a placeholder."""
    gate = threading.Event()

    class SlowArg:
        def __str__(self) -> str:
            gate.wait(30)
            return "slow"

    class SlowError(Exception):
        def __str__(self) -> str:
            gate.wait(30)
            return "slow"

    async def give_up(fn: Any) -> str:
        return await offloop.off_loop(fn, fallback="gave up", timeout=0.1)

    try:
        # ValueError's own str() is C; the time goes to its argument's __str__.
        assert asyncio.run(give_up(lambda: failures.safe_str(ValueError(SlowArg())))) == "gave up"
        assert asyncio.run(give_up(lambda: failures.safe_str(SlowError()))) == "gave up"
        # Time spent in no text method at all (reading a traceback's source, say).
        assert asyncio.run(give_up(lambda: str(gate.wait(30)))) == "gave up"
    finally:
        gate.set()
    assert failures.safe_str(ValueError("an honest message")) == "an honest message"
    assert failures.safe_repr([ValueError("x")]) == "[ValueError('x')]"
    assert "hung before" in failures.safe_str(SlowError())
    assert "hung before" in failures.safe_repr(SlowArg())


def test_a_traceback_too_slow_to_format_keeps_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the part that is late is given up: a chain of 200,000 exceptions takes seconds to
    format, and its message (read first) used to be lost with it."""
    deadline = time.monotonic() + 60  # earlier tests' late threads end first (a busy machine)
    while offloop._nudge_stuck() and time.monotonic() < deadline:
        threading.Event().wait(0.05)
    monkeypatch.setattr(offloop, "TEXT_TIMEOUT", 0.2)
    release_format = threading.Event()

    def slow_format(exc: BaseException) -> str:
        release_format.wait(30)
        return "late"

    monkeypatch.setattr(failures, "format_user_traceback", slow_format)
    try:
        error_type, message, trace = asyncio.run(
            failures.describe_exception_off_loop(ValueError("an honest message"), same)
        )
    finally:
        release_format.set()
    assert (error_type, message) == ("ValueError", "an honest message")
    assert trace is not None and "could not be formatted" in trace
