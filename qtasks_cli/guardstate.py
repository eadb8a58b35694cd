"""The state of the one active signal guard (``sigguard.guarded``) and its warnings, each given
once: a call the guard refused, a change made past it that was put back."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, ClassVar

# sigguard's logger, as before the guard's parts moved out of it: its records keep their name.
log = logging.getLogger("qtasks_cli.sigguard")

# The guard's own modules: a frame in one of them (or in signal.py) is the guard's, not the job's.
GUARD_MODULES = frozenset(
    ("qtasks_cli.sigguard", "qtasks_cli.guardstate", "qtasks_cli.sigwrap", "qtasks_cli.guardloop")
)


class Guard:
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
    """``file:line`` of the first frame outside the guard and asyncio (the job's call)."""
    frame = sys._getframe(2)
    while frame is not None and (
        frame.f_globals.get("__name__") in GUARD_MODULES
        or frame.f_globals.get("__name__") == "signal"
        or str(frame.f_globals.get("__name__", "")).startswith("asyncio.")
    ):
        frame = frame.f_back  # type: ignore[assignment]
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"


def refuse(call: str) -> None:
    """Warn, once per ``call`` and place of the job's code, that ``call`` changed nothing."""
    where = _caller()
    key = (call, where)
    with Guard.lock:
        if key in Guard.warned:
            return
        Guard.warned.add(key)
    log.warning(
        "%s at %s was refused and changed nothing: the qtasks daemon keeps its own SIGTERM, "
        "SIGINT and SIGHUP handling, its GIL switch interval, its recursion limit, its threads' "
        "stack size and its event loop's task factory and exception handler (run the job with "
        "isolation: "
        "process to manage them yourself)",
        call,
        where,
    )


def restored(job: str, what: str) -> None:
    """Warn, once per kind of change, that ``what`` was changed past the guard and put back."""
    key = ("restored", what.split(" (to ")[0])
    with Guard.lock:
        if key in Guard.warned:
            return
        Guard.warned.add(key)
    log.warning(
        "%s was changed past the guard (noticed %s); the daemon's is restored (warned once)",
        what,
        f"while {job} ran" if job.startswith("one of") else f"when job {job}'s attempt ended",
    )


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; the number itself for a signal Python has no name for."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
