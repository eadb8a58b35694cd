"""The guard's stand-ins for the signal module's calls (``signal.signal``, ``getsignal``,
``set_wakeup_fd``, ``pthread_sigmask``, ``raise_signal``, ``_thread.interrupt_main``) and for
the ``_signal`` C module inside signal.py; a job's own handler is wrapped so that what it raises
while the daemon runs is logged against the job (``contained``). ``sigguard.guarded`` puts them
in place and takes them away."""

from __future__ import annotations

import functools
import os
import signal
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterable
from typing import Any

from qtasks_cli.guardstate import GUARD_MODULES, Guard, log, refuse, signal_name


def guarded_signal(signum: int, handler: Any) -> Any:
    """``signal.signal`` while the guard is active."""
    if Guard.active and signum in Guard.owned:
        refuse(f"signal.signal({signal_name(signum)}, ...)")
        return guarded_getsignal(signum)
    if Guard.active and callable(handler):
        wrapper = contained(handler, _job_name(), signum)
        previous = Guard.originals["signal"](signum, wrapper)
        Guard.wrapped[int(signum)] = (wrapper, handler)
        return _unwrapped(int(signum), previous)
    return _unwrapped(int(signum), Guard.originals["signal"](signum, handler))


def guarded_getsignal(signum: int) -> Any:
    """``signal.getsignal`` while the guard is active."""
    real = Guard.originals.get("getsignal", signal.getsignal)
    return _unwrapped(int(signum), real(signum))


def _unwrapped(signum: int, handler: Any) -> Any:
    """The job's own handler for the wrapper ``contained`` made of it."""
    entry = Guard.wrapped.get(signum)
    return entry[1] if entry is not None and entry[0] is handler else handler


def _job_name() -> str:
    from qtasks_cli.context import RUN_VAR

    run = RUN_VAR.get()
    return run.job if run is not None else "?"


def contained(handler: Callable[..., Any], job: str, signum: int) -> Callable[..., Any]:
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
                signal_name(signum),
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


def guarded_set_wakeup_fd(fd: int, /, **kwargs: Any) -> int:
    """``signal.set_wakeup_fd`` while the guard is active."""
    if Guard.active and fd != Guard.wakeup_fd:
        refuse(f"signal.set_wakeup_fd({fd})")
        return Guard.wakeup_fd
    result: int = Guard.originals["set_wakeup_fd"](fd, **kwargs)
    return result


def guarded_pthread_sigmask(how: int, mask: Iterable[int]) -> set[signal.Signals]:
    """``signal.pthread_sigmask`` while the guard is active."""
    wanted = set(mask)
    real = Guard.originals["pthread_sigmask"]
    if Guard.active and how in (signal.SIG_BLOCK, signal.SIG_SETMASK):
        kept = {s for s in wanted if s in Guard.owned}
        if kept and threading.current_thread() is threading.main_thread():
            refuse(f"signal.pthread_sigmask(..., {{{', '.join(signal_name(s) for s in kept)}}})")
            wanted -= kept
    result: set[signal.Signals] = real(how, wanted)
    return result


def guarded_raise_signal(signum: int) -> None:
    """``signal.raise_signal`` while the guard is active."""
    if Guard.active and signum in Guard.owned:
        refuse(f"signal.raise_signal({signal_name(signum)})")
        return
    Guard.originals["raise_signal"](signum)


def guarded_interrupt_main(signum: int = signal.SIGINT) -> None:
    """``_thread.interrupt_main`` while the guard is active."""
    if Guard.active and signum in Guard.owned:
        refuse("_thread.interrupt_main()")
        return
    Guard.originals["interrupt_main"](signum)


def _from_guard() -> bool:
    """Whether the call into ``_signal`` comes from the guard (through signal.py's wrapper)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__") == "signal":
        frame = frame.f_back  # type: ignore[assignment]
    return frame is not None and frame.f_globals.get("__name__") in GUARD_MODULES


class CSignal:
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
        return guarded_signal(signum, handler)

    def getsignal(self, signum: int) -> Any:
        return _unwrapped(int(signum), self._real.getsignal(signum))

    def pthread_sigmask(self, how: int, mask: Iterable[int]) -> Any:
        if _from_guard():
            return self._real.pthread_sigmask(how, mask)
        return guarded_pthread_sigmask(how, mask)
