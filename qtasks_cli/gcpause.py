"""The cyclic garbage collector held off while a job file is read.

Reading 10,000 jobs allocates about a million objects that all stay alive until the file is
read: CPython 3.11 then runs full collections over the growing heap, which found nothing and
took 0.21 of the 1.05 s ``qtasks validate`` spent on such a file (measured in bench/scale.py).
Reading a file makes no cyclic garbage worth collecting then; anything a job's module makes on
import is collected at the first pass after the read.

``paused()`` nests and may be entered from several threads at once (the daemon reads a reloaded
file in a worker thread): the collector is disabled by the first to enter and enabled again by
the last to leave, only if it was enabled before the first.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Run the body with ``gc`` disabled (see the module docstring)."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
