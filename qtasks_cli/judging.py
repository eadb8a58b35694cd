"""What one attempt's outcome comes to: its value, or a ``Failure`` whose text (the job's
exception, or a timeout with where its body was stuck) is made off the loop, bounded, contained
and with the job's secrets hidden.
"""

from __future__ import annotations

import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from qtasks_cli import failures, offloop, offthread, release
from qtasks_cli.calling import HandlerFailed, Run
from qtasks_cli.durations import format_duration
from qtasks_cli.failures import ERROR_CHARS, TRACEBACK_CHARS
from qtasks_cli.isolation.wire import ReportedError
from qtasks_cli.models import JobSpec, RunStatus
from qtasks_cli.runtime import Outcome, let_go


@dataclass(frozen=True, kw_only=True, slots=True)
class Failure:
    """Why an attempt failed, as it is recorded."""

    status: RunStatus  # FAILED or TIMED_OUT
    exc: BaseException  # what retry_on is matched against; a TimeoutError for a timeout
    error_type: str
    error: str
    traceback: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class AttemptResult:
    """What one attempt came to: its value or its failure, and the items it handled."""

    value: Any = None
    items: int | None = None
    failure: Failure | None = None


async def judge(run: Run, outcome: Outcome | None, timed_out: bool) -> AttemptResult:
    """What an attempt came to, from its ``outcome`` (None: it would not stop) and whether it
    timed out."""
    # Whatever the attempt handed back is dropped off the loop once nobody holds it.
    let_go(outcome)
    if timed_out:
        return AttemptResult(items=run.items, failure=await _timeout_failure(run, outcome))
    assert outcome is not None  # only a timed-out task may be left without an outcome
    if outcome.error is None:
        return AttemptResult(value=outcome.value, items=run.items)
    return AttemptResult(items=run.items, failure=await _failure(run.job, outcome.error))


async def _failure(job: JobSpec, exc: BaseException) -> Failure:
    """The failure ``exc`` makes, its text made off the loop, bounded and contained."""
    prefix = ""
    if type(exc) is HandlerFailed:
        prefix = f"generate_handler {exc.ref!r} failed: "
        exc = exc.original
    if type(exc) is ReportedError:  # text already, made by the child process
        # Its secrets hidden in a thread of the daemon's own: a child's 400 KB message and
        # traceback full of invisible characters took the loop a second to redact.
        try:
            error_type, error, text = await offthread.run(
                _reported, job, exc, prefix, name="qtasks-judge"
            )
        except RuntimeError:  # no thread can start: here, then
            error_type, error, text = _reported(job, exc, prefix)
    else:
        error_type, error, text = await failures.describe_exception_off_loop(
            exc, job.redact, prefix
        )
    return Failure(
        status=RunStatus.FAILED,
        exc=exc,
        error_type=error_type,
        error=error,
        traceback=text,
    )


def _reported(job: JobSpec, exc: ReportedError, prefix: str) -> tuple[str, str, str | None]:
    """A child's error as recorded: type, message and traceback, clipped, secrets hidden."""
    error_type = job.redact(failures.clip(exc.type_name, 300))
    error = failures.redacted(prefix + exc.message, ERROR_CHARS, job.redact)
    text = exc.traceback_text
    if text is not None:
        text = failures.redacted(text, TRACEBACK_CHARS, job.redact, keep_end=True)
    return error_type, error, text


async def _timeout_failure(run: Run, outcome: Outcome | None) -> Failure:
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

    return Failure(
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
