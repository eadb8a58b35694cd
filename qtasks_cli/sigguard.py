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
the job instead of breaking the daemon (``sigwrap.contained``).

``loop.add_signal_handler`` called through the class (``_UnixSelectorEventLoop
.add_signal_handler(loop, ...)``) passes the instance's guard; the loop's table of handlers is
guarded too, and so are ``signal.signal``/``pthread_sigmask`` bound before the guard (``from
signal import signal``): signal.py looks its C module up at each call (``CSignal``). A handler
set by a way no wrapper sees (the ``_signal`` C module called directly, ctypes) is put back by
``check`` (at each wake-up of the daemon's loop) and ``restore`` (after each inline attempt);
until then a SIGTERM can be lost, which no Python-level guard can prevent.
``sys.setswitchinterval``, which decides how long the loop may wait for the GIL, is guarded the
same way, and so is ``threading.stack_size(n)`` (also ``_thread.stack_size``): the stack of
every thread started after it, the daemon's included (a terabyte made every later thread start
fail, and the daemon could then neither run a plain function nor stop).

This module puts the guard in place and takes it away (``guarded``), refuses changes to the
other process-wide settings (switch interval, recursion limit, stack size) and puts back what
was changed past the guard (``check``, ``restore``). The signal module's stand-ins are in
sigwrap.py, the event loop's guard in guardloop.py, the guard's state and warnings in
guardstate.py.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from qtasks_cli import keepstate
from qtasks_cli.guardloop import guard_loop
from qtasks_cli.guardstate import Guard, refuse, restored, signal_name
from qtasks_cli.sigwrap import (
    CSignal,
    guarded_getsignal,
    guarded_interrupt_main,
    guarded_pthread_sigmask,
    guarded_raise_signal,
    guarded_set_wakeup_fd,
    guarded_signal,
)

OWNED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _stack_size(*size: int) -> int:
    if Guard.active and size:
        refuse(f"threading.stack_size({size[0]!r})")
        return int(Guard.originals["stack_size"]())
    result: int = Guard.originals["stack_size"](*size)
    return result


def _setswitchinterval(interval: float) -> None:
    if Guard.active:
        refuse(f"sys.setswitchinterval({interval!r})")
        return
    Guard.originals["setswitchinterval"](interval)


def _setrecursionlimit(limit: int) -> None:
    if Guard.active:
        refuse(f"sys.setrecursionlimit({limit!r})")
        return
    Guard.originals["setrecursionlimit"](limit)


_PATCHES: tuple[tuple[Any, str, Callable[..., Any]], ...] = (
    (signal, "signal", guarded_signal),
    (signal, "getsignal", guarded_getsignal),
    (sys, "setswitchinterval", _setswitchinterval),
    (sys, "setrecursionlimit", _setrecursionlimit),
    (signal, "set_wakeup_fd", guarded_set_wakeup_fd),
    (signal, "pthread_sigmask", guarded_pthread_sigmask),
    (signal, "raise_signal", guarded_raise_signal),
    (_thread, "interrupt_main", guarded_interrupt_main),
    (threading, "stack_size", _stack_size),
    (_thread, "stack_size", _stack_size),
)


def _current_wakeup_fd() -> int:
    """The wake-up fd asyncio set (reading it means setting it: put it straight back)."""
    real = Guard.originals.get("set_wakeup_fd", signal.set_wakeup_fd)
    fd: int = real(-1)
    real(fd)
    return fd


def check(jobs: Callable[[], str]) -> None:
    """The cheap part of ``restore`` (no system call): the owned signals' handlers, the loop's
    table of them and the switch interval, put back if changed; ``jobs()`` names who may have
    done it. Called from the main thread at each wake-up of the daemon's loop, so a handler set
    past the guard (SIG_IGN for SIGTERM) is in force at most until the next wake-up."""
    if not Guard.active:
        return
    keepstate.restore(jobs())
    real_get = Guard.originals["getsignal"]
    for signum, handler in Guard.handlers.items():
        if real_get(signum) is not handler:
            _put_back_handlers(jobs())
            break
    _put_back_loop_and_interval(jobs)


def _put_back_handlers(job: str) -> None:
    real_signal, real_get = Guard.originals["signal"], Guard.originals["getsignal"]
    for signum, handler in Guard.handlers.items():
        if real_get(signum) is not handler:
            restored(job, f"the handler of {signal_name(signum)}")
            real_signal(signum, handler)


def _put_back_loop_and_interval(jobs: Callable[[], str]) -> None:
    table = Guard.loop_table
    if table is not None:
        for signum, handle in Guard.loop_handles.items():
            if dict.get(table, signum) is not handle:
                restored(jobs(), f"the event loop's callback for {signal_name(signum)}")
                dict.__setitem__(table, signum, handle)
    if sys.getswitchinterval() != Guard.switch_interval:
        restored(jobs(), f"the GIL switch interval (to {sys.getswitchinterval():g}s)")
        Guard.originals["setswitchinterval"](Guard.switch_interval)


def restore(job: str) -> None:
    """Put back the daemon's handlers, the loop's table of them, wake-up fd, unblocked mask and
    GIL switch interval if ``job`` changed them by a way the wrappers cannot see (a ``from
    signal import signal`` bound before the guard). Called from the main thread after each
    inline attempt; cheap (a few system calls)."""
    if not Guard.active or threading.current_thread() is not threading.main_thread():
        return
    keepstate.restore(job)
    _put_back_handlers(job)
    _put_back_loop_and_interval(lambda: job)
    if Guard.wakeup_fd != -1:
        previous = Guard.originals["set_wakeup_fd"](Guard.wakeup_fd)
        if previous != Guard.wakeup_fd:
            restored(job, "the signal wake-up fd")
    blocked = Guard.originals["pthread_sigmask"](signal.SIG_BLOCK, ()) & Guard.owned
    if blocked:
        restored(job, "the signal mask of " + ", ".join(signal_name(s) for s in sorted(blocked)))
        Guard.originals["pthread_sigmask"](signal.SIG_UNBLOCK, blocked)


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
    with Guard.lock:
        if Guard.active:
            raise RuntimeError("sigguard.guarded() is already active")
        for module, attr, wrapper in _PATCHES:
            Guard.originals.setdefault(attr, getattr(module, attr))
            setattr(module, attr, wrapper)
        c_module = vars(signal).get("_signal")
        if c_module is not None and not isinstance(c_module, CSignal):
            signal._signal = CSignal(c_module)  # type: ignore[attr-defined]
        Guard.owned = frozenset(int(s) for s in owned)
        Guard.handlers = {s: Guard.originals["getsignal"](s) for s in Guard.owned}
        Guard.wakeup_fd = _current_wakeup_fd()
        Guard.switch_interval = sys.getswitchinterval()
        Guard.active = True
    undo_loop = guard_loop(loop) if loop is not None else None
    try:
        yield
    finally:
        if undo_loop is not None:
            undo_loop()
        with Guard.lock:
            Guard.active = False
            for module, attr, _wrapper in _PATCHES:
                setattr(module, attr, Guard.originals[attr])
            proxy = vars(signal).get("_signal")
            if isinstance(proxy, CSignal):
                signal._signal = proxy._real  # type: ignore[attr-defined]
            Guard.warned.clear()
            Guard.wrapped.clear()
