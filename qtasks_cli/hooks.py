"""A finished run's hook, ``on_success`` or ``on_failure``: called with the run's result
(unpickled, its secrets hidden), bounded by the job's timeout, logged when it fails or hangs, and
never changing the run.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from qtasks_cli import failures, offloop, release
from qtasks_cli.calling import Run
from qtasks_cli.durations import format_seconds
from qtasks_cli.models import JobSpec, RunResult, RunStatus
from qtasks_cli.pickled import Pickled, loaded
from qtasks_cli.runtime import let_go

# The executor's logger, as before the hooks moved out of it: its records keep their name (the
# JSON log's "logger").
log = logging.getLogger("qtasks_cli.executor")

HOOK_TIMEOUT = 60.0  # seconds, for hooks of jobs without a timeout

_FAILED_FOR_GOOD = (RunStatus.FAILED, RunStatus.TIMED_OUT)


async def _call_hook(run: Run, ref: str, result: RunResult) -> Any:
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


async def run_hook(run: Run, result: RunResult) -> None:
    """on_success / on_failure: logged when it fails or hangs; never changes the run."""
    job = run.job
    hook = hook_of(job, result.status)
    if hook is None:
        return
    name, ref = hook
    run.hook = f"{job.name} ({name} hook)"
    # One hung call per hook at most: threads are not free.
    if run.runtime.occupancy.of(run.hook).stuck:
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
            format_seconds(bound),
        )
    elif outcome is not None and outcome.error is not None:
        error_type, error, _ = await failures.describe_exception_off_loop(outcome.error, job.redact)
        log.warning("%s: %s hook %r failed: %s: %s", run.label, name, ref, error_type, error)


def hook_of(job: JobSpec, status: RunStatus) -> tuple[str, str] | None:
    """``(name, entry point)`` of the hook a run that ended with ``status`` calls, if the job
    has one."""
    if status is RunStatus.SUCCEEDED and job.on_success:
        return "on_success", job.on_success
    if status in _FAILED_FOR_GOOD and job.on_failure:
        return "on_failure", job.on_failure
    return None
