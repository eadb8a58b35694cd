"""Freeing a job's large result without freezing the event loop.

Freeing a list of ten million items is one C call that holds the GIL for a quarter of a second,
on whichever thread drops the last reference: in the daemon that is the event loop, once the run
is recorded. ``adopt`` keeps one more reference to a large container; a helper thread waits until
that reference is the only one left (nobody can see the object any more) and then empties it in
slices, each a short step between which the loop gets the GIL. A value somebody still holds after
``GIVE_UP`` seconds (a caller of the Python API keeps it) is let go untouched.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from typing import Any

LARGE = 100_000  # items from which a container is freed in slices
SLICE = 10_000  # items freed per step (about a millisecond)
CHECK_EVERY = 0.2  # seconds between looks at the adopted values
GIVE_UP = 60.0  # seconds after which a value still held elsewhere is let go

_lock = threading.Lock()
_adopted: list[tuple[float, Any]] = []
_thread: threading.Thread | None = None


def adopt(value: Any) -> None:
    """Free ``value`` in slices once nobody else holds it, if it is a large list, dict or set
    (exact types only: a subclass may run code when emptied)."""
    global _thread
    if type(value) not in (list, dict, set) or len(value) < LARGE:
        return
    with _lock:
        _adopted.append((time.monotonic() + GIVE_UP, value))
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="qtasks-release", daemon=True)
            _thread.start()


def pending() -> int:
    """How many adopted values wait to be freed."""
    with _lock:
        return len(_adopted)


def _run() -> None:
    while True:
        time.sleep(CHECK_EVERY)
        with _lock:
            if not _adopted:
                return
            entries = list(_adopted)
        for entry in entries:
            deadline, value = entry
            # References: the entry's tuple, the loop variable ``value``, the list ``entries``'
            # tuple (the same one) and getrefcount's argument.
            alone = sys.getrefcount(value) <= 3
            if not alone and time.monotonic() < deadline:
                continue
            with _lock:
                _adopted.remove(entry)
            del entry
            if alone:
                _empty(value)
            del value
        del entries


def _empty(value: Any) -> None:
    if type(value) is list:
        while value:
            del value[-SLICE:]
    elif type(value) is dict:
        while value:
            for key in list(itertools.islice(value, SLICE)):
                del value[key]
    else:
        while value:
            for _ in range(min(SLICE, len(value))):
                value.pop()
