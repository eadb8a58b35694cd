"""The live table's screen thread: ``show`` never blocks, frames made while the terminal is
stopped replace each other, and closing waits a bounded time."""

from __future__ import annotations

import threading
import time

from qtasks_cli.ui.screen import Screen


def wait_until(predicate, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_a_stopped_terminal_blocks_only_the_screen_thread() -> None:
    stopped = threading.Event()  # set: the terminal takes output (Ctrl-Q)
    painted: list[int] = []
    entered = threading.Event()

    def paint(frame: int) -> None:
        entered.set()
        stopped.wait(30)
        painted.append(frame)

    screen = Screen(paint=paint, begin=lambda: None, end=lambda: None, on_error=lambda e: None)
    screen.show(0)
    assert entered.wait(30)
    for frame in range(1, 1001):  # a thousand frames while the terminal is stopped
        screen.show(frame)
    # None of them waited for the terminal: one that had would have waited out the stopped
    # paint (30 s) and found frame 0 painted by then.
    assert painted == []
    stopped.set()
    wait_until(lambda: painted and painted[-1] == 1000)
    assert painted == [0, 1000]  # the frames made meanwhile replaced each other
    assert screen.close(30)


def test_close_gives_up_on_a_terminal_that_stays_stopped() -> None:
    never = threading.Event()
    screen = Screen(
        paint=lambda frame: never.wait(60),  # type: ignore[arg-type, return-value]
        begin=lambda: None,
        end=lambda: None,
        on_error=lambda e: None,
    )
    screen.show(1)
    time.sleep(0.05)
    assert not screen.close(0.3)  # had it waited out the paint (60 s), it would say True
    never.set()


def test_a_hung_up_terminal_is_reported_once() -> None:
    errors: list[OSError] = []

    def paint(frame: int) -> None:
        raise OSError(5, "Input/output error")

    screen = Screen(paint=paint, begin=lambda: None, end=lambda: None, on_error=errors.append)
    screen.show(1)
    wait_until(lambda: errors)
    screen.show(2)
    assert screen.close(30)
    assert len(errors) == 1 and screen.failed
