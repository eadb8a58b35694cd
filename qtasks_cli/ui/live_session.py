"""``qtasks run --ui live``: the daemon run under the live table on the terminal behind stderr
(``run_live``), the terminal restored on every way out, a few closing lines left on it.

This module imports Rich's live display at import time; only the live UI imports it."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live

from qtasks_cli.events import EventBus
from qtasks_cli.ui import log as ui_log
from qtasks_cli.ui import terminal
from qtasks_cli.ui.capture import captured
from qtasks_cli.ui.live import LiveHandler, LiveView

SCREEN_CLOSE_WAIT = 2.0  # seconds the exit waits for a stopped terminal to take the last frame


def run_live(serve: Callable[[Callable[[Any], None]], Awaitable[int]], *, bus: EventBus) -> int:
    """Run the daemon as ``serve(on_ready)`` (``api.serve`` with its ``on_ready``) under the live
    table on the terminal behind stderr; return its exit code. The terminal is restored on every
    way out; a few closing lines are then written to stderr."""
    encoding = terminal.encoding(sys.stderr)
    view = LiveView(ascii_only="utf" not in encoding.lower())
    bus.subscribe(view.on_event)
    bus.subscribe(ui_log.log_event)
    ui_log.configure("plain")  # for anything logged after the view has closed
    handler = LiveHandler(view)
    try:
        return _run_drawn(serve, view, handler, encoding)
    finally:
        _farewell(view)


def _run_drawn(
    serve: Callable[[Callable[[Any], None]], Awaitable[int]],
    view: LiveView,
    handler: logging.Handler,
    encoding: str,
) -> int:
    from qtasks_cli.ui.screen import Screen

    with captured(view) as tty_fd, terminal.no_echo(tty_fd):
        tty = os.fdopen(os.dup(tty_fd), "w", encoding=encoding, errors="replace")
        width, height = terminal.size(tty_fd)
        console = Console(file=tty, force_terminal=True, width=width, height=height)
        restore_logging = ui_log.use_handler(handler)
        live = Live(
            view.frame(width, height),
            console=console,
            screen=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

        def paint(frame: tuple[tuple[int, int], RenderableType]) -> None:
            size, renderable = frame
            console.size = size
            live.update(renderable, refresh=True)

        def lost(exc: OSError) -> None:
            loop = view._loop
            if loop is None:
                view.lose_terminal(exc)
            else:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(view.lose_terminal, exc)

        # Every write to the terminal happens on the screen's thread: a terminal stopped with
        # Ctrl-S blocks that thread, never the loop that fires jobs.
        screen = Screen(
            paint=paint,
            begin=lambda: live.start(refresh=True),
            end=live.stop,
            on_error=lost,
        )

        def draw() -> None:
            if view.terminal_lost:
                return
            size = terminal.size(tty_fd)
            screen.show((size, view.frame(*size)))

        async def main() -> int:
            view.start(draw)
            try:
                return await serve(view.attach)
            finally:
                await view.stop()

        closed = False
        try:
            # Not asyncio.run: a job that ignores its cancellation must not keep us alive.
            from qtasks_cli.looprun import run_until_done

            return run_until_done(main())
        finally:
            closed = screen.close(SCREEN_CLOSE_WAIT)
            restore_logging()
            if closed:  # a thread blocked on the terminal holds the file: leave it to exit
                with contextlib.suppress(OSError):
                    tty.close()
            else:
                view.terminal_stalled = True


def _farewell(view: LiveView) -> None:
    """Leave the last lines (those of the stop, or the latest if it failed) on the terminal."""
    if view.terminal_lost:
        return
    with contextlib.suppress(OSError):
        for line in view.since_stop():
            stamp = line.time.astimezone().strftime("%H:%M:%S")
            print(f"{stamp} {line.text}", file=sys.stderr)
        if view.source is not None:  # it got as far as supervising
            print(view.summary(), file=sys.stderr)
