"""Dropping a job's values off the event loop.

Whoever drops the last reference to an object frees it, and freeing runs code: a ``__del__``
(a connection pool that closes, a file that flushes), a generator's ``finally``, or a C call that
holds the GIL for a quarter of a second to free a list of ten million items, nested in a dict or
not. In the daemon the last holder of a run's result or exception is the event loop, once the run
is recorded. ``adopt`` keeps one more reference to a job's value; a helper thread waits until that
reference is the only one left (nobody can see the object any more) and drops it there: exact
builtin containers (list, dict, set, tuple, frozenset) are taken apart first, in slices and
nested ones too, so that no single step holds the GIL for long; every other object is freed in
the helper thread, where its ``__del__`` runs. A value somebody still holds after ``GIVE_UP``
seconds (a caller of the Python API keeps it) is let go untouched.

Never runs a job's code in the caller: only ``type(x) is ...`` identity checks, ``len`` of exact
builtin types and reference counts. A helper thread stuck in a job's ``__del__`` for ``STUCK``
seconds is left alone and another one takes over (at most ``MAX_THREADS`` at a time).

A value that is still held after ``CYCLE_CHECK`` seconds may be held only by itself (a
reference cycle: ``self.me = self``, parent and child links), which no reference count ever
frees: the cyclic garbage collector does, on whichever thread happens to allocate, often the
event loop's, where every ``__del__`` of the cycle would then run. So the helper drops its own
reference and runs the collector itself (at most once per ``CYCLE_CHECK``): what only a cycle
held is freed there, its ``__del__`` in the helper thread. A value that can be weakly referenced
and is still alive afterwards has another holder and is watched again until ``GIVE_UP``.

Limits: a cycle that becomes garbage some other way is still collected wherever the collector
happens to run; a large tuple is freed in one step (it cannot be emptied); a job's own object
holding a large container frees it in one step (in the helper thread).
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import weakref
from typing import Any

log = logging.getLogger(__name__)

SLICE = 10_000  # items taken apart per step (about a millisecond)
CHECK_EVERY = 0.2  # seconds between looks at the adopted values
GIVE_UP = 60.0  # seconds after which a value still held elsewhere is let go
CYCLE_CHECK = 2.0  # seconds after which a value still held may be held by a cycle only
IDLE_EXIT = 2.0  # seconds with nothing adopted after which the helper thread ends
STUCK = 1.0  # seconds one value may take to free before another thread takes over
MAX_THREADS = 4
SMALL_TEXT = 64 * 1024  # str/bytes shorter than this are freed wherever
LARGE = 100_000  # kept for callers: a container this long is certainly taken apart

_lock = threading.Lock()
# id -> (deadline, value): the id of a value we hold cannot be reused while we hold it.
_adopted: dict[int, tuple[float, Any]] = {}
_last_collect = 0.0  # monotonic time of the helper's last run of the garbage collector
_checked: set[int] = set()  # ids of adopted values found alive after a collection: held elsewhere
_threads: dict[threading.Thread, float] = {}  # helper thread -> when its current value began
_warned_stuck = False

_CONTAINERS = (list, dict, set, tuple, frozenset)
_TRIVIAL = (type(None), bool, int, float, complex)


def _is_one_of(kind: type, kinds: tuple[type, ...]) -> bool:
    """``kind`` is one of ``kinds`` by identity (``in`` would call a metaclass's ``__eq__``)."""
    return any(kind is candidate for candidate in kinds)


def adopt(value: Any) -> None:
    """Drop ``value`` in a helper thread once nobody else holds it (see the module docstring).
    Safe on any value from a job: runs none of its code. Cheap for small plain values, which
    are not adopted at all."""
    kind = type(value)
    if _is_one_of(kind, _TRIVIAL):
        return
    if (kind is str or kind is bytes) and len(value) < SMALL_TEXT:
        return
    now = time.monotonic()
    with _lock:
        entry = _adopted.get(id(value))
        _adopted[id(value)] = (now + GIVE_UP, value)
        _checked.discard(id(value))
        del entry
        _ensure_thread(now)


def _ensure_thread(now: float) -> None:
    """A helper thread that is not stuck exists (``_lock`` held)."""
    global _warned_stuck
    for thread, since in list(_threads.items()):
        if not thread.is_alive():
            del _threads[thread]
        elif since == 0.0 or now - since < STUCK:
            return
    if len(_threads) >= MAX_THREADS:
        if not _warned_stuck:
            _warned_stuck = True
            log.warning(
                "%d helper threads are stuck freeing jobs' values (a __del__ that never "
                "returns); values are kept until one returns",
                len(_threads),
            )
        return
    thread = threading.Thread(target=_run, name="qtasks-release", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # no thread can start now: the value waits for the next adopt
        return
    _threads[thread] = 0.0


def pending() -> int:
    """How many adopted values wait to be freed."""
    with _lock:
        return len(_adopted)


def _run() -> None:
    me = threading.current_thread()
    idle_since = time.monotonic()
    while True:
        time.sleep(CHECK_EVERY)
        with _lock:
            keys = list(_adopted)
            if not keys and time.monotonic() - idle_since >= IDLE_EXIT:
                _threads.pop(me, None)
                return
        if keys:
            idle_since = time.monotonic()
        for key in keys:
            with _lock:
                entry = _adopted.get(key)
            if entry is None:
                continue
            deadline, value = entry
            del entry
            # References: the dict's tuple, ``value`` here and getrefcount's argument.
            alone = sys.getrefcount(value) <= 3
            now = time.monotonic()
            if not alone and now < deadline:
                if (
                    key not in _checked
                    and now >= deadline - GIVE_UP + CYCLE_CHECK
                    and now - _last_collect >= CYCLE_CHECK
                ):
                    holder = [value]  # our last reference must go before the collection runs
                    del value
                    _collect_cycle(me, key, deadline, holder)
                    continue
                del value
                continue
            with _lock:
                if _adopted.pop(key, None) is None:  # another helper took it
                    del value
                    continue
                _checked.discard(key)
                _threads[me] = time.monotonic()
            if alone:
                stack = [value]
                del value
                _take_apart(stack)
            else:
                del value
                _collect_now()  # a cycle we could not test with a weak reference: freed here
            with _lock:
                _threads[me] = 0.0


def _collect_cycle(me: threading.Thread, key: int, deadline: float, holder: list[Any]) -> None:
    """Drop our reference to the value in ``holder`` (its only item: the caller keeps none) and
    run the garbage collector in this thread, so that a cycle nothing else holds is freed here
    (see the module docstring); a value still alive afterwards is adopted again, checked."""
    try:
        ref = weakref.ref(holder[0])
    except TypeError:  # no weak references to it (a list, a dict): let go at GIVE_UP
        with _lock:
            _checked.add(key)
        holder.clear()
        return
    with _lock:
        if _adopted.pop(key, None) is None:  # another helper took it
            holder.clear()
            return
        _threads[me] = time.monotonic()
    holder.clear()
    _collect_now()
    alive = ref()
    with _lock:
        if alive is not None:
            _adopted.setdefault(id(alive), (deadline, alive))
            _checked.add(id(alive))
        _threads[me] = 0.0
    del alive


def _collect_now() -> None:
    """The garbage collector, in this helper thread (at most once per CYCLE_CHECK)."""
    global _last_collect
    if time.monotonic() - _last_collect < CYCLE_CHECK:
        return
    _last_collect = time.monotonic()
    gc.collect()  # a __del__ of what only a cycle held runs here


def _held_by_parent_only(item: Any) -> bool:
    # References: the parent (or the slice taken from it), the caller's loop variable, the
    # argument here and getrefcount's argument.
    return sys.getrefcount(item) <= 4


def _take_apart(stack: list[Any]) -> None:
    """Free everything on ``stack`` (which the caller gives up), exact builtin containers in
    slices, depth first; a nested container only its parent holds is taken apart too."""
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is list:
            while value:
                chunk = value[-SLICE:]
                del value[-SLICE:]
                _push_nested(stack, chunk)
                del chunk
        elif kind is dict:
            while value:
                pairs = [value.popitem() for _ in range(min(SLICE, len(value)))]
                for pair in pairs:
                    _push_nested(stack, pair)
                del pairs
        elif kind is set:
            while value:
                chunk = [value.pop() for _ in range(min(SLICE, len(value)))]
                _push_nested(stack, chunk)
                del chunk
        elif kind is tuple or kind is frozenset:
            _push_nested(stack, value)
        del value  # anything else: freed here, its __del__ runs in this thread


def _push_nested(stack: list[Any], items: Any) -> None:
    # The types of a slice, in C: the loop below runs only for a slice that holds containers.
    kinds = set(map(type, items))
    if not any(kind is container for kind in kinds for container in _CONTAINERS):
        return
    del kinds
    for item in items:
        if _is_one_of(type(item), _CONTAINERS) and len(item) and _held_by_parent_only(item):
            stack.append(item)
