"""The daemon keeps the process-wide settings its loop depends on, whatever inline job code does.

Inline jobs share the daemon's interpreter, so job code can change settings that every call of
the daemon's event loop then pays for or breaks on: the recursion limit
(``sys.setrecursionlimit(30)``: no fire ever again), a profile or trace function left on the
loop's thread (a profiler never stopped: every call of the loop slowed), the loop's task
factory and exception handler (a factory that raises: no task is ever made again; asyncio's
default handler formats a job's exception on the loop), the log record factory (it runs in the
daemon's own log calls on the loop), and the daemon's loggers (a handler a job adds to
``qtasks``, to forward its events, runs in every line the loop logs; ``logging.config.dictConfig``
disables every existing logger, the daemon's included, by default), and a function a job adds to
``gc.callbacks`` (called wherever the collector runs, the loop's thread too: gchooks.py).

``capture`` notes the daemon's settings once the loop runs; ``restore`` puts back what a job
changed, after each inline attempt (sigguard's ``restore``) and at each wake-up of the loop
(sigguard's ``check``), with one warning per kind of change. A handler a job added to one of the
daemon's loggers is not removed: it is moved behind a bounded queue and called from a thread of
its own (``Offloaded``), so it still gets the daemon's records and never holds the loop.
``loop.stop()`` by a job is handled where the loop is run (``looprun.run_until_done``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
from collections.abc import Mapping
from typing import Any

from qtasks_cli import gchooks

log = logging.getLogger(__name__)

DAEMON_PREFIXES = ("qtasks", "asyncio", "concurrent.futures", "psycopg", "tenacity")
_REAL_SETRECURSIONLIMIT = sys.setrecursionlimit  # before sigguard wraps it
MAX_QUEUED = 10_000  # records waiting for a job's handler on a daemon logger; more are dropped


class _Kept:
    active = False
    recursion_limit = 1000
    record_factory: Any = None
    loop: asyncio.AbstractEventLoop | None = None
    exception_handler: Any = None
    task_factory: Any = None
    debug = False  # the loop's debug mode (PYTHONASYNCIODEBUG, -X dev)
    profile: Any = None
    trace: Any = None
    asyncgen_hooks: Any = None  # the loop's own (asyncio sets them as it starts running)
    loggers: dict[str, tuple[list[logging.Handler], int, bool]] = {}  # noqa: RUF012
    warned: set[str] = set()  # noqa: RUF012
    disable_tried = False  # a job set ``disabled`` on a daemon logger since the last restore


class _KeptLogger(logging.Logger):
    """A daemon logger that job code cannot disable: ``logging.config.dictConfig`` (whose
    default ``disable_existing_loggers`` sets ``disabled`` on every logger there is) run by a job
    in one thread would otherwise drop the daemon's lines, and its warnings about that very job,
    until the next ``restore``; ``logging.disable(CRITICAL)`` would silence the daemon's log for
    good. Setting ``disabled`` is noted and ignored, and so is ``logging.disable``'s level (the
    job's own loggers keep it). Its records are made by the daemon's record factory, never by
    one a job set (``logging.setLogRecordFactory``): a slow one held the loop in each of its
    log calls until ``restore`` put the daemon's back."""

    def makeRecord(
        self,
        name: str,
        level: int,
        fn: str,
        lno: int,
        msg: object,
        args: Any,
        exc_info: Any,
        func: str | None = None,
        extra: Mapping[str, object] | None = None,
        sinfo: str | None = None,
    ) -> logging.LogRecord:
        factory = _Kept.record_factory or logging.LogRecord
        record: logging.LogRecord = factory(name, level, fn, lno, msg, args, exc_info, func, sinfo)
        for key, value in (extra or {}).items():  # as logging.Logger.makeRecord does
            if key in ("message", "asctime") or key in record.__dict__:
                raise KeyError(f"Attempt to overwrite {key!r} in LogRecord")
            record.__dict__[key] = value
        return record

    def isEnabledFor(self, level: int) -> bool:
        try:
            return self._cache[level]  # type: ignore[attr-defined,no-any-return]
        except KeyError:
            enabled = self._cache[level] = level >= self.getEffectiveLevel()  # type: ignore[attr-defined]
            return enabled

    @property
    def disabled(self) -> bool:
        return False

    @disabled.setter
    def disabled(self, value: bool) -> None:
        if value:
            _Kept.disable_tried = True


class Offloaded(logging.Handler):
    """A job's handler on a daemon logger, called from a thread of its own through a bounded
    queue: a slow handler (an HTTPHandler to a collector that hangs) delays nothing else."""

    def __init__(self, inner: logging.Handler) -> None:
        super().__init__(inner.level)
        self.inner = inner
        self._queue: queue.Queue[logging.LogRecord] = queue.Queue(MAX_QUEUED)
        self.dropped = 0
        threading.Thread(target=self._run, name="qtasks-job-handler", daemon=True).start()

    def handle(self, record: logging.LogRecord) -> bool:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
        return True

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            try:
                self.inner.handle(record)
            except BaseException:  # a job's handler: its failure is its own
                log.debug("a job's handler on a daemon logger failed", exc_info=True)


def _daemon_loggers() -> list[logging.Logger]:
    manager = logging.Logger.manager
    return [
        lg
        for name, lg in list(manager.loggerDict.items())
        if isinstance(lg, logging.Logger) and name.startswith(DAEMON_PREFIXES)
    ]


_REAL_ADD_HANDLER = logging.Logger.addHandler


def _add_handler(self: logging.Logger, handler: logging.Handler) -> None:
    """``Logger.addHandler`` while the daemon runs: a handler job code adds to a daemon logger
    is called off the loop from the start (``Offloaded``)."""
    if (
        _Kept.active
        and self.name.startswith(DAEMON_PREFIXES)
        and not isinstance(handler, Offloaded)
        and self.name in _Kept.loggers
        and handler not in _Kept.loggers[self.name][0]
    ):
        _put_back(f"a handler added to logger {self.name!r} (now called off the loop)", "?")
        handler = Offloaded(handler)
        _Kept.loggers[self.name][0].append(handler)
    _REAL_ADD_HANDLER(self, handler)


def capture(loop: asyncio.AbstractEventLoop) -> None:
    """Note the daemon's settings (call on the loop's thread, once its logging is set up)."""
    _Kept.recursion_limit = sys.getrecursionlimit()
    _Kept.record_factory = logging.getLogRecordFactory()
    _Kept.loop = loop
    _Kept.exception_handler = loop.get_exception_handler()
    _Kept.task_factory = loop.get_task_factory()
    _Kept.debug = loop.get_debug()
    _Kept.profile = sys.getprofile()
    _Kept.trace = sys.gettrace()
    _Kept.asyncgen_hooks = sys.get_asyncgen_hooks()
    _Kept.loggers = {
        lg.name: (list(lg.handlers), lg.level, lg.propagate) for lg in _daemon_loggers()
    }
    for lg in _daemon_loggers():
        if type(lg) is logging.Logger:
            lg.__class__ = _KeptLogger
    _Kept.warned.clear()
    gchooks.capture()
    _Kept.active = True
    logging.Logger.addHandler = _add_handler  # type: ignore[method-assign,assignment]


def release() -> None:
    """Stop keeping (the daemon is stopping)."""
    _Kept.active = False
    gchooks.release()
    for lg in _daemon_loggers():
        if type(lg) is _KeptLogger:
            lg.__class__ = logging.Logger  # type: ignore[assignment]
    logging.Logger.addHandler = _REAL_ADD_HANDLER  # type: ignore[method-assign]


def _put_back(what: str, job: str) -> None:
    if what in _Kept.warned:
        return
    _Kept.warned.add(what)
    log.disabled = False  # dictConfig may have disabled this very logger a moment ago
    log.warning(
        "%s was changed by job code (noticed %s); the daemon's is put back (warned once): run "
        "the job with isolation: process to change it for itself",
        what,
        "as it was made"
        if job == "?"
        else f"while {job} ran"
        if job.startswith("one of")
        else f"when job {job}'s attempt ended",
    )


def step_changed() -> bool:
    """Whether job code, in the step of it the loop has just run, left the loop's thread paying
    on every later call: a profile or trace function (``sys.setprofile``/``sys.settrace``) or
    the loop's debug mode (a stack extracted for every callback). About 0.1 µs, so it is asked
    after every step of an inline async body (burst.py) and ``restore`` called when it says
    so: such a change then costs the other runs of a burst nothing. (Async generator hooks,
    which cost only where an async generator starts, wait for ``restore``.)"""
    if not _Kept.active:
        return False
    loop = _Kept.loop
    return (
        sys.getprofile() is not _Kept.profile
        or sys.gettrace() is not _Kept.trace
        or (loop is not None and loop.get_debug() is not _Kept.debug)
    )


def _asyncgen_hooks_changed() -> bool:
    hooks, kept = sys.get_asyncgen_hooks(), _Kept.asyncgen_hooks
    return kept is not None and (
        hooks.firstiter is not kept.firstiter or hooks.finalizer is not kept.finalizer
    )


def restore(job: str) -> None:
    """Put back what job code changed (see the module docstring). On the loop's thread only:
    the profile and trace functions are that thread's. Cheap: a few reads when nothing
    changed."""
    if not _Kept.active or threading.current_thread() is not threading.main_thread():
        return
    _restore_loggers(job)  # first: the warnings below go through them
    if sys.getrecursionlimit() != _Kept.recursion_limit:  # past sigguard's refusal
        _put_back(f"the recursion limit (to {sys.getrecursionlimit()})", job)
        _REAL_SETRECURSIONLIMIT(_Kept.recursion_limit)
    if sys.getprofile() is not _Kept.profile:
        _put_back("the event loop thread's profile function (sys.setprofile)", job)
        sys.setprofile(_Kept.profile)
    if sys.gettrace() is not _Kept.trace:
        _put_back("the event loop thread's trace function (sys.settrace)", job)
        sys.settrace(_Kept.trace)
    if _asyncgen_hooks_changed():  # asyncio's own: they run at every async generator's start
        _put_back("the event loop thread's async generator hooks (sys.set_asyncgen_hooks)", job)
        kept = _Kept.asyncgen_hooks
        sys.set_asyncgen_hooks(firstiter=kept.firstiter, finalizer=kept.finalizer)
    if logging.getLogRecordFactory() is not _Kept.record_factory:
        _put_back("the log record factory (logging.setLogRecordFactory)", job)
        logging.setLogRecordFactory(_Kept.record_factory)
    gchooks.offload(lambda what: _put_back(what, job))
    loop = _Kept.loop
    if loop is not None and not loop.is_closed():
        if loop.get_exception_handler() is not _Kept.exception_handler:
            _put_back("the event loop's exception handler", job)
            type(loop).set_exception_handler(loop, _Kept.exception_handler)  # past the guard
        if loop.get_task_factory() is not _Kept.task_factory:
            _put_back("the event loop's task factory", job)
            type(loop).set_task_factory(loop, _Kept.task_factory)
        if loop.get_debug() is not _Kept.debug:  # debug mode costs the loop 3x its CPU
            _put_back("the event loop's debug mode (loop.set_debug)", job)
            loop.set_debug(_Kept.debug)


def _restore_loggers(job: str) -> None:
    disabled = False
    for lg in _daemon_loggers():
        if type(lg) is _KeptLogger:
            continue
        disabled = disabled or lg.disabled
        lg.disabled = False
        if type(lg) is logging.Logger:  # made since: from now on it cannot be disabled
            lg.__class__ = _KeptLogger
    if logging.root.manager.disable:
        _put_back("logging.disable's level (the daemon's loggers ignore it)", job)
    if _Kept.disable_tried or disabled:
        _Kept.disable_tried = False
        _put_back(
            "the daemon's loggers (set disabled, as logging.config.dictConfig does by default)",
            job,
        )
    for lg in _daemon_loggers():
        kept = _Kept.loggers.get(lg.name)
        if kept is None:
            continue
        handlers, level, propagate = kept
        if lg.level != level or lg.propagate != propagate:
            _put_back(f"the level or propagation of logger {lg.name!r}", job)
            lg.setLevel(level)
            lg.propagate = propagate
        for handler in list(lg.handlers):
            if handler in handlers:
                continue
            lg.removeHandler(handler)
            if isinstance(handler, Offloaded):
                wrapped = handler
            else:
                _put_back(f"a handler added to logger {lg.name!r} (now called off the loop)", job)
                wrapped = Offloaded(handler)
            lg.addHandler(wrapped)
            handlers.append(wrapped)
        for handler in handlers:
            if handler not in lg.handlers and not isinstance(handler, Offloaded):
                _put_back(f"the daemon's handler of logger {lg.name!r}", job)
                lg.addHandler(handler)
