"""``qtasks status --watch``: the live table of ``qtasks run``, drawn in another terminal from
what the store says, redrawn every second until Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from qtasks_cli.status import StatusReport
from qtasks_cli.ui.render import render
from qtasks_cli.ui.status_view import watch_frame

REDRAW_EVERY = 1.0  # seconds


def frame(report: StatusReport, width: int, height: int, *, ascii_only: bool = False) -> Any:
    """The renderable for one redraw (pure)."""
    snapshot, stats, lines = watch_frame(report)
    up = [d for d in report.daemons if d.alive]
    status = "" if up else "no daemon running"
    if any(d.reload_pending for d in up):
        status = "reload pending"
    return render(snapshot, stats, lines, width, height, status=status, ascii_only=ascii_only)


def watch(read: Callable[[], StatusReport], *, every: float = REDRAW_EVERY) -> int:
    """Redraw ``read()`` on the terminal behind stdout until Ctrl-C; return 0."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    ascii_only = "utf" not in encoding.lower()
    console = Console(force_terminal=True)
    stop = threading.Event()
    redraw = threading.Event()

    def on_stop(*_: Any) -> None:
        stop.set()
        redraw.set()

    previous = signal.signal(signal.SIGINT, on_stop)
    previous_term = signal.signal(signal.SIGTERM, on_stop)
    with contextlib.suppress(ValueError, AttributeError):
        signal.signal(signal.SIGWINCH, lambda *_: redraw.set())
    live = Live(Text("qtasks: reading the state..."), console=console, screen=True,
                auto_refresh=False)  # fmt: skip
    try:
        live.start(refresh=True)
        while not stop.is_set():
            width, height = _size()
            console.size = (width, height)
            try:
                shown: Any = frame(read(), width, height, ascii_only=ascii_only)
            except Exception as exc:  # a store that went away: say so, try again
                shown = Text(f"qtasks: cannot read the state: {exc}", "bold red")
            live.update(shown, refresh=True)
            redraw.wait(every)
            redraw.clear()
    finally:
        with contextlib.suppress(OSError):
            live.stop()
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
    return 0


def _size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except (OSError, ValueError):
        return 80, 24
    return max(20, size.columns), max(3, size.lines)
