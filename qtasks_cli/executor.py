"""Runs one job once: attempts with retries and a per-attempt timeout, generators, hooks.

``execute`` is the one engine behind ``qtasks run`` and ``qtasks trigger``. It reports what happens
as Events through a callback, returns a RunResult and never prints or touches the store.
tenacity is imported only when a run executes, so importing this module stays light.

The parts it drives: ``calling`` (a run's state and its calls into the job's code),
``attemptbody`` (an attempt's body), ``judging`` (what an attempt came to), ``hooks``
(``on_success``/``on_failure``) and ``runtime`` (what all runs of the process share: the cap,
the threads, the child processes).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
from collections.abc import (
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from qtasks_cli import entrypoints, previews, release, sigguard
from qtasks_cli.attemptbody import call_attempt
from qtasks_cli.calling import Run
from qtasks_cli.clock import utcnow as _utc_now
from qtasks_cli.context import RUN_VAR as _current_run
from qtasks_cli.context import RunInfo
from qtasks_cli.durations import format_seconds
from qtasks_cli.events import AttemptFailed, Event, Finished, Retrying, Started
from qtasks_cli.hooks import HOOK_TIMEOUT, hook_of, run_hook
from qtasks_cli.judging import AttemptResult, Failure, judge
from qtasks_cli.models import (
    Attempt,
    JobSpec,
    RetryPolicy,
    RunResult,
    RunStatus,
    TriggerKind,
)
from qtasks_cli.pickled import Pickled
from qtasks_cli.runtime import Runtime

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from qtasks_cli.burst import Gate

log = logging.getLogger(__name__)


# --- one run -------------------------------------------------------------------------------------


# The attribute of the CancelledError ``execute`` re-raises that holds the run's result so far.
CANCELLED_RESULT = "qtasks_result"


def _opened(gate: Gate | None, started: datetime) -> datetime:
    """When an attempt started: the moment its burst's gate opened, if it waited at one (the
    clock read before it is from before the instant); else ``started``."""
    if gate is not None and gate.at is not None and gate.at > started:
        return gate.at
    return started


# --- attempts and retries ------------------------------------------------------------------------


async def _attempt(run: Run) -> AttemptResult:
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
        run.emit(
            Started(
                time=started if gate is None else max(gate.instant, started),
                job=run.job.name,
                run_id=run.run_id,
                trigger=run.trigger,
                scheduled=run.scheduled,
                max_attempts=job.retry.attempts,
            )
        )
    timeout = job.timeout.total_seconds() if job.timeout is not None else None
    try:
        outcome, timed_out = await run.bounded(call_attempt(run), timeout, f"attempt {number}")
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
    result = await judge(run, outcome, timed_out)
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
        run.emit(
            AttemptFailed(
                time=run.clock(),
                job=run.job.name,
                run_id=run.run_id,
                status=failure.status,
                attempt=number,
                max_attempts=job.retry.attempts,
                error_type=failure.error_type,
                error=failure.error,
                level=logging.WARNING,
            )
        )
    return result


async def _settle_before_retry(run: Run, result: AttemptResult, number: int) -> AttemptResult:
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
        f"attempt {number}'s body still runs ({what}, {format_seconds(bound)} after its end); "
        "not retried, so that two attempts never run at once"
    )
    log.warning("%s: %s", run.label, run.not_retried)
    return AttemptResult(
        items=result.items,
        failure=replace(failure, error=f"{failure.error}; {run.not_retried}"),
    )


def _retry_delay(policy: RetryPolicy, state: RetryCallState) -> float:
    """Seconds before retry n: min(delay * backoff^(n-1), max_delay) + uniform(0, jitter)."""
    delay = policy.base_delay(state.attempt_number)
    jitter = policy.jitter.total_seconds()
    return delay + (random.uniform(0.0, jitter) if jitter > 0 else 0.0)


async def _attempts(run: Run, sleep: Callable[[float], Awaitable[None]]) -> AttemptResult:
    """Attempts until one succeeds, a failure is not retryable or the retries are used up."""

    policy = run.job.retry
    if policy.retries == 0:  # one attempt: no retry machinery on the firing path
        return await _attempt(run)

    def wanted(state: RetryCallState) -> bool:
        outcome = state.outcome
        if outcome is None or outcome.failed:  # a cancellation: let it propagate
            return False
        failure: Failure | None = outcome.result().failure
        return failure is not None and not run.not_retried and run.retryable(failure.exc)

    def announce(state: RetryCallState) -> None:
        run.emit(
            Retrying(
                time=run.clock(),
                job=run.job.name,
                run_id=run.run_id,
                attempt=state.attempt_number + 1,
                max_attempts=policy.attempts,
                delay=float(state.upcoming_sleep),
            )
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
    final: AttemptResult = await retrying(_attempt, run)
    return final


# --- the run's end -------------------------------------------------------------------------------


def _finished_level(status: RunStatus) -> int:
    if status is RunStatus.SUCCEEDED:
        return logging.INFO
    return logging.WARNING if status is RunStatus.CANCELLED else logging.ERROR


def _finish(run: Run, result: RunResult, *, recorded: bool = True) -> None:
    run.emit(
        Finished(
            time=run.clock(),
            job=run.job.name,
            run_id=run.run_id,
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
    )


async def _build_result(
    run: Run, final: AttemptResult, base: dict[str, Any], ended: datetime
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
    run = Run(
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
    if hook_of(job, result.status):
        # The run is over: its hook runs on its own, never holding the record or the job.
        runtime.start_hook(run_hook(run, result), f"qtasks:{job.name}:{run_id}:hook")
    else:
        # A large result is freed in slices by a helper thread once the caller drops it, not
        # in one GIL-holding step on the loop.
        release.adopt(result.result)
    return result
