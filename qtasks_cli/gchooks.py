"""Functions job code adds to ``gc.callbacks`` never run on the event loop's thread.

The cyclic garbage collector runs in whichever thread allocates past its threshold, the event
loop's among them, and there it calls every function in ``gc.callbacks`` before and after the
pass. A job's callback (a gc-pause metric pushed over the network, a profiler's hook, one that
sleeps) would then hold the loop as long as it takes: a callback sleeping 1.5 s made a
per-second job fire 0.5 s late whenever the loop happened to collect.

``offload`` replaces every callback that was not there when the daemon started with an
``OffLoop`` wrapper. It runs in keepstate's ``restore`` (after each inline attempt and at each
wake-up of the loop) and in a callback of the daemon's own kept first in ``gc.callbacks``
(``_first``), which the collector calls before the others when a pass starts on the loop's
thread: a function a job's thread appended a moment ago is wrapped before it is called there.
Called in any other thread, the wrapper calls the function at once, as before; called on the
loop's thread, it hands the call to a helper thread (``qtasks-gc-callbacks``; at most
``MAX_QUEUED`` waiting, more are dropped) through a ``SimpleQueue``, whose ``put`` takes no lock
of Python's, and returns at once. Nothing done on the loop's thread inside a collection logs or
starts a thread: the collector may have stopped that thread inside a lock either needs. A
callback's exception is its own (ignored). The wrapper compares equal to the function it
wraps, so a job's ``if cb not in gc.callbacks`` and ``gc.callbacks.remove(cb)`` work as before.

Limits: a function a job puts before the daemon's own (``gc.callbacks.insert(0, f)``) is called
as it is until the next ``restore``; the collection itself, and the ``__del__`` of cyclic garbage
it frees, still run in the thread that triggered it (see release.py).
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MAX_QUEUED = 1_000  # calls waiting for the helper thread; more are dropped


class OffLoop:
    """A job's ``gc.callbacks`` function, called off the loop's thread (see the module
    docstring)."""

    def __init__(self, inner: Callable[..., Any]) -> None:
        self.inner = inner

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if threading.get_ident() != _Kept.loop_thread:
            self.inner(phase, info)
        elif _Kept.calls.qsize() < MAX_QUEUED:
            # SimpleQueue.put takes no lock of Python's: the collector may have stopped the
            # loop's thread anywhere, even inside another queue's lock or a logging call.
            _Kept.calls.put((self.inner, phase, info))
        else:
            _Kept.dropped += 1

    def __eq__(self, other: object) -> bool:
        return other is self or other is self.inner

    def __hash__(self) -> int:
        return id(self.inner)


class _Kept:
    callbacks: list[Any] = []  # noqa: RUF012  # gc.callbacks when the daemon started
    loop_thread = 0
    calls: queue.SimpleQueue[tuple[Callable[..., Any], str, dict[str, int]]] = queue.SimpleQueue()
    dropped = 0
    wrapped = False  # a callback was wrapped since the last warning
    thread: threading.Thread | None = None


def _run() -> None:
    while True:
        inner, phase, info = _Kept.calls.get()
        try:
            inner(phase, info)
        except BaseException:  # a job's callback: its failure is its own
            log.debug("a job's gc callback failed", exc_info=True)
        del inner, info


def _first(phase: str, info: dict[str, int]) -> None:
    """The daemon's own callback, first in the list: on the loop's thread, wrap the others
    before the collector calls them (it reads the list's items one by one as it goes). It
    neither logs nor starts a thread: the collector may have stopped the loop's thread inside
    a lock either needs."""
    if phase == "start" and threading.get_ident() == _Kept.loop_thread:
        _wrap()


def capture() -> None:
    """Note the callbacks there are now (the daemon's and its libraries'), put ``_first``
    before them and start the helper thread; call on the loop's thread."""
    _Kept.loop_thread = threading.get_ident()
    if not any(callback is _first for callback in gc.callbacks):
        gc.callbacks.insert(0, _first)
    _Kept.callbacks = list(gc.callbacks)
    if _Kept.thread is None:
        _Kept.thread = threading.Thread(target=_run, name="qtasks-gc-callbacks", daemon=True)
        _Kept.thread.start()


def release() -> None:
    """Take ``_first`` out (the daemon is stopping)."""
    callbacks = gc.callbacks
    callbacks[:] = [callback for callback in callbacks if callback is not _first]


def _wrap() -> None:
    callbacks = gc.callbacks
    for index, callback in enumerate(list(callbacks)):
        if type(callback) is OffLoop or any(callback is kept for kept in _Kept.callbacks):
            continue
        try:
            if callbacks[index] is callback:  # unless a job's thread changed the list meanwhile
                callbacks[index] = OffLoop(callback)
                _Kept.wrapped = True
        except IndexError:
            return


def offload(warn: Callable[[str], None]) -> None:
    """Wrap every callback added since ``capture`` in an ``OffLoop`` and keep ``_first`` first;
    ``warn(what)`` of each kind of change (``_first`` wraps in silence: this says so later).
    Identity checks only: no job code runs here."""
    callbacks = gc.callbacks
    if not callbacks or callbacks[0] is not _first:
        callbacks[:] = [_first, *(c for c in callbacks if c is not _first)]
        warn("the daemon's garbage collector callback (gc.callbacks)")
    _wrap()
    if _Kept.wrapped:
        _Kept.wrapped = False
        warn("a garbage collector callback (gc.callbacks; now called off the loop)")
