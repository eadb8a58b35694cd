"""The cyclic garbage collector held off while a job file is read.

Reading 10,000 jobs allocates about a million objects that all stay alive until the file is
read: CPython 3.11 then runs full collections over the growing heap, which found nothing and
took 0.21 of the 1.05 s ``qtasks validate`` spent on such a file (measured in bench/scale.py).
Reading a file makes no cyclic garbage worth collecting then; anything a job's module makes on
import is collected at the first pass after the read.

The collector is held off by raising its first threshold out of reach, not by
``gc.disable()``, and a job's module is imported with the thresholds as they were
(``released``): a module that disables or enables the collector, or sets its thresholds, at
import keeps its choice. A burst (firing.py) holds the collector off with ``gc.disable()``
instead: a body's first step may read the threshold, and one that allocated up to it would
never end.

``paused()`` nests and may be entered from several threads at once (the daemon reads a
reloaded file in a worker thread): the first to enter raises the threshold, the last to leave
puts the thresholds back, unless job code set its own meanwhile.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_OUT_OF_REACH = 1 << 30  # allocations before a first-generation pass
_lock = threading.Lock()
_depth = 0
_saved: tuple[int, ...] = ()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Run the body with no collector pass (see the module docstring)."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(_OUT_OF_REACH, *_saved[1:])
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and gc.get_threshold()[0] == _OUT_OF_REACH:
                gc.set_threshold(*_saved)


@contextlib.contextmanager
def released() -> Iterator[None]:
    """Within a pause, the collector's thresholds as they were, for a job module's import:
    the module sees the real ones and may change them (or disable the collector); the pause
    is taken up again after, over whatever it chose. Outside a pause, nothing."""
    global _saved
    with _lock:
        held = _depth > 0 and gc.get_threshold()[0] == _OUT_OF_REACH
        if held:
            gc.set_threshold(*_saved)
    try:
        yield
    finally:
        if held:
            with _lock:
                if _depth > 0:
                    _saved = gc.get_threshold()
                    gc.set_threshold(_OUT_OF_REACH, *_saved[1:])
