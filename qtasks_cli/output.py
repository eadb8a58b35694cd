"""The last lines each run printed, for ``qtasks show``.

What a run's output is (the README's "Operating a running daemon" says the same):

- everything the run's Python code writes to ``sys.stdout`` and ``sys.stderr``: its task, the
  thread of a thread job, every thread it starts (``threading.Thread``), however deep, and
  every call it hands to an executor's thread: ``asyncio.to_thread``, ``loop.run_in_executor``
  (the daemon's default executor runs each call in a copy of the caller's context) and
  ``ThreadPoolExecutor.submit`` on any pool, the job's own or one made at import (each work
  item is kept as its submitter's, whoever started the pool's threads);
- the log records it makes (``logging``, any logger but qtasks' own, at a level its logger
  lets through), as ``LEVEL logger: message``: the daemon's log handlers, which replace those
  a job's module set up, write them to the daemon's log, not to ``sys.stderr``;
- for ``isolation: process`` jobs, everything the child process writes to its descriptors 1
  and 2, which includes the processes it starts (``os.system``, ``subprocess``) and C code
  (qtasks_cli.childout reads the child's pipes and feeds the run's buffer with ``feed``).

Not captured: what child processes of an inline or thread job write straight to the daemon's
descriptors, which every run of the daemon shares (nothing tells whose a byte is); the lines
a thread prints after its run was given up on (timeout, cancel); Python writes that bypass
``sys.stdout`` (``os.write(1, ...)``, ``sys.__stdout__``); and work a run hands to a thread it
did not start by other means than an executor's ``submit`` (a ``queue.Queue`` read by a
long-lived thread, ``multiprocessing.pool.ThreadPool``): such a thread writes as the run that
started it, if that run is still open, else as none.

The tees also hide the ``${NAME}`` values of the loaded job files in what passes through them
(see ``_Tee``); ``qtasks trigger`` puts the same tees around a foreground run (``hiding``).

The daemon's ``sys.stdout`` and ``sys.stderr`` become tees: every write still goes where it
went, and a write made inside a run is also kept in that run's bounded buffer. The buffer is
opened by the run's STARTED event and closed by its FINISHED event, both emitted inside the
run's task; ``take`` then hands its lines to whoever records the run's end, which writes them
in the same transaction (so they are durable before anyone is told the run finished).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from qtasks_cli import redaction
from qtasks_cli.events import Event, EventKind
from qtasks_cli.models import JobSpec, RunResult
from qtasks_cli.store.base import OUTPUT_KEPT_CHARS, OUTPUT_LINE_CHARS, OUTPUT_LINES
from qtasks_cli.ui import records

_KEPT_CLOSED = 10_000  # closed runs whose lines wait for their end to be recorded
_OWN_LOGGERS = ("qtasks_cli", "qtasks.")  # the daemon's own records are not a run's output


class _Buffer:
    """A run's last lines; an unfinished line is kept per stream (1: stdout, 2: stderr), so
    ``print("a", end="")`` followed by a line on stderr makes two lines, not one."""

    __slots__ = ("lines", "lock", "partial")

    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        self.partial: dict[int, str] = {}
        self.lock = threading.Lock()

    def write(self, text: str, stream: int = 1) -> None:
        with self.lock:
            text = self.partial.get(stream, "") + text
            *complete, rest = text.split("\n")
            self.partial[stream] = rest[-OUTPUT_KEPT_CHARS:]
            # Cut to OUTPUT_LINE_CHARS only once redacted (``recorded``): a secret that
            # straddles the cut is then hidden whole.
            for line in complete[-OUTPUT_LINES:]:
                self.lines.append(line[:OUTPUT_KEPT_CHARS])

    def close(self) -> list[str]:
        with self.lock:
            for stream in sorted(self.partial):
                if self.partial[stream]:
                    self.lines.append(self.partial[stream])
            self.partial.clear()
            return list(self.lines)


# The run the current context belongs to; its buffer is made on its first write, so a run
# that prints nothing costs one ContextVar.set at its start and one at its end. None: this
# context says nothing (a thread's fresh context); _NO_RUN: the daemon's own code, whose
# tasks and ``to_thread`` calls copy it (so a pool thread a run happened to start is not
# taken for that run's when the daemon uses it).
_NO_RUN = ""
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("qtasks_output", default=None)
_buffers: dict[str, _Buffer] = {}
_open: set[str] = set()  # runs between STARTED and FINISHED
_RUN_ATTR = "_qtasks_output_run"  # on a Thread started inside a run: that run's id
_thread_start = threading.Thread.start
_pool_submit = concurrent.futures.ThreadPoolExecutor.submit


def current_run() -> str | None:
    """The run whose output a write made here belongs to: the context's (a run's task, and
    threads that copy its context, as ``asyncio.to_thread`` does), else the run that started
    this thread (or the thread that started it, and so on)."""
    run_id = _current.get()
    if run_id is None:
        run_id = getattr(threading.current_thread(), _RUN_ATTR, None)
    return run_id or None


def _start_in_run(self: threading.Thread) -> None:
    """``Thread.start`` that remembers the run the starting code belongs to (threads do not
    copy the starter's context before Python 3.14, so the tee could not tell otherwise)."""
    run_id = current_run()
    if run_id is not None and run_id in _open:
        with contextlib.suppress(Exception):  # a Thread subclass with __slots__: not followed
            setattr(self, _RUN_ATTR, run_id)
    _thread_start(self)


def _as_run(run_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with its writes kept as ``run_id``'s ("" : no run's)."""
    token = _current.set(run_id)
    try:
        return fn(*args, **kwargs)
    finally:
        _current.reset(token)


def _submit_in_run(
    self: concurrent.futures.ThreadPoolExecutor,
    fn: Callable[..., Any],
    /,
    *args: Any,
    **kwargs: Any,
) -> concurrent.futures.Future[Any]:
    """``ThreadPoolExecutor.submit`` whose work item writes as the submitter's run (or as
    no run's): a pool's worker threads outlive the run that happened to start them, and
    serve every submitter after it, so neither the thread nor its context can tell."""
    run_id = current_run()
    owner = run_id if run_id is not None and run_id in _open else _NO_RUN
    return _pool_submit(self, functools.partial(_as_run, owner, fn), *args, **kwargs)  # fmt: skip


def feed(run_id: str | None, text: str, stream: int = 1) -> None:
    """Keep ``text``, written on ``stream`` (1 or 2), in ``run_id``'s buffer if that run is
    open; any thread, never raises."""
    if run_id is None or run_id not in _open:
        return
    # Keeping output must never break the job's print.
    with contextlib.suppress(Exception):
        buffer = _buffers.get(run_id)
        if buffer is None:
            buffer = _buffers.setdefault(run_id, _Buffer())  # atomic across threads
        buffer.write(text, stream)


HOLD_CHARS = 64 * 1024  # a partial line held back for redaction is let go beyond this


_MAX_HELD = 1000  # writers with a partial line held at once; the oldest goes out beyond this


class _Tee:
    """A text stream that also feeds the current run's buffer, and hides the loaded job files'
    ``${NAME}`` values (``redaction.redact_known``) in what passes through, whole lines at a
    time (a secret may be written in pieces, or span lines). Each writer's text is held apart
    (a run's, by its id; the daemon's own; a child process's, by ``pass_on``), so runs
    printing at the same time never join each other's partial lines: a writer's partial line,
    or lines that end with the first lines of a multi-line secret, are held until that writer
    writes more, the stream is flushed, or they grow past ``HOLD_CHARS``. A flush keeps back
    the end of a partial line that may be the start of a secret (``redaction.secret_start``)
    until its writer goes on or its run ends (``release``); the exit lets everything go
    (``flush_all``)."""

    def __init__(self, stream: TextIO, number: int, *, keep: bool = True) -> None:
        self._stream = stream
        self._number = number
        self._keep = keep  # feed runs' buffers (False: only hide secrets)
        self._held: dict[str | None, str] = {}  # by writer: a line's start, waiting for its end
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if _open and self._keep and isinstance(text, str):  # no run open: one truth test
            feed(current_run(), text, self._number)
        if not redaction.known_secrets() or not isinstance(text, str):
            if self._held:
                self._let_go(list(self._held), whole=True)
            return self._stream.write(text)
        self._put(current_run(), text)
        return len(text)

    def pass_on(self, writer: str, text: str) -> None:
        """Write ``text`` of ``writer`` (a child process) as its own: held apart, never kept
        for a run (the caller keeps it)."""
        if not redaction.known_secrets():
            self._emit(writer, text)
        else:
            self._put(writer, text)

    def _put(self, writer: str | None, text: str) -> None:
        # The lock guards the held pieces only: reading and redacting the text is done
        # outside it. The loop takes it too (an async job's print, a run's end), and it used to
        # wait there while another thread's megabytes were redacted (14 fires missed).
        with self._lock:
            held = self._held.pop(writer, "") + text
        cut = held.rfind("\n") + 1
        if cut:  # complete lines, but not the first lines of a secret without the rest
            cut = redaction.hold_back(held[:cut])
        if len(held) - cut > HOLD_CHARS:  # out without its end, but an end that may start a
            cut = len(held) - redaction.secret_start(held)  # secret: it waits for the rest
        evicted: tuple[str | None, str] | None = None
        with self._lock:
            if cut < len(held):  # before what the same writer may have put meanwhile
                self._held[writer] = held[cut:] + self._held.pop(writer, "")
            if len(self._held) > _MAX_HELD:
                oldest = next(iter(self._held))
                evicted = (oldest, self._held.pop(oldest))
        if evicted is not None:
            self._emit(evicted[0], redaction.redact_known(evicted[1]))
        if cut:
            self._emit(writer, redaction.redact_known(held[:cut]))

    def _emit(self, writer: str | None, text: str) -> None:
        inner = self._stream
        if isinstance(inner, _Tee) and writer is not None:  # hiding() inside Capture's tees
            inner._put(writer, text)  # the same writer there
        else:
            inner.write(text)

    def _let_go(self, writers: list[str | None], *, whole: bool) -> None:
        with self._lock:  # the pieces taken under the lock, read and redacted outside it
            taken = [(writer, self._held.pop(writer, "")) for writer in writers]
        for writer, held in taken:
            keep = 0 if whole else redaction.secret_start(held)
            if keep:
                with self._lock:
                    self._held[writer] = held[len(held) - keep :] + self._held.pop(writer, "")
            if len(held) > keep:
                self._emit(writer, redaction.redact_known(held[: len(held) - keep]))

    def release(self, run_id: str) -> None:
        """Write out what ``run_id`` still holds (its run ended)."""
        if run_id in self._held:
            self._let_go([run_id], whole=True)
        if isinstance(self._stream, _Tee):
            self._stream.release(run_id)

    def flush(self) -> None:
        """Write out the held partial lines, secrets hidden, but an end that may start one."""
        if self._held:
            self._let_go(list(self._held), whole=False)
        self._stream.flush()

    def flush_all(self) -> None:
        """Write out everything held, secrets hidden (the stream's end)."""
        if self._held:
            self._let_go(list(self._held), whole=True)
        if isinstance(self._stream, _Tee):
            self._stream.flush_all()
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def pass_on(number: int, writer: str, text: str) -> None:
    """Write ``text`` that ``writer`` (a child process) wrote on its descriptor ``number`` (1
    or 2) where an inline job's prints go: through the tees (secrets hidden, lines held apart
    from other writers') and the bounded streams (terminal control stripped). Never raises."""
    stream = sys.stdout if number == 1 else sys.stderr
    with contextlib.suppress(Exception):
        if isinstance(stream, _Tee):
            stream.pass_on(writer, text)
        elif stream is not None:
            stream.write(redaction.redact_known(text))


def flush_all(stream: Any) -> None:
    """Flush ``stream``, letting go of all a tee holds."""
    getattr(stream, "flush_all", stream.flush)()


@contextlib.contextmanager
def hiding() -> Iterator[None]:
    """Hide the loaded job files' secrets in what is written to ``sys.stdout`` and
    ``sys.stderr`` meanwhile (a foreground run's prints), as the daemon's tees do."""
    saved = (sys.stdout, sys.stderr)
    sys.stdout, sys.stderr = _Tee(sys.stdout, 1, keep=False), _Tee(sys.stderr, 2, keep=False)
    try:
        yield
    finally:
        for tee in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                flush_all(tee)
        sys.stdout, sys.stderr = saved


class Capture:
    """Installs the tees and keeps each finished run's lines until ``take``n (any thread)."""

    def __init__(self) -> None:
        self._closed: collections.OrderedDict[str, list[str]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._saved: tuple[Any, Any] | None = None
        self._factory: Callable[..., logging.LogRecord] | None = None

    def install(self) -> None:
        """Tee the standard streams and keep the log records a run makes; call it in the
        daemon's main task, before the tasks that fire jobs are made (they copy its context,
        which says "no run")."""
        _current.set(_NO_RUN)
        if self._saved is not None:
            return
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tee(sys.stdout, 1), _Tee(sys.stderr, 2)
        threading.Thread.start = _start_in_run  # type: ignore[method-assign]
        concurrent.futures.ThreadPoolExecutor.submit = _submit_in_run  # type: ignore[method-assign,assignment]
        self._factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(functools.partial(_record, self._factory))

    def uninstall(self) -> None:
        if self._saved is not None:
            for tee in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    flush_all(tee)
            sys.stdout, sys.stderr = self._saved
            self._saved = None
            threading.Thread.start = _thread_start  # type: ignore[method-assign]
            concurrent.futures.ThreadPoolExecutor.submit = _pool_submit  # type: ignore[method-assign]
            if self._factory is not None:
                logging.setLogRecordFactory(self._factory)
                self._factory = None

    def sink(self, event: Event) -> None:
        """Bus sink; STARTED and FINISHED are emitted inside the run's own task."""
        run_id = event.run_id
        if run_id is None or event.job is None:
            return
        if event.kind is EventKind.STARTED:
            _open.add(run_id)
            _current.set(run_id)
        elif event.kind is EventKind.FINISHED and run_id in _open:
            for stream in (sys.stdout, sys.stderr):  # the end of its last partial line
                if isinstance(stream, _Tee):
                    with contextlib.suppress(Exception):
                        stream.release(run_id)
            _open.discard(run_id)
            if _current.get() == run_id:
                _current.set(_NO_RUN)
            found = _buffers.pop(run_id, None)
            # A thread abandoned by a timeout or cancel may still print: the run is no
            # longer open, so nothing is kept.
            lines = found.close() if found is not None else []
            if lines:
                with self._lock:
                    self._closed[run_id] = lines
                    while len(self._closed) > _KEPT_CLOSED:
                        self._closed.popitem(last=False)

    def take(self, run_id: str) -> list[str]:
        """The lines of finished run ``run_id`` (once; empty when it printed nothing)."""
        with self._lock:
            return self._closed.pop(run_id, [])


def _record(factory: Callable[..., logging.LogRecord], *args: Any, **kwargs: Any) -> Any:
    """The log record factory while output is captured: a record a run's code makes (any
    logger but qtasks' own, at a level its logger lets through) is kept in the run's output
    as ``LEVEL logger: message``, whatever handlers then do with it."""
    record = factory(*args, **kwargs)
    if _open and record.name != "qtasks" and not record.name.startswith(_OWN_LOGGERS):
        run_id = current_run()
        if run_id is not None and run_id in _open:
            with contextlib.suppress(Exception):
                # Made text once, here, by the thread that logged it (ui.records): the
                # handlers then reuse it.
                records.settle(record, "inline")
                text = f"{record.levelname} {record.name}: {record.getMessage()}"
                if record.exc_text:
                    text += "\n" + record.exc_text
                feed(run_id, text + "\n", 2)
    return record


def recorded(result: RunResult, lines: list[str], job: JobSpec) -> RunResult:
    """``result`` with the lines its run printed, ``job``'s secrets redacted (in the whole
    text at once, so a secret that spans lines is found too)."""
    if not lines:
        return result
    lines = job.redact("\n".join(lines)).split("\n")
    return dataclasses.replace(result, output=tuple(line[:OUTPUT_LINE_CHARS] for line in lines))
