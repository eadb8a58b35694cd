"""Runs one job once: attempts with retries and a per-attempt timeout, generators, hooks.

``execute`` is the one engine behind ``qtasks run`` and ``qtasks trigger``. It reports what happens
as Events through a callback, returns a RunResult and never prints or touches the store.
tenacity is imported only when a run executes, so importing this module stays light.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
import sys
import threading
import traceback
import types
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from qtasks_cli import entrypoints, failures, offloop, previews, release, sigguard
from qtasks_cli.clock import utcnow as _utc_now
from qtasks_cli.context import RUN_VAR as _current_run
from qtasks_cli.context import RunInfo
from qtasks_cli.durations import format_duration
from qtasks_cli.entrypoints import CallableKind
from qtasks_cli.events import Event, EventKind
from qtasks_cli.isolation.wire import KILL_WAIT, ReportedError
from qtasks_cli.models import (
    Attempt,
    Isolation,
    JobSpec,
    RetryPolicy,
    RunResult,
    RunStatus,
    TriggerKind,
)
from qtasks_cli.pickled import Pickled, loaded
from qtasks_cli.runtime import Outcome, Runtime, guarded, let_go, unwrap

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from qtasks_cli.burst import Gate
    from qtasks_cli.isolation.pool import Workers

log = logging.getLogger(__name__)

PREVIEW_CHARS = failures.PREVIEW_CHARS
ERROR_CHARS = failures.ERROR_CHARS
TRACEBACK_CHARS = failures.TRACEBACK_CHARS
HOOK_TIMEOUT = 60.0  # seconds, for hooks of jobs without a timeout

_FAILED_FOR_GOOD = (RunStatus.FAILED, RunStatus.TIMED_OUT)


# --- one run -------------------------------------------------------------------------------------


# The attribute of the CancelledError ``execute`` re-raises that holds the run's result so far.
CANCELLED_RESULT = "qtasks_result"


class _HandlerFailed(Exception):
    """The generate_handler raised; the attempt fails with the handler's own exception."""

    def __init__(self, ref: str, original: BaseException) -> None:
        super().__init__(ref, original)
        self.ref = ref
        self.original = original


@dataclass(frozen=True, kw_only=True, slots=True)
class _Failure:
    status: RunStatus  # FAILED or TIMED_OUT
    exc: BaseException  # what retry_on is matched against; a TimeoutError for a timeout
    error_type: str
    error: str
    traceback: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class _AttemptResult:
    value: Any = None
    items: int | None = None
    failure: _Failure | None = None


class _Run:
    """The mutable state of one ``execute`` call."""

    def __init__(
        self,
        job: JobSpec,
        *,
        run_id: str,
        trigger: TriggerKind,
        scheduled: datetime | None,
        runtime: Runtime,
        emit: Callable[[Event], None],
        clock: Callable[[], datetime],
        resolve: Callable[[str], Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        gate: Gate | None = None,
    ) -> None:
        self.job = job
        # The burst's gate the first attempt waits at, just before the body (burst.py).
        self.gate = gate
        self.body_ended: datetime | None = None  # when a body the burst ran ended in go
        self.run_id = run_id
        self.trigger = trigger
        self.scheduled = scheduled
        self.runtime = runtime
        self.clock = clock
        self.resolve = resolve
        self.args = args
        self.kwargs = kwargs
        self.attempt_log: list[Attempt] = []
        self.items: int | None = None  # items handled by the current attempt
        self.abandon_reason = "cancelled"
        self.stuck_stack: traceback.StackSummary | None = None
        # A stuck thread's frames (innermost first) with their line numbers at the timeout:
        # their source lines are read off the loop, when the timeout's traceback is made.
        self.stuck_frames: list[tuple[types.FrameType, int]] | None = None
        self.stuck_where = ""  # what stuck_stack shows, for the timeout's traceback
        # What still runs the body of an attempt that timed out (a thread, a task that ignored
        # its cancellation, a child process not yet reaped): no retry starts beside it.
        self.leftover: threading.Thread | asyncio.Future[Any] | None = None
        self.not_retried = ""  # why no retry is made although the policy allows one
        # While the run's hook runs: who its threads belong to ("report (on_success hook)"),
        # which is not the job, so a hung hook never holds the job's next fires.
        self.hook: str | None = None
        self._emit = emit
        self._retry_types: tuple[type[BaseException], ...] | None = None

    @property
    def label(self) -> str:
        return f"job {self.job.name!r} run {self.run_id}"

    @property
    def workers(self) -> Workers:
        """The runtime's child processes (isolation.call's ``Invocation``)."""
        return self.runtime.workers

    async def handle(self, handler: Any, item: Any) -> Any:
        """A generated item through ``generate_handler`` (isolation.call's ``Invocation``)."""
        return await _handle(self, handler, item)

    def event(self, kind: EventKind, *, at: datetime | None = None, **fields: Any) -> None:
        when = self.clock() if at is None else at
        event = Event(kind=kind, time=when, job=self.job.name, run_id=self.run_id, **fields)
        try:
            self._emit(event)
        except Exception:
            log.exception("%s: emitting the %s event failed", self.label, kind)

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``: awaited on the loop if async, else in a thread; an
        awaitable it returns is awaited on the loop."""
        kind = _kind_of(fn)
        if self.gate is not None:  # a burst's first attempt: the body starts at go
            if kind is CallableKind.ASYNC:  # started by the burst itself (burst.Start)
                start = self.gate.start(fn, args, kwargs, self.clock)
                self.gate = None
                driven, value = await start
                self.body_ended = start.ended
                if not driven and _awaitable(value):
                    value = await value
                return value
            await self.through_gate()
        if kind is CallableKind.ASYNC:
            value = fn(*args, **kwargs)
        else:
            value = await self.in_thread(functools.partial(fn, *args, **kwargs))
        if _awaitable(value):
            value = await value
        return value

    async def through_gate(self) -> None:
        """Wait at the burst's gate, once (burst.py): everything before is set-up."""
        gate, self.gate = self.gate, None
        if gate is not None:
            await gate

    async def in_thread(self, call: Callable[[], Any]) -> Any:
        hook = self.hook is not None  # a hook's thread never holds its job or marks its run
        return await self.runtime.call_in_thread(
            call,
            on_abandon=self._abandon,
            owner=self.hook if hook else self.job.name,
            run_id=None if hook else self.run_id,
        )

    def _abandon(self, thread: threading.Thread) -> str:
        self.leftover = thread
        frame = sys._current_frames().get(thread.ident or -1)
        if frame is not None:
            # Frames and line numbers only: reading source lines may run a loader's code.
            frames: list[tuple[types.FrameType, int]] = []
            while frame is not None:
                frames.append((frame, frame.f_lineno))
                frame = frame.f_back
            self.stuck_frames = frames
            self.stuck_where = "its thread is still running here"
        return f"{self.label}: {self.abandon_reason}"

    async def bounded(
        self, awaitable: Awaitable[Any], timeout: float | None, what: str
    ) -> tuple[Outcome | None, bool]:
        """Run ``awaitable`` in its own task, cancelled after ``timeout`` seconds.

        Returns its outcome (None if it would not stop) and whether it timed out.
        """
        if timeout is None:
            # Nothing to time out: await it right here. A second task per run would delay
            # every job of a burst behind the prologues of all the others.
            try:
                return Outcome(value=await awaitable), False
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                cancelling = getattr(task, "cancelling", None)
                if cancelling is not None and not cancelling():
                    return Outcome(error=exc), False  # the job raised it, nobody cancelled us
                self.abandon_reason = f"{what} cancelled"
                raise
            except BaseException as exc:
                return Outcome(error=unwrap(exc)), False
        task = asyncio.get_running_loop().create_task(
            guarded(awaitable), name=f"qtasks:{self.job.name}:{self.run_id}:{what}"
        )
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            self.abandon_reason = f"{what} cancelled"
            await self._stop(task, what)
            raise
        if done:
            return task.result(), False
        self.abandon_reason = f"{what} timed out after {_seconds(timeout or 0)}"
        return await self._stop(task, what), True

    async def _stop(self, task: asyncio.Task[Outcome], what: str) -> Outcome | None:
        task.cancel()
        # Even with no grace, let the task see its cancellation once before judging it stuck.
        grace = max(self.job.kill_grace.total_seconds(), 0.01)
        if self.job.isolation is Isolation.PROCESS:
            grace += KILL_WAIT + 1.0  # the SIGKILL after kill_grace and the reaping
        done, _ = await asyncio.wait({task}, timeout=grace)
        if done:
            return task.result()
        log.warning(
            "%s: %s ignored its cancellation for %s; left running on the loop",
            self.label,
            what,
            _seconds(grace),
        )
        if self.hook is not None:
            self.runtime.keep(task, self.hook)
        else:
            self.runtime.keep(task, self.job.name, self.run_id)
        self.leftover = task
        return None

    def retryable(self, exc: BaseException) -> bool:
        """Whether ``retry_on`` matches ``exc``: by its class's MRO, as ``except`` matches
        (no code of the job's exception runs on the loop)."""
        if self._retry_types is None:
            self._retry_types = _retry_types(self.job)
        if type(exc) is ReportedError:
            return exc.is_a(self._retry_types)
        return failures.is_subclass(type(exc), self._retry_types)


def _seconds(value: float) -> str:
    return format_duration(timedelta(seconds=value))


def _awaitable(value: Any) -> bool:
    """``inspect.isawaitable(value)`` judged from ``type(value)`` alone: no ``__class__``
    property or ABC machinery (a metaclass's ``__eq__``/``__hash__``) of the job runs here."""
    kind = type(value)
    if kind is types.CoroutineType:
        return True
    if kind is types.GeneratorType:  # a @types.coroutine generator
        return bool(value.gi_code.co_flags & inspect.CO_ITERABLE_COROUTINE)
    return failures.has_method(kind, "__await__")


def _opened(gate: Gate | None, started: datetime) -> datetime:
    """When an attempt started: the moment its burst's gate opened, if it waited at one (the
    clock read before it is from before the instant); else ``started``."""
    if gate is not None and gate.at is not None and gate.at > started:
        return gate.at
    return started


# The kind of each entry point called, by identity: inspecting a function costs microseconds,
# and a burst calls the same few thousand functions every second.
_KINDS: dict[int, tuple[Any, CallableKind]] = {}
_KINDS_MAX = 16_384


def _kind_of(fn: Any) -> CallableKind:
    """``entrypoints.kind_of(fn)``, remembered for functions (not for other callables,
    whose ``__call__`` may change)."""
    if type(fn) is not types.FunctionType:
        return entrypoints.kind_of(fn)
    found = _KINDS.get(id(fn))
    if found is not None and found[0] is fn:
        return found[1]
    kind = entrypoints.kind_of(fn)
    if len(_KINDS) >= _KINDS_MAX:
        _KINDS.clear()
    _KINDS[id(fn)] = (fn, kind)
    return kind


def _retry_types(job: JobSpec) -> tuple[type[BaseException], ...]:
    if not job.retry.on:
        return (Exception,)
    found: list[type[BaseException]] = []
    for name in job.retry.on:
        try:
            found.append(entrypoints.resolve_exception(name))
        except Exception as exc:
            log.warning(
                "job %r: retry_on %r cannot be resolved (%s); it matches nothing",
                job.name,
                name,
                exc,
            )
    return tuple(found)


# --- calling the job -----------------------------------------------------------------------------


async def _call_attempt(run: _Run) -> Any:
    """Call the job once and return its result; a generator's result is its handled items.

    This is the one step that ``isolation: process`` replaces.
    """
    job = run.job
    if job.isolation is Isolation.PROCESS:
        from qtasks_cli.isolation.call import call_attempt

        await run.through_gate()
        return await call_attempt(run)
    fn = run.resolve(job.entrypoint)
    handler = run.resolve(job.generate_handler) if job.generate_handler else None
    kind = _kind_of(fn)
    if kind is CallableKind.GENERATOR:
        await run.through_gate()
        return await _drain(run, fn(*run.args, **run.kwargs), handler)
    if kind is CallableKind.ASYNC_GENERATOR:
        await run.through_gate()
        return await _drain_async(run, fn(*run.args, **run.kwargs), handler)
    value = await run.call(fn, *run.args, **run.kwargs)  # passes the gate, if any
    # A plain function (a partial, a factory) may hand back a generator: iterate it too.
    # (Exact types: neither can be subclassed, and isinstance would read __class__.)
    if type(value) is types.GeneratorType:
        return await _drain(run, value, handler)
    if type(value) is types.AsyncGeneratorType:
        return await _drain_async(run, value, handler)
    return value


async def _drain(run: _Run, gen: Iterator[Any], handler: Any) -> list[Any]:
    """Iterate a sync generator, each step in a thread since it may block. A generator left
    unfinished (a timeout, a cancel) is closed off the loop: its ``finally`` is the job's code
    and may block, so it runs where its last reference is dropped, in release.py's thread."""
    handled: list[Any] = []
    run.items = 0
    end = object()
    finished = False
    try:
        while True:
            item = await run.in_thread(functools.partial(next, gen, end))
            if item is end:
                finished = True
                return handled
            try:
                handled.append(await _handle(run, handler, item))
            except _HandlerFailed:
                await run.in_thread(functools.partial(_close_quietly, gen))
                raise
            finally:
                del item
    finally:
        if not finished:
            release.adopt(gen)


async def _drain_async(run: _Run, agen: AsyncIterator[Any], handler: Any) -> list[Any]:
    handled: list[Any] = []
    run.items = 0
    async for item in agen:
        try:
            handled.append(await _handle(run, handler, item))
        except _HandlerFailed:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.debug("%s: closing the generator failed", run.label, exc_info=True)
            raise
    return handled


def _close_quietly(gen: Iterator[Any]) -> None:
    close = getattr(gen, "close", None)
    if close is None:
        return
    try:
        close()
    except BaseException:  # runs in a thread; the handler's failure is the one to report
        log.debug("closing the generator failed", exc_info=True)


async def _handle(run: _Run, handler: Any, item: Any) -> Any:
    if handler is None:
        value = item
    else:
        try:
            value = await run.call(handler, item)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            inner = unwrap(exc)
            raise _HandlerFailed(run.job.generate_handler or "", inner) from inner
    if value is not item:
        release.adopt(item)  # the handler's input, dropped off the loop
    run.items = (run.items or 0) + 1
    if run.job.echo:
        run.event(
            EventKind.ITEM,
            attempt=len(run.attempt_log) + 1,
            item=run.job.redact(value.preview)  # a process job's, previewed in its child
            if type(value) is Pickled
            else await previews.preview_off_loop(value, run.job.redact, as_json=False),
            items=run.items,
        )
    return value


# --- attempts and retries ------------------------------------------------------------------------


async def _attempt(run: _Run) -> _AttemptResult:
    """One attempt under the job's timeout; records it and reports a failure."""
    job = run.job
    number = len(run.attempt_log) + 1
    run.items = None
    run.stuck_stack = None
    run.stuck_frames = None
    run.stuck_where = ""
    run.leftover = None
    run.body_ended = None
    gate = run.gate
    started = run.clock()
    if number == 1:
        run.event(
            EventKind.STARTED,
            at=None if gate is None else max(gate.instant, started),
            trigger=run.trigger,
            scheduled=run.scheduled,
            max_attempts=job.retry.attempts,
        )
    timeout = job.timeout.total_seconds() if job.timeout is not None else None
    try:
        outcome, timed_out = await run.bounded(_call_attempt(run), timeout, f"attempt {number}")
    except asyncio.CancelledError:
        run.attempt_log.append(
            Attempt(
                number=number,
                started=_opened(gate, started),
                ended=run.clock(),
                status=RunStatus.CANCELLED,
            )
        )
        raise
    ended = run.body_ended or run.clock()
    started = _opened(gate, started)
    # A job that finished without awaiting anything returns within its first step; let
    # the other runs of the same burst start before this one's bookkeeping (the guard's
    # check alone costs tens of µs).
    await asyncio.sleep(0)
    sigguard.restore(job.name)  # a path the guard cannot see may have taken SIGTERM
    result = await _judge(run, outcome, timed_out)
    if result.failure is not None and number < job.retry.attempts:
        result = await _settle_before_retry(run, result, number)
    failure = result.failure
    run.attempt_log.append(
        Attempt(
            number=number,
            started=started,
            ended=ended,
            status=failure.status if failure else RunStatus.SUCCEEDED,
            error_type=failure.error_type if failure else None,
            error=failure.error if failure else None,
        )
    )
    if failure is not None:
        run.event(
            EventKind.ATTEMPT_FAILED,
            status=failure.status,
            attempt=number,
            max_attempts=job.retry.attempts,
            error_type=failure.error_type,
            error=failure.error,
            level=logging.WARNING,
        )
    return result


async def _judge(run: _Run, outcome: Outcome | None, timed_out: bool) -> _AttemptResult:
    # Whatever the attempt handed back is dropped off the loop once nobody holds it.
    let_go(outcome)
    if timed_out:
        return _AttemptResult(items=run.items, failure=await _timeout_failure(run, outcome))
    assert outcome is not None  # only a timed-out task may be left without an outcome
    if outcome.error is None:
        return _AttemptResult(value=outcome.value, items=run.items)
    return _AttemptResult(items=run.items, failure=await _failure(run.job, outcome.error))


async def _settle_before_retry(run: _Run, result: _AttemptResult, number: int) -> _AttemptResult:
    """Attempts never overlap: before a retry, wait (up to the job's timeout, or
    HOOK_TIMEOUT without one) for what still runs attempt ``number``'s body; if it outlives
    that, no retry is made and the failure says why."""
    leftover = run.leftover
    if leftover is None or result.failure is None or not run.retryable(result.failure.exc):
        return result
    bound = run.job.timeout.total_seconds() if run.job.timeout is not None else HOOK_TIMEOUT
    what = "its thread" if isinstance(leftover, threading.Thread) else "its task or child process"
    done = run.runtime.returned(leftover) if isinstance(leftover, threading.Thread) else leftover
    if done is not None and not done.done():
        await asyncio.wait({done}, timeout=bound)
    if done is None or done.done():
        run.leftover = None
        return result
    failure = result.failure
    run.not_retried = (
        f"attempt {number}'s body still runs ({what}, {_seconds(bound)} after its end); "
        "not retried, so that two attempts never run at once"
    )
    log.warning("%s: %s", run.label, run.not_retried)
    return _AttemptResult(
        items=result.items,
        failure=replace(failure, error=f"{failure.error}; {run.not_retried}"),
    )


def _retry_delay(policy: RetryPolicy, state: RetryCallState) -> float:
    """Seconds before retry n: min(delay * backoff^(n-1), max_delay) + uniform(0, jitter)."""
    delay = policy.base_delay(state.attempt_number)
    jitter = policy.jitter.total_seconds()
    return delay + (random.uniform(0.0, jitter) if jitter > 0 else 0.0)


async def _attempts(run: _Run, sleep: Callable[[float], Awaitable[None]]) -> _AttemptResult:
    """Attempts until one succeeds, a failure is not retryable or the retries are used up."""

    policy = run.job.retry
    if policy.retries == 0:  # one attempt: no retry machinery on the firing path
        return await _attempt(run)

    def wanted(state: RetryCallState) -> bool:
        outcome = state.outcome
        if outcome is None or outcome.failed:  # a cancellation: let it propagate
            return False
        failure: _Failure | None = outcome.result().failure
        return failure is not None and not run.not_retried and run.retryable(failure.exc)

    def announce(state: RetryCallState) -> None:
        run.event(
            EventKind.RETRYING,
            attempt=state.attempt_number + 1,
            max_attempts=policy.attempts,
            delay=float(state.upcoming_sleep),
        )

    async def pause(seconds: float) -> None:
        await sleep(float(seconds))

    import tenacity

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=functools.partial(_retry_delay, policy),
        retry=wanted,
        before_sleep=announce,
        sleep=pause,
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    final: _AttemptResult = await retrying(_attempt, run)
    return final


# --- errors, tracebacks and previews -------------------------------------------------------------


async def _failure(job: JobSpec, exc: BaseException) -> _Failure:
    """The failure ``exc`` makes, its text made off the loop, bounded and contained."""
    prefix = ""
    if type(exc) is _HandlerFailed:
        prefix = f"generate_handler {exc.ref!r} failed: "
        exc = exc.original
    if type(exc) is ReportedError:  # text already, made by the child process
        error_type = job.redact(failures.clip(exc.type_name, 300))
        error = failures.redacted(prefix + exc.message, ERROR_CHARS, job.redact)
        text = exc.traceback_text
        if text is not None:
            text = failures.redacted(text, TRACEBACK_CHARS, job.redact, keep_end=True)
    else:
        error_type, error, text = await failures.describe_exception_off_loop(
            exc, job.redact, prefix
        )
    return _Failure(
        status=RunStatus.FAILED,
        exc=exc,
        error_type=error_type,
        error=error,
        traceback=text,
    )


async def _timeout_failure(run: _Run, outcome: Outcome | None) -> _Failure:
    job = run.job
    message = f"timed out after {format_duration(job.timeout or timedelta(0))}"
    frames_at = run.stuck_frames
    run.stuck_frames = None
    summary, where = run.stuck_stack, run.stuck_where
    error = outcome.error if outcome is not None else None

    def stack() -> traceback.StackSummary:
        if frames_at is not None:
            found = traceback.StackSummary.extract(iter(frames_at))
            found.reverse()
            return found
        if summary is not None:
            return summary
        if error is not None:
            return traceback.extract_tb(error.__traceback__)
        return traceback.StackSummary()

    if frames_at is None and summary is None:
        where = "cancelled here" if error is not None else ""

    def text() -> str | None:  # reads source files and the job's exception: off the loop
        frames = failures.user_frames(stack())
        if not frames:
            return None
        body = "".join(frames.format())
        full = f"Traceback (most recent call last):\n{body}TimeoutError: {message} ({where})\n"
        return failures.redacted(full, TRACEBACK_CHARS, job.redact, keep_end=True)

    return _Failure(
        status=RunStatus.TIMED_OUT,
        exc=TimeoutError(message),
        error_type="TimeoutError",
        error=message,
        traceback=await _timeout_text(text, frames_at),
    )


async def _timeout_text(
    text: Callable[[], str | None], frames: list[tuple[types.FrameType, int]] | None
) -> str | None:
    try:
        return await offloop.off_loop(text, fallback=None)
    finally:
        release.adopt(frames)  # the stuck thread's frames hold its locals


# --- the run's end and hooks ---------------------------------------------------------------------


async def _call_hook(run: _Run, ref: str, result: RunResult) -> Any:
    if type(result.result) is Pickled:  # the hook gets the value itself, unpickled off the loop
        result = replace(result, result=await loaded(result.result))
    if run.job.secrets:  # a hook's payload never holds a ${NAME} value
        from qtasks_cli.redaction import redact_value

        value, secrets = result.result, run.job.secrets
        # Walking the job's value runs its code (isinstance, iteration): off the loop.
        hidden = await offloop.off_loop(
            lambda: redact_value(value, secrets), fallback=None, refused=None
        )
        result = replace(result, result=hidden)
        release.adopt(hidden)
    return await run.call(run.resolve(ref), result)


async def _run_hook(run: _Run, result: RunResult) -> None:
    """on_success / on_failure: logged when it fails or hangs; never changes the run."""
    job = run.job
    hook = _hook_of(job, result.status)
    if hook is None:
        return
    name, ref = hook
    run.hook = f"{job.name} ({name} hook)"
    if run.runtime.stuck[run.hook]:  # one hung call per hook at most: threads are not free
        log.warning(
            "%s: %s hook %r not called: its call for an earlier run is still running",
            run.label,
            name,
            ref,
        )
        release.adopt(result.result)
        return
    bound = job.timeout.total_seconds() if job.timeout is not None else HOOK_TIMEOUT
    try:
        outcome, timed_out = await run.bounded(_call_hook(run, ref, result), bound, f"{name} hook")
    except asyncio.CancelledError:
        log.warning("%s: %s hook %r abandoned at shutdown", run.label, name, ref)
        raise
    finally:
        release.adopt(result.result)
    let_go(outcome)
    if timed_out:
        log.warning(
            "%s: %s hook %r did not finish within %s; abandoned",
            run.label,
            name,
            ref,
            _seconds(bound),
        )
    elif outcome is not None and outcome.error is not None:
        error_type, error, _ = await failures.describe_exception_off_loop(outcome.error, job.redact)
        log.warning("%s: %s hook %r failed: %s: %s", run.label, name, ref, error_type, error)


def _finished_level(status: RunStatus) -> int:
    if status is RunStatus.SUCCEEDED:
        return logging.INFO
    return logging.WARNING if status is RunStatus.CANCELLED else logging.ERROR


def _finish(run: _Run, result: RunResult, *, recorded: bool = True) -> None:
    run.event(
        EventKind.FINISHED,
        recorded=recorded,
        trigger=result.trigger,
        scheduled=result.scheduled,
        status=result.status,
        attempt=result.attempts,
        max_attempts=run.job.retry.attempts,
        duration=result.duration,
        error_type=result.error_type,
        error=result.error,
        items=result.items,
        level=_finished_level(result.status),
    )


async def _build_result(
    run: _Run, final: _AttemptResult, base: dict[str, Any], ended: datetime
) -> RunResult:
    failure = final.failure
    if failure is not None:
        return RunResult(
            **base,
            ended=ended,
            attempts=len(run.attempt_log),
            status=failure.status,
            error_type=failure.error_type,
            error=failure.error,
            traceback=failure.traceback,
            items=final.items,
            attempt_log=tuple(run.attempt_log),
        )
    value = final.value
    if type(value) is Pickled:  # a process job's: previewed in its child (pickled.py)
        preview: str | None = run.job.redact(value.preview) if value.preview else None
    elif value is None:
        preview = None
    else:
        preview = await previews.preview_off_loop(value, run.job.redact)
    return RunResult(
        **base,
        ended=ended,
        attempts=len(run.attempt_log),
        status=RunStatus.SUCCEEDED,
        result=value,
        result_preview=preview,
        items=final.items,
        attempt_log=tuple(run.attempt_log),
    )


async def execute(
    job: JobSpec,
    *,
    run_id: str,
    trigger: TriggerKind,
    scheduled: datetime | None,
    runtime: Runtime,
    emit: Callable[[Event], None],
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    clock: Callable[[], datetime] = _utc_now,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    resolve: Callable[[str], Any] = entrypoints.resolve,
    gate: Gate | None = None,
) -> RunResult:
    """Run ``job`` once (up to 1 + retries attempts) and return how it went.

    Never raises for anything the job does. The caller holds one ``runtime.capacity`` unit for
    the run. If the caller cancels, the run is reported FINISHED with status CANCELLED and the
    CancelledError is re-raised; a cancellation while a hook runs only stops the hook (the run's
    FINISHED event has already gone out) and is re-raised too.
    """
    run = _Run(
        job,
        run_id=run_id,
        trigger=trigger,
        scheduled=scheduled,
        runtime=runtime,
        emit=emit,
        clock=clock,
        resolve=resolve,
        args=tuple(job.args if args is None else args),
        kwargs=dict(job.kwargs if kwargs is None else kwargs),
        gate=gate,
    )
    started = clock()
    base: dict[str, Any] = {
        "job": job.name,
        "run_id": run_id,
        "trigger": trigger,
        "scheduled": scheduled,
        "started": started,
    }
    context_token = _current_run.set(
        RunInfo(job=job.name, run_id=run_id, trigger=str(trigger), scheduled=scheduled)
    )
    try:
        final = await _attempts(run, sleep)
    except asyncio.CancelledError as exc:
        concluded = runtime.concluded.get(run_id)
        base["started"] = _opened(gate, started)
        cancelled = RunResult(
            **base,
            ended=clock(),
            attempts=len(run.attempt_log),
            status=concluded or RunStatus.CANCELLED,
            error=runtime.why_cancelled.get(run_id, "cancelled"),
            items=run.items,
            attempt_log=tuple(run.attempt_log),
        )
        _finish(run, cancelled, recorded=concluded is None)
        setattr(exc, CANCELLED_RESULT, cancelled)  # the attempts so far, for the record
        raise
    finally:
        _current_run.reset(context_token)
    base["started"] = _opened(gate, started)
    result = await _build_result(run, final, base, clock())
    _finish(run, result)
    if _hook_of(job, result.status):
        # The run is over: its hook runs on its own, never holding the record or the job.
        runtime.start_hook(_run_hook(run, result), f"qtasks:{job.name}:{run_id}:hook")
    else:
        # A large result is freed in slices by a helper thread once the caller drops it, not
        # in one GIL-holding step on the loop.
        release.adopt(result.result)
    return result


def _hook_of(job: JobSpec, status: RunStatus) -> tuple[str, str] | None:
    """``(name, entry point)`` of the hook a run that ended with ``status`` calls, if the job
    has one."""
    if status is RunStatus.SUCCEEDED and job.on_success:
        return "on_success", job.on_success
    if status in _FAILED_FOR_GOOD and job.on_failure:
        return "on_failure", job.on_failure
    return None
