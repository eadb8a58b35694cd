"""Helper threads with a deadline, where a job's code is called for text (its ``__str__``,
``__repr__``, a traceback's source lines) or its value is walked, so that the event loop that
fires jobs never waits on it.

``off_loop`` awaits ``fn()`` in a daemon thread from the loop, ``in_helper`` waits for it from a
thread that may block (a log writer). Either gives a fallback when ``fn`` raises anything or
outlives its deadline (``TEXT_TIMEOUT`` seconds by default); a late thread is asked to stop and
left to finish alone (``_Helpers``), and while too many late ones still run, no new one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

# The logger of failures.py, as before the helper threads moved out of it: its records keep
# their name (the JSON log's "logger").
log = logging.getLogger("qtasks_cli.failures")

TEXT_TIMEOUT = 2.0  # seconds a job's __str__/__repr__/traceback may take before we give up

T = TypeVar("T")


MAX_STUCK = 2  # late helper threads not yet throttled before we stop starting more
MAX_THROTTLED = 32  # late helper threads throttled (idle, a stack each) before we stop too


class GaveUp(BaseException):
    """Raised inside a helper thread that outlived its deadline, to stop the job's code.

    It is raised by ``PyThreadState_SetAsyncExc`` with the class, so the instance is made in
    the late thread itself, by the interpreter, when the exception is raised there: its
    ``__init__`` is the one piece of our code that runs in that thread, and it arms the
    throttle there (``_arm_throttle``). Raised once per thread: a second one could land inside
    the throttle's own trace function, and CPython turns tracing off for a thread whose trace
    function raises (see ``sys.settrace``), which would set a swallowing loop free again."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        _arm_throttle()


class _Helpers:
    """Helper threads that outlived their deadline (a job's repr that never returns).

    A late thread is asked to stop: ``GaveUp`` is raised in it (``PyThreadState_SetAsyncExc``),
    which ends Python code that loops, at its next bytecode, unless it swallows every
    BaseException; then it goes on throttled (see ``GaveUp``). Code that never
    returns to the interpreter (a C loop) cannot be stopped or throttled this way. While
    MAX_STUCK late threads are not throttled (or MAX_THROTTLED are), a job's own
    ``__str__``/``__repr__`` is not called again at all: its value gets the placeholder text,
    so hung threads cannot pile up and eat the CPU. A throttled thread that swallows
    ``GaveUp`` is never ended; it sleeps at every line for good."""

    lock = threading.Lock()
    stuck: ClassVar[dict[int, threading.Thread]] = {}
    refused = 0
    # The classes whose own text method was running in a thread that outlived its deadline:
    # those are not called again (see _culprits).
    hung: ClassVar[dict[int, type]] = {}  # by id: a set would call a metaclass's __hash__/__eq__
    throttled: ClassVar[set[int]] = set()  # late threads GaveUp reached (see _arm_throttle)


_MAX_HUNG = 1_000
HUNG_TEXTS = "earlier job values' texts still hang"


_TEXT_METHODS = frozenset({"__str__", "__repr__", "__format__", "__notes__"})


def _culprits(ident: int) -> list[type]:
    """The classes whose own Python ``__str__``/``__repr__``/``__format__``/``__notes__`` is on
    the late thread ``ident``'s stack: the code that hung, or called what hung. A class whose
    text is made in C (``ValueError``, ``list``) is never among them, nor is an exception whose
    traceback took long to format: blaming the class of the value being turned into text
    marked ``ValueError`` hung after a slow traceback of 200,000 chained ``ValueError``s, and
    every later ``ValueError`` of every job was recorded as a placeholder."""
    frame = sys._current_frames().get(ident)
    found: list[type] = []
    while frame is not None:
        code = frame.f_code
        if code.co_argcount and code.co_name in _TEXT_METHODS:
            owner = frame.f_locals.get(code.co_varnames[0], _TEXT_METHODS)
            if owner is not _TEXT_METHODS:
                found.append(type(owner))
        frame = frame.f_back
    return found


def hung_before(cls: type) -> bool:
    return id(cls) in _Helpers.hung


def stuck_threads() -> int:
    """How many helper threads outlived their deadline and still run."""
    return len(_Helpers.stuck)


_THROTTLE = 0.5  # seconds a late helper thread sleeps at each line of the job's code


def _throttle(frame: types.FrameType, event: str, arg: Any) -> Any:
    """Trace function of a late helper thread: it sleeps (without the GIL) at every call and
    line, so code that swallows ``GaveUp`` and spins on costs no CPU and does not compete
    with the loop for the GIL."""
    time.sleep(_THROTTLE)
    return _throttle


def _arm_throttle() -> None:
    """In a late helper thread (from ``GaveUp.__init__``): trace every frame of its stack and
    every later call with ``_throttle``, as ``pdb.set_trace`` does for a debugger. A thread
    that swallows ``GaveUp`` goes on at one line per ``_THROTTLE`` seconds."""
    ident = threading.get_ident()
    # No lock: a late thread never takes one the loop waits on (see _start_helper's target).
    if ident not in _Helpers.stuck or ident in _Helpers.throttled:
        return
    _Helpers.throttled.add(ident)
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        frame.f_trace = _throttle
        frame = frame.f_back
    sys.settrace(_throttle)


def _stop_thread(ident: int) -> None:
    """Ask a late helper thread to stop: ``GaveUp`` is raised at its next bytecode, unless an
    earlier one already reached it (the thread is throttled then, see ``GaveUp``).
    Called with ``_Helpers.lock`` held."""
    if ident in _Helpers.throttled:
        return
    import ctypes  # only once a job's value has hung

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(GaveUp))


def _nudge_stuck() -> bool:
    """Ask every late helper thread that has not yet been reached to stop; forget the ended
    ones; True while too many still run (MAX_STUCK unthrottled, or MAX_THROTTLED in all)."""
    with _Helpers.lock:
        for ident, thread in list(_Helpers.stuck.items()):
            if thread.is_alive():
                _stop_thread(ident)
            else:
                del _Helpers.stuck[ident]
                _Helpers.throttled.discard(ident)
        busy = len(_Helpers.stuck) - len(_Helpers.throttled)
        return busy >= MAX_STUCK or len(_Helpers.stuck) >= MAX_THROTTLED + MAX_STUCK


def _refuse_more() -> bool:
    """True (and counted, warned now and then) while too many earlier helper threads run
    (see ``_nudge_stuck``)."""
    if not _nudge_stuck():
        return False
    _Helpers.refused += 1
    if _Helpers.refused == 1 or _Helpers.refused % 1000 == 0:
        log.warning(
            "%d helper thread(s) still turn a job's value into text after their deadline; "
            "not calling job code for text until they end (%d value(s) shown as placeholders)",
            len(_Helpers.stuck),
            _Helpers.refused,
        )
    return True


def _start_helper(fn: Callable[[], Any], deliver: Callable[[tuple[bool, Any]], None]) -> Any:
    """A daemon thread running ``fn()``, handing ``(True, value)`` or ``(False, exception)``
    to ``deliver`` (from that thread); returns the thread."""

    def target() -> None:
        try:
            outcome: tuple[bool, Any] = (True, fn())
        except BaseException as exc:
            outcome = (False, exc)
        finally:
            # The job's code is done: first stop the throttle GaveUp may have armed (each line
            # traced sleeps). The rest takes no lock: a late thread that held one the loop
            # waits on (``_Helpers.lock``) froze the loop for a second, a throttled line or
            # two inside it.
            sys.settrace(None)
        try:
            ident = threading.get_ident()
            _Helpers.stuck.pop(ident, None)  # single dict and set operations: atomic
            _Helpers.throttled.discard(ident)
            deliver(outcome)
        except GaveUp:  # asked to stop just as it ended
            pass
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=target, name="qtasks-text", daemon=True)
    thread.start()
    return thread


def _give_up(thread: threading.Thread, timeout: float) -> None:
    with _Helpers.lock:
        if thread.is_alive() and thread.ident is not None:
            _Helpers.stuck[thread.ident] = thread
            for culprit in _culprits(thread.ident):
                if len(_Helpers.hung) < _MAX_HUNG:
                    _Helpers.hung[id(culprit)] = culprit
            _stop_thread(thread.ident)
    log.warning(
        "turning a job's value into text took longer than %gs; gave up and asked the "
        "thread to stop (%d such thread(s) still running)",
        timeout,
        len(_Helpers.stuck),
    )


def _first(unstarted: T | None, refused: T | None, fallback: T) -> T:
    """What an ``off_loop`` whose thread could not start gives (see its docstring)."""
    if unstarted is not None:
        return unstarted
    return fallback if refused is None else refused


NO_THREAD = "no thread can start"


async def off_loop(
    fn: Callable[[], T],
    *,
    fallback: T,
    refused: T | None = None,
    unstarted: T | None = None,
    timeout: float = TEXT_TIMEOUT,
) -> T:
    """``fn()`` in a daemon thread; ``fallback`` if it raises anything (any BaseException) or
    does not return within ``timeout`` seconds (the thread is then asked to stop and left to
    finish alone); ``refused`` (default ``fallback``) at once, without a thread, while
    too many earlier ones still run (see ``_nudge_stuck``); ``unstarted`` (default
    ``refused``) when no thread can start (``RuntimeError`` from ``Thread.start``: a process
    limit, a stack size too big for the memory left)."""
    if _refuse_more():
        return fallback if refused is None else refused
    loop = asyncio.get_running_loop()
    future: asyncio.Future[tuple[bool, Any]] = loop.create_future()

    def deliver(outcome: tuple[bool, Any]) -> None:
        def settle() -> None:
            if not future.done():
                future.set_result(outcome)

        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(settle)

    try:
        thread = _start_helper(fn, deliver)
    except RuntimeError:  # no thread can start (a job's ``stack_size``, a process limit)
        return _first(unstarted, refused, fallback)
    try:
        ok, value = await asyncio.wait_for(asyncio.shield(future), timeout)
    except asyncio.TimeoutError:
        _give_up(thread, timeout)
        return fallback
    if not ok:
        return fallback
    result: T = value
    return result


def in_helper(
    fn: Callable[[], T],
    *,
    fallback: T,
    refused: T | None = None,
    unstarted: T | None = None,
    timeout: float = TEXT_TIMEOUT,
) -> T:
    """``off_loop`` for a thread that may block (a log writer, never the event loop): waits
    for ``fn()`` in a helper thread up to ``timeout`` seconds, with the same fallbacks."""
    if _refuse_more():
        return fallback if refused is None else refused
    done = threading.Event()
    box: list[tuple[bool, Any]] = []

    def deliver(outcome: tuple[bool, Any]) -> None:
        box.append(outcome)
        done.set()

    try:
        thread = _start_helper(fn, deliver)
    except RuntimeError:  # no thread can start
        return _first(unstarted, refused, fallback)
    if not done.wait(timeout):
        _give_up(thread, timeout)
        return fallback
    ok, value = box[0]
    if not ok:
        return fallback
    result: T = value
    return result
