"""``qtasks pause``, ``resume`` and ``cancel`` from another shell: written to the store (so
they last across restarts and reach every node), then the daemons' control threads are
woken (``ControlStore.wake``: a datagram for SQLite, a NOTIFY for PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from qtasks_cli.errors import EXIT_JOB_FAILED, EXIT_USAGE, QtasksError
from qtasks_cli.models import Config, RunResult, RunStatus, TriggerKind
from qtasks_cli.store import open_control
from qtasks_cli.store.control import ControlStore, Pause, who

CANCEL_POLL = 0.1  # seconds between looks at a run being cancelled
CANCEL_MARGIN = 15.0  # seconds beyond kill_grace that ``cancel`` waits for the daemon


class RunNotFound(QtasksError):
    exit_code = EXIT_USAGE


class NotCancelled(QtasksError):
    """The run could not be cancelled (it ended first, nobody runs it, ...)."""

    exit_code = EXIT_JOB_FAILED


def control_for(config: Config, state: str | None = None) -> ControlStore:
    """The operator's tables of ``config``'s state (``--state`` and $QTASKS_STATE honoured)."""
    from qtasks_cli.api import state_location

    return open_control(state_location(config, state), schema=config.settings.schema)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def pause_job(config: Config, job: str, *, state: str | None = None) -> tuple[Pause, bool]:
    """Pause ``job`` until resumed; (the pause, True when it was paused just now)."""
    from qtasks_cli.api import get_job

    name = get_job(config, job).name
    store = control_for(config, state)
    try:
        me = who()
        pause = store.pause(name, me, _now())
        store.wake()
    finally:
        store.close()
    return pause, pause.by == me


def resume_job(config: Config, job: str, *, state: str | None = None) -> Pause | None:
    """Lift the pause of ``job``; the pause lifted, or None when it was not paused. A job
    no longer in the file can be resumed too (its pause would otherwise stay forever)."""
    store = control_for(config, state)
    try:
        if job not in config.jobs and job not in store.paused():
            from qtasks_cli.api import get_job

            get_job(config, job)  # raises UnknownJobError with the closest names
        lifted = store.resume(job)
        store.wake()
    finally:
        store.close()
    return lifted


@dataclass(frozen=True, kw_only=True, slots=True)
class CancelOutcome:
    run_id: str
    job: str
    status: RunStatus
    error: str | None
    waited: float  # seconds
    note: str = ""  # why it is not recorded yet (its daemon is gone: recovery records it)


def cancel_run(
    config: Config,
    run_id: str,
    *,
    state: str | None = None,
    wait: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> CancelOutcome:
    """Stop a run: a handed-over run not taken yet is cancelled at once; a claimed or running
    run is stopped by the daemon running it (its job's kill_grace applies), and this waits
    up to ``wait`` seconds (default: kill_grace + 15 s) for it to be recorded.

    Raises RunNotFound (exit 2) for an unknown id, NotCancelled (exit 1) when the run had
    ended, is a foreground ``qtasks trigger`` run, or no daemon stopped it in time."""
    store = control_for(config, state)
    try:
        row = store.run(run_id)
        if row is None:
            raise RunNotFound(f"{store.location}: no run {run_id!r} (see qtasks history)")
        if row.status.finished:
            raise NotCancelled(f"run {run_id} of {row.job} has already ended: {row.status}")
        if row.trigger is TriggerKind.MANUAL:
            where = f"pid {row.pid} on {row.host}" if row.pid else "another shell"
            raise NotCancelled(
                f"run {run_id} of {row.job} is a foreground `qtasks trigger` run ({where}); "
                "stop it there with Ctrl-C"
            )
        answer = store.request_cancel(run_id, who(), _now())
        store.wake()
        if answer not in ("requested", "cancelled"):
            if answer == "unknown":
                raise RunNotFound(f"{store.location}: no run {run_id!r}")
            raise NotCancelled(f"run {run_id} of {row.job} has already ended: {answer}")
        if answer == "requested" and wait == 0:  # --wait 0: ask and return
            return CancelOutcome(
                run_id=run_id, job=row.job, status=row.status, error="cancel requested", waited=0
            )
        gone = _owner_gone(store, row) if answer == "requested" else ""
        if gone:  # nobody runs it: the request stands, and recovery concludes it cancelled
            return CancelOutcome(
                run_id=run_id, job=row.job, status=row.status, error=None, waited=0, note=gone
            )
        spec = config.jobs.get(row.job)
        grace = spec.kill_grace.total_seconds() if spec is not None else 5.0
        limit = wait if wait is not None else grace + CANCEL_MARGIN
        began = time.monotonic()
        while True:
            final = store.run(run_id)
            if final is not None and final.status.finished:
                break
            if time.monotonic() - began > limit:
                raise NotCancelled(
                    f"cancel of run {run_id} of {row.job} requested, but no daemon stopped it "
                    f"within {limit:g}s (is a daemon running? see qtasks status); the request "
                    "stands: the daemon running it acts on it when it answers again, and if "
                    "that daemon is gone the run is recorded cancelled when it is recovered"
                )
            sleep(CANCEL_POLL)
    finally:
        store.close()
    outcome = CancelOutcome(
        run_id=run_id,
        job=final.job,
        status=final.status,
        error=final.error,
        waited=time.monotonic() - began,
    )
    if final.status is not RunStatus.CANCELLED:
        raise NotCancelled(
            f"run {run_id} of {final.job} ended before it was cancelled: {final.status}"
        )
    return outcome


def _owner_gone(store: ControlStore, row: RunResult) -> str:
    """What to say when whoever runs ``row`` is gone (``status.owner_state``), else ""."""
    import socket

    from qtasks_cli.status import OWNER_GONE, daemon_views, owner_state
    from qtasks_cli.store import is_url

    here = socket.gethostname()
    views = daemon_views(None, store.daemons(), now=_now(), host=here)
    if owner_state(row, views, here=here) != OWNER_GONE:
        return ""
    then = (
        "a live node records it cancelled once node_timeout has passed, or the next start"
        if is_url(store.location) and row.trigger is not TriggerKind.MANUAL
        else "the next start records it cancelled (not interrupted)"
    )
    return f"nothing runs it any more: its daemon is gone; the cancel is kept, and {then}"
