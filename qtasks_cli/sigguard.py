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
own signals. Signals other than the guarded ones are the job's to use.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

log = logging.getLogger(__name__)

OWNED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Guard:
    """The originals and the state of the one active guard (there is one daemon per process)."""

    lock = threading.Lock()
    active = False
    owned: frozenset[int] = frozenset()
    wakeup_fd = -1
    handlers: ClassVar[dict[int, Any]] = {}
    originals: ClassVar[dict[str, Callable[..., Any]]] = {}
    warned: ClassVar[set[tuple[str, str]]] = set()


def _caller() -> str:
    """``file:line`` of the first frame outside this module (the job's call)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
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
        "%s at %s was ignored: the qtasks daemon keeps its own SIGTERM, SIGINT and SIGHUP "
        "handling (run the job with isolation: process to manage signals yourself)",
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
        return signal.getsignal(signum)
    return _Guard.originals["signal"](signum, handler)


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


_PATCHES: tuple[tuple[Any, str, Callable[..., Any]], ...] = (
    (signal, "signal", _signal),
    (signal, "set_wakeup_fd", _set_wakeup_fd),
    (signal, "pthread_sigmask", _pthread_sigmask),
    (signal, "raise_signal", _raise_signal),
    (_thread, "interrupt_main", _interrupt_main),
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

    loop.add_signal_handler = add_signal_handler
    loop.remove_signal_handler = remove_signal_handler

    def undo() -> None:
        del loop.add_signal_handler, loop.remove_signal_handler

    return undo


def _restored(job: str, what: str) -> None:
    with _Guard.lock:
        if (job, what) in _Guard.warned:
            return
        _Guard.warned.add((job, what))
    log.warning(
        "job %s changed %s past the guard; the daemon's is restored (warned once per job)",
        job,
        what,
    )


def restore(job: str) -> None:
    """Put back the daemon's handlers, wake-up fd and unblocked mask if ``job`` changed them by
    a way the wrappers cannot see (a ``from signal import signal`` bound before the guard).
    Called from the main thread after each inline attempt; cheap (a few system calls)."""
    if not _Guard.active or threading.current_thread() is not threading.main_thread():
        return
    real_signal = _Guard.originals["signal"]
    for signum, handler in _Guard.handlers.items():
        if signal.getsignal(signum) is not handler:
            _restored(job, f"the handler of {_name(signum)}")
            real_signal(signum, handler)
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
        _Guard.owned = frozenset(int(s) for s in owned)
        _Guard.handlers = {s: signal.getsignal(s) for s in _Guard.owned}
        _Guard.wakeup_fd = _current_wakeup_fd()
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
            _Guard.warned.clear()
