"""The daemon keeps its signals: job code in its process cannot take SIGTERM, SIGINT or SIGHUP.

Inline jobs (async on the event loop, sync in threads) share the daemon's process. A library
or job that calls ``signal.signal(SIGTERM, SIG_IGN)``, ``signal.set_wakeup_fd(-1)``,
``signal.pthread_sigmask(SIG_BLOCK, {SIGTERM})``, ``signal.raise_signal(SIGINT)`` or
``_thread.interrupt_main()`` would otherwise make ``systemctl stop`` do nothing, make the
daemon deaf to reloads, or stop it as a Ctrl-C does. While ``guarded()`` is active those
calls leave the daemon's handlers, wake-up fd and mask as they are, log one warning naming
the call and the job's file and line, and return what the call would have returned had it
changed nothing (the current handler, the current fd, the current mask).

A signal sent from outside (``kill``, ``systemctl``, the terminal) is untouched; so is
``os.kill(os.getpid(), SIGTERM)``, which is an explicit request to stop gracefully. Process
jobs (``isolation: process``) run in their own interpreter and keep full control of their
own signals. Signals other than the guarded ones are the job's to use, but a Python handler a
job sets for one (a SIGALRM deadline) runs on the main thread, which is the event loop's: an
exception it raises while the loop, not the job's own code, runs is caught and logged against
the job instead of breaking the daemon (``_contained``).

``loop.add_signal_handler`` called through the class (``_UnixSelectorEventLoop
.add_signal_handler(loop, ...)``) passes the instance's guard; the loop's table of handlers is
guarded too, and so are ``signal.signal``/``pthread_sigmask`` bound before the guard (``from
signal import signal``): signal.py looks its C module up at each call (``_CSignal``). A handler
set by a way no wrapper sees (the ``_signal`` C module called directly, ctypes) is put back by
``check`` (at each wake-up of the daemon's loop) and ``restore`` (after each inline attempt);
until then a SIGTERM can be lost, which no Python-level guard can prevent.
``sys.setswitchinterval``, which decides how long the loop may wait for the GIL, is guarded the
same way, and so is ``threading.stack_size(n)`` (also ``_thread.stack_size``): the stack of
every thread started after it, the daemon's included (a terabyte made every later thread start
fail, and the daemon could then neither run a plain function nor stop).
"""

from __future__ import annotations

import _thread
import contextlib
import functools
import logging
import os
import signal
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from qtasks_cli import keepstate

log = logging.getLogger(__name__)

OWNED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Guard:
    """The originals and the state of the one active guard (there is one daemon per process)."""

    lock = threading.Lock()
    active = False
    owned: frozenset[int] = frozenset()
    wakeup_fd = -1
    switch_interval = 0.005
    handlers: ClassVar[dict[int, Any]] = {}
    originals: ClassVar[dict[str, Callable[..., Any]]] = {}
    warned: ClassVar[set[tuple[str, str]]] = set()
    # The loop's table of signal callbacks (guarded), and the daemon's own entries in it.
    loop_table: dict[int, Any] | None = None
    loop_handles: ClassVar[dict[int, Any]] = {}
    # Per signal, the wrapper installed for a job's handler and that handler (``getsignal``).
    wrapped: ClassVar[dict[int, tuple[Any, Any]]] = {}


def _caller() -> str:
    """``file:line`` of the first frame outside this module and asyncio (the job's call)."""
    frame = sys._getframe(2)
    while frame is not None and (
        frame.f_globals.get("__name__") in (__name__, "signal")
        or str(frame.f_globals.get("__name__", "")).startswith("asyncio.")
    ):
        frame = frame.f_back  # type: ignore[assignment]
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"


def _refuse(call: str) -> None:
    where = _caller()
    key = (call, where)
    with _Guard.lock:
        if key in _Guard.warned:
            return
        _Guard.warned.add(key)
    log.warning(
        "%s at %s was refused and changed nothing: the qtasks daemon keeps its own SIGTERM, "
        "SIGINT and SIGHUP handling, its GIL switch interval, its recursion limit, its threads' "
        "stack size and its event loop's task factory and exception handler (run the job with "
        "isolation: "
        "process to manage them yourself)",
        call,
        where,
    )


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _signal(signum: int, handler: Any) -> Any:
    if _Guard.active and signum in _Guard.owned:
        _refuse(f"signal.signal({_name(signum)}, ...)")
        return _getsignal(signum)
    if _Guard.active and callable(handler):
        wrapper = _contained(handler, _job_name(), signum)
        previous = _Guard.originals["signal"](signum, wrapper)
        _Guard.wrapped[int(signum)] = (wrapper, handler)
        return _unwrapped(int(signum), previous)
    return _unwrapped(int(signum), _Guard.originals["signal"](signum, handler))


def _getsignal(signum: int) -> Any:
    real = _Guard.originals.get("getsignal", signal.getsignal)
    return _unwrapped(int(signum), real(signum))


def _unwrapped(signum: int, handler: Any) -> Any:
    """The job's own handler for the wrapper ``_contained`` made of it."""
    entry = _Guard.wrapped.get(signum)
    return entry[1] if entry is not None and entry[0] is handler else handler


def _job_name() -> str:
    from qtasks_cli.context import RUN_VAR

    run = RUN_VAR.get()
    return run.job if run is not None else "?"


def _contained(handler: Callable[..., Any], job: str, signum: int) -> Callable[..., Any]:
    """``handler`` run so that what it raises reaches the job's own code only: raised while
    the daemon (the loop, its selector, qtasks) runs on the main thread, it is logged against
    ``job`` and dropped, so no fire is left half-claimed and no other run gets the error."""

    def on_signal(received: int, frame: Any) -> Any:
        if _in_job_code(frame):
            return handler(received, frame)
        try:
            return handler(received, frame)
        except BaseException as exc:
            from qtasks_cli.failures import type_name

            log.warning(
                "job %s: its %s handler raised %s while the daemon, not the job, was running; "
                "ignored (a handler's exception only reaches the job's own code)",
                job,
                _name(signum),
                type_name(exc),
            )
            return None

    on_signal.__wrapped__ = handler  # type: ignore[attr-defined]
    return on_signal


@functools.lru_cache(maxsize=1)
def _stdlib_dirs() -> tuple[tuple[str, ...], str]:
    paths = sysconfig.get_paths()
    dirs = {
        os.path.abspath(paths[key]) + os.sep for key in ("stdlib", "platstdlib") if key in paths
    }
    own = os.path.dirname(os.path.abspath(__file__)) + os.sep
    return tuple(dirs), own


def _in_job_code(frame: Any) -> bool:
    """Whether the main thread was interrupted in a job's code: going outwards from ``frame``,
    the first frame outside the standard library is not qtasks' (the job's or a library's)."""
    stdlib, own = _stdlib_dirs()
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(own):
            return False
        standard = filename.startswith(stdlib) or filename.startswith("<frozen")
        if not standard or "-packages" + os.sep in filename:
            return True
        frame = frame.f_back
    return False


def _set_wakeup_fd(fd: int, /, **kwargs: Any) -> int:
    if _Guard.active and fd != _Guard.wakeup_fd:
        _refuse(f"signal.set_wakeup_fd({fd})")
        return _Guard.wakeup_fd
    result: int = _Guard.originals["set_wakeup_fd"](fd, **kwargs)
    return result


def _pthread_sigmask(how: int, mask: Iterable[int]) -> set[signal.Signals]:
    wanted = set(mask)
    real = _Guard.originals["pthread_sigmask"]
    if _Guard.active and how in (signal.SIG_BLOCK, signal.SIG_SETMASK):
        kept = {s for s in wanted if s in _Guard.owned}
        if kept and threading.current_thread() is threading.main_thread():
            _refuse(f"signal.pthread_sigmask(..., {{{', '.join(_name(s) for s in kept)}}})")
            wanted -= kept
    result: set[signal.Signals] = real(how, wanted)
    return result


def _raise_signal(signum: int) -> None:
    if _Guard.active and signum in _Guard.owned:
        _refuse(f"signal.raise_signal({_name(signum)})")
        return
    _Guard.originals["raise_signal"](signum)


def _interrupt_main(signum: int = signal.SIGINT) -> None:
    if _Guard.active and signum in _Guard.owned:
        _refuse("_thread.interrupt_main()")
        return
    _Guard.originals["interrupt_main"](signum)


def _stack_size(*size: int) -> int:
    if _Guard.active and size:
        _refuse(f"threading.stack_size({size[0]!r})")
        return int(_Guard.originals["stack_size"]())
    result: int = _Guard.originals["stack_size"](*size)
    return result


def _setswitchinterval(interval: float) -> None:
    if _Guard.active:
        _refuse(f"sys.setswitchinterval({interval!r})")
        return
    _Guard.originals["setswitchinterval"](interval)


def _from_guard() -> bool:
    """Whether the call into ``_signal`` comes from this module (through signal.py's wrapper)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__") == "signal":
        frame = frame.f_back  # type: ignore[assignment]
    return frame is not None and frame.f_globals.get("__name__") == __name__


class _CSignal:
    """Stands in for the ``_signal`` C module inside signal.py while the guard is active.

    signal.py's ``signal``, ``getsignal`` and ``pthread_sigmask`` look ``_signal`` up in their
    module's globals at each call, so a reference bound before the guard (``from signal import
    signal``, a library's ``self._signal = signal.signal``) is guarded too: it reaches the
    wrappers above instead of the kernel. Everything else is the real module's."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def signal(self, signum: int, handler: Any) -> Any:
        if _from_guard():
            return self._real.signal(signum, handler)
        return _signal(signum, handler)

    def getsignal(self, signum: int) -> Any:
        return _unwrapped(int(signum), self._real.getsignal(signum))

    def pthread_sigmask(self, how: int, mask: Iterable[int]) -> Any:
        if _from_guard():
            return self._real.pthread_sigmask(how, mask)
        return _pthread_sigmask(how, mask)


def _setrecursionlimit(limit: int) -> None:
    if _Guard.active:
        _refuse(f"sys.setrecursionlimit({limit!r})")
        return
    _Guard.originals["setrecursionlimit"](limit)


_PATCHES: tuple[tuple[Any, str, Callable[..., Any]], ...] = (
    (signal, "signal", _signal),
    (signal, "getsignal", _getsignal),
    (sys, "setswitchinterval", _setswitchinterval),
    (sys, "setrecursionlimit", _setrecursionlimit),
    (signal, "set_wakeup_fd", _set_wakeup_fd),
    (signal, "pthread_sigmask", _pthread_sigmask),
    (signal, "raise_signal", _raise_signal),
    (_thread, "interrupt_main", _interrupt_main),
    (threading, "stack_size", _stack_size),
    (_thread, "stack_size", _stack_size),
)


def _current_wakeup_fd() -> int:
    """The wake-up fd asyncio set (reading it means setting it: put it straight back)."""
    real = _Guard.originals.get("set_wakeup_fd", signal.set_wakeup_fd)
    fd: int = real(-1)
    real(fd)
    return fd


def _guard_loop(loop: Any) -> Callable[[], None]:
    """Refuse ``loop.add_signal_handler``/``remove_signal_handler`` for the owned signals (they
    would replace or drop the daemon's callback without touching ``signal.signal``)."""
    add, remove = loop.add_signal_handler, loop.remove_signal_handler

    def add_signal_handler(sig: int, callback: Callable[..., Any], *args: Any) -> None:
        if _Guard.active and sig in _Guard.owned:
            _refuse(f"loop.add_signal_handler({_name(sig)}, ...)")
            return
        add(sig, callback, *args)

    def remove_signal_handler(sig: int) -> bool:
        if _Guard.active and sig in _Guard.owned:
            _refuse(f"loop.remove_signal_handler({_name(sig)})")
            return False
        result: bool = remove(sig)
        return result

    def set_task_factory(factory: Any) -> None:
        # Every task the daemon makes would go through a job's factory (one that raises:
        # no task is ever made again), and other jobs' tasks in the same burst too.
        if _Guard.active:
            _refuse("loop.set_task_factory(...)")
            return
        type(loop).set_task_factory(loop, factory)

    def set_exception_handler(handler: Any) -> None:
        # asyncio's default handler formats a job's exception on the loop (looperrors.py).
        if _Guard.active:
            _refuse("loop.set_exception_handler(...)")
            return
        type(loop).set_exception_handler(loop, handler)

    loop.add_signal_handler = add_signal_handler
    loop.remove_signal_handler = remove_signal_handler
    loop.set_task_factory = set_task_factory
    loop.set_exception_handler = set_exception_handler
    # The class's methods (called as ``Loop.add_signal_handler(loop, ...)``) write the table
    # straight away: guard the table itself.
    plain = getattr(loop, "_signal_handlers", None)
    if type(plain) is dict:
        table = _OwnedTable(plain)
        loop._signal_handlers = table
        _Guard.loop_table = table
        _Guard.loop_handles = {s: plain[s] for s in _Guard.owned if s in plain}

    def undo() -> None:
        del loop.add_signal_handler, loop.remove_signal_handler
        del loop.set_task_factory, loop.set_exception_handler
        table = _Guard.loop_table
        if plain is not None and table is not None and loop._signal_handlers is table:
            plain.clear()
            plain.update(table)
            loop._signal_handlers = plain
        _Guard.loop_table = None
        _Guard.loop_handles = {}

    return undo


class _OwnedTable(dict):  # type: ignore[type-arg]
    """The loop's signal -> callback table, refusing changes to the owned signals' entries."""

    def __setitem__(self, sig: Any, handle: Any) -> None:
        if _Guard.active and sig in _Guard.owned:
            _refuse(f"loop.add_signal_handler({_name(sig)}, ...) (through the loop's class)")
            return
        super().__setitem__(sig, handle)

    def __delitem__(self, sig: Any) -> None:
        if _Guard.active and sig in _Guard.owned:
            _refuse(f"loop.remove_signal_handler({_name(sig)}) (through the loop's class)")
            raise KeyError(sig)
        super().__delitem__(sig)

    def pop(self, sig: Any, *default: Any) -> Any:
        if _Guard.active and sig in _Guard.owned:
            _refuse(f"removing the loop's handler of {_name(sig)}")
            return self.get(sig, *default)
        return super().pop(sig, *default)


def _restored(job: str, what: str) -> None:
    key = ("restored", what.split(" (to ")[0])
    with _Guard.lock:
        if key in _Guard.warned:
            return
        _Guard.warned.add(key)
    log.warning(
        "%s was changed past the guard (noticed %s); the daemon's is restored (warned once)",
        what,
        f"while {job} ran" if job.startswith("one of") else f"when job {job}'s attempt ended",
    )


def check(jobs: Callable[[], str]) -> None:
    """The cheap part of ``restore`` (no system call): the owned signals' handlers, the loop's
    table of them and the switch interval, put back if changed; ``jobs()`` names who may have
    done it. Called from the main thread at each wake-up of the daemon's loop, so a handler set
    past the guard (SIG_IGN for SIGTERM) is in force at most until the next wake-up."""
    if not _Guard.active:
        return
    keepstate.restore(jobs())
    real_get = _Guard.originals["getsignal"]
    for signum, handler in _Guard.handlers.items():
        if real_get(signum) is not handler:
            _put_back_handlers(jobs())
            break
    _put_back_loop_and_interval(jobs)


def _put_back_handlers(job: str) -> None:
    real_signal, real_get = _Guard.originals["signal"], _Guard.originals["getsignal"]
    for signum, handler in _Guard.handlers.items():
        if real_get(signum) is not handler:
            _restored(job, f"the handler of {_name(signum)}")
            real_signal(signum, handler)


def _put_back_loop_and_interval(jobs: Callable[[], str]) -> None:
    table = _Guard.loop_table
    if table is not None:
        for signum, handle in _Guard.loop_handles.items():
            if dict.get(table, signum) is not handle:
                _restored(jobs(), f"the event loop's callback for {_name(signum)}")
                dict.__setitem__(table, signum, handle)
    if sys.getswitchinterval() != _Guard.switch_interval:
        _restored(jobs(), f"the GIL switch interval (to {sys.getswitchinterval():g}s)")
        _Guard.originals["setswitchinterval"](_Guard.switch_interval)


def restore(job: str) -> None:
    """Put back the daemon's handlers, the loop's table of them, wake-up fd, unblocked mask and
    GIL switch interval if ``job`` changed them by a way the wrappers cannot see (a ``from
    signal import signal`` bound before the guard). Called from the main thread after each
    inline attempt; cheap (a few system calls)."""
    if not _Guard.active or threading.current_thread() is not threading.main_thread():
        return
    keepstate.restore(job)
    _put_back_handlers(job)
    _put_back_loop_and_interval(lambda: job)
    if _Guard.wakeup_fd != -1:
        previous = _Guard.originals["set_wakeup_fd"](_Guard.wakeup_fd)
        if previous != _Guard.wakeup_fd:
            _restored(job, "the signal wake-up fd")
    blocked = _Guard.originals["pthread_sigmask"](signal.SIG_BLOCK, ()) & _Guard.owned
    if blocked:
        _restored(job, "the signal mask of " + ", ".join(_name(s) for s in sorted(blocked)))
        _Guard.originals["pthread_sigmask"](signal.SIG_UNBLOCK, blocked)


@contextlib.contextmanager
def guarded(owned: Iterable[int] = OWNED, *, loop: Any = None) -> Iterator[None]:
    """While active, calls from any code in this process that would change the handling of the
    ``owned`` signals (default SIGTERM, SIGINT, SIGHUP), the signal wake-up fd asyncio reads,
    or the main thread's mask of them, are ignored with a warning (see the module docstring);
    with ``loop``, so are its ``add_signal_handler``/``remove_signal_handler`` for them.

    Enter it from the main thread after the event loop's signal handlers are installed;
    nesting is not supported. On exit everything is as the caller left it."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("sigguard.guarded() must be entered from the main thread")
    with _Guard.lock:
        if _Guard.active:
            raise RuntimeError("sigguard.guarded() is already active")
        for module, attr, wrapper in _PATCHES:
            _Guard.originals.setdefault(attr, getattr(module, attr))
            setattr(module, attr, wrapper)
        c_module = vars(signal).get("_signal")
        if c_module is not None and not isinstance(c_module, _CSignal):
            signal._signal = _CSignal(c_module)  # type: ignore[attr-defined]
        _Guard.owned = frozenset(int(s) for s in owned)
        _Guard.handlers = {s: _Guard.originals["getsignal"](s) for s in _Guard.owned}
        _Guard.wakeup_fd = _current_wakeup_fd()
        _Guard.switch_interval = sys.getswitchinterval()
        _Guard.active = True
    undo_loop = _guard_loop(loop) if loop is not None else None
    try:
        yield
    finally:
        if undo_loop is not None:
            undo_loop()
        with _Guard.lock:
            _Guard.active = False
            for module, attr, _wrapper in _PATCHES:
                setattr(module, attr, _Guard.originals[attr])
            proxy = vars(signal).get("_signal")
            if isinstance(proxy, _CSignal):
                signal._signal = proxy._real  # type: ignore[attr-defined]
            _Guard.warned.clear()
            _Guard.wrapped.clear()
