"""The keyword-only Python API behind every command; the CLI only parses and calls these."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import signal
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qtasks_cli.errors import EXIT_FORCED, QtasksError, UnknownJobError
from qtasks_cli.models import Config, JobSpec, RunResult, RunStatus, TriggerKind

if TYPE_CHECKING:
    import asyncio

    from qtasks_cli.events import EventBus
    from qtasks_cli.models import RunResult
    from qtasks_cli.request import RunCall
    from qtasks_cli.store.base import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

FINISHED_POLL = 0.2  # how often ``trigger --enqueue --wait`` looks at the store


def load(
    config: str | os.PathLike[str] | None,
    *,
    check_imports: bool = True,
    variables_required: bool = True,
) -> Config:
    """Read and validate a job file (``$QTASKS_CONFIG`` or ``./jobs.yaml`` when None).

    Commands that run no job (``list``, ``history``, ``trigger --enqueue``) pass
    ``variables_required=False``: they need no ``${NAME}`` value, the daemon resolves it."""
    from qtasks_cli.config import default_config_path, load_config

    return load_config(
        config if config is not None else default_config_path(),
        check_imports=check_imports,
        variables_required=variables_required,
    )


def state_location(config: Config, override: str | None = None) -> str:
    """Where history lives: ``--state``, else ``$QTASKS_STATE``, else ``settings.state``."""
    chosen = override or os.environ.get("QTASKS_STATE") or config.settings.state
    if "://" in chosen:
        return chosen
    # Made absolute without following links: store.paths checks (and refuses) links itself.
    return os.path.abspath(chosen) if override else chosen


def open_state(config: Config, override: str | None = None) -> Store:
    from qtasks_cli.store import open_store

    return open_store(
        state_location(config, override),
        schema=config.settings.schema,
        node_timeout=config.settings.node_timeout,
    )


def get_job(config: Config, name: str) -> JobSpec:
    """The job called ``name``, or UnknownJobError with the closest names."""
    try:
        return config.jobs[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(config.jobs), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = ", ".join(config.jobs) or "none"
        raise UnknownJobError(
            f"{config.path}: no job named {name!r}{hint}; jobs: {known}"
        ) from None


def next_fires(job: JobSpec, count: int, after: datetime) -> list[datetime]:
    """The job's next ``count`` fire times after ``after``, in the job's zone."""
    from qtasks_cli.zones import get_zone

    if job.schedule is None:
        return []
    zone = get_zone(job.timezone)
    fires: list[datetime] = []
    t: datetime | None = after
    while len(fires) < count and t is not None:
        t = job.schedule.next_after(t)
        if t is not None:
            fires.append(t.astimezone(zone))
    return fires


def list_jobs(
    config: Config, *, count: int = 1, after: datetime | None = None
) -> list[dict[str, Any]]:
    """What ``qtasks list --json`` prints: one mapping per job."""
    start = after or datetime.now(timezone.utc)
    return [
        {
            "name": job.name,
            "schedule": job.schedule.describe() if job.schedule else "only when triggered",
            "schedule_text": job.schedule_text,
            "timezone": job.timezone,
            "timezone_source": _zone_source(config, job),
            "enabled": job.enabled,
            "description": job.description,
            "next": [t.isoformat() for t in next_fires(job, count, start)] if job.enabled else [],
        }
        for job in config.jobs.values()
    ]


def _zone_source(config: Config, job: JobSpec) -> str:
    """Where the job's zone came from: its own key, settings.timezone or the machine."""
    if job.timezone != config.settings.timezone:
        return f"job file (jobs.{job.name}.timezone)"
    return config.zone_source or "job file (settings.timezone)"


def paused_jobs(config: Config, state: str | None = None) -> frozenset[str]:
    """The jobs paused with ``qtasks pause``; empty when the state cannot be read (a file
    not created yet, a database that does not answer: ``list`` works without them)."""
    from qtasks_cli.store import is_url, open_control

    location = state_location(config, state)
    if not is_url(location) and not Path(location).exists():
        return frozenset()
    try:
        store = open_control(location, schema=config.settings.schema)
    except QtasksError as exc:
        log.debug("cannot read paused jobs: %s", exc)
        return frozenset()
    try:
        return frozenset(store.paused())
    except QtasksError as exc:
        log.debug("cannot read paused jobs: %s", exc)
        return frozenset()
    finally:
        store.close()


def build_call(
    job: JobSpec, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
) -> RunCall:
    """A run's arguments by the one rule of ``qtasks_cli.request``; caller values are
    stored literally."""
    from qtasks_cli.request import build_call

    return build_call(job, args, kwargs)


# --- trigger -------------------------------------------------------------------------------------


async def trigger_now(
    config: Config,
    job_name: str,
    *,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    state: str | None = None,
    bus: EventBus,
) -> RunResult:
    """Run one job now in this process with its retry, timeout, generator and hook settings,
    and record it in the history as a ``manual`` run."""
    import asyncio

    from qtasks_cli.executor import CANCELLED_RESULT, execute
    from qtasks_cli.output import Capture, recorded
    from qtasks_cli.pickled import loaded
    from qtasks_cli.runtime import Runtime
    from qtasks_cli.store import new_run_id

    capture = Capture()
    job = get_job(config, job_name)
    call = build_call(job, args, kwargs)
    store = open_state(config, state)
    await store.open()
    runtime = Runtime(config.settings.max_concurrent)
    run_id = new_run_id()
    now = datetime.now(timezone.utc)
    try:
        await store.add_run(
            RunResult(
                job=job.name,
                run_id=run_id,
                trigger=TriggerKind.MANUAL,
                scheduled=None,
                started=now,
                ended=None,
                attempts=0,
                status=RunStatus.RUNNING,
            ),
            # The history keeps ${NAME} placeholders, never the values behind them.
            args=call.stored_args,
            kwargs=call.stored_kwargs,
        )
        await runtime.occupancy.take_slot(job.name)  # as the daemon's runs take theirs
        capture.install()
        bus.subscribe(capture.sink)
        stopped_by: list[str] = []  # why the run was stopped: Ctrl-C or SIGTERM

        async def body() -> RunResult:
            try:
                return await execute(
                    job,
                    run_id=run_id,
                    trigger=TriggerKind.MANUAL,
                    scheduled=None,
                    runtime=runtime,
                    emit=bus.emit,
                    args=call.args,
                    kwargs=call.kwargs,
                )
            except asyncio.CancelledError as exc:
                so_far = getattr(exc, CANCELLED_RESULT, None)  # its attempts so far
                if stopped_by and isinstance(so_far, RunResult):
                    return replace(so_far, error=f"cancelled by {stopped_by[0]}")
                raise

        running = asyncio.create_task(body())
        try:
            with _stops_on_signals(running, stopped_by):
                result = await running
            await runtime.settle_hooks(None)  # each bounded by its own timeout
        finally:
            bus.unsubscribe(capture.sink)
            capture.uninstall()
        runtime.occupancy.give_slot()
        # What it printed is recorded with its end, as the daemon records it (qtasks show).
        await store.finish(recorded(result, capture.take(run_id), job))
        # A process job's value comes back pickled (pickled.py): the caller gets the value.
        return replace(result, result=await loaded(result.result))
    finally:
        runtime.shutdown()
        await store.close()


@contextlib.contextmanager
def _stops_on_signals(run: asyncio.Task[Any], why: list[str]) -> Iterator[None]:
    """While ``run`` (a ``trigger`` run) goes on, Ctrl-C (SIGINT) or SIGTERM stops it as
    ``qtasks cancel`` stops a daemon's run: an async job is cancelled, a process job's child
    gets SIGTERM, then SIGKILL after kill_grace, a thread job is abandoned; it is recorded
    ``cancelled by Ctrl-C`` (or ``by SIGTERM``). A second one exits at once with 130, as the
    daemon does: the run's row then stays ``running`` until a daemon's recovery concludes it."""
    import asyncio

    loop = asyncio.get_running_loop()

    def stop(name: str) -> None:
        if why:
            os._exit(EXIT_FORCED)
        why.append(name)
        run.cancel()

    owned = (signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")
    for signum, name in owned:
        loop.add_signal_handler(signum, stop, name)
    try:
        yield
    finally:
        for signum, _ in owned:
            loop.remove_signal_handler(signum)


def enqueue(
    job: str,
    /,
    *args: Any,
    config: str | os.PathLike[str] | None = None,
    state: str | None = None,
    **kwargs: Any,
) -> str:
    """Hand a run of ``job`` to the daemon; return its run id at once."""
    return enqueue_loaded(load_cached(config), job, args, kwargs, state=state)


_LOADED: dict[Path, tuple[tuple[int, int], Config]] = {}


def load_cached(config: str | os.PathLike[str] | None) -> Config:
    """The job file, parsed again only when it changed: the shop's code may hand over
    thousands of runs a second, and parsing the YAML was 80% of each call."""
    from qtasks_cli.config import default_config_path

    path = Path(config if config is not None else default_config_path()).resolve()
    try:
        st = path.stat()
    except OSError:
        return load(path, check_imports=False)  # reports the missing file properly
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _LOADED.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    from qtasks_cli.config import load_config

    # The placeholders are stored, not their values: this process need not hold the secrets.
    loaded = load_config(path, check_imports=False, variables_required=False)
    _LOADED[path] = (stamp, loaded)
    return loaded


def enqueue_loaded(
    config: Config,
    job: str,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    *,
    state: str | None = None,
) -> str:
    """``enqueue`` for a job file already loaded: the arguments are built and checked here,
    by the rule every start path uses (``args`` None or empty: the job file's), and stored
    with the job file's ``${NAME}`` placeholders kept, never their values, and the caller's
    values as given. ArgumentsError if they are refused."""
    import sys

    from qtasks_cli.entrypoints import add_to_sys_path
    from qtasks_cli.store import enqueue_now

    spec = get_job(config, job)
    if any(str(folder) not in sys.path for folder in config.settings.path):
        add_to_sys_path(config.settings.path)  # to import the entry point for its signature
    from qtasks_cli.request import build_call as build

    # Variables unset here are resolved by the daemon when the run starts.
    call = build(spec, args or None, kwargs, unset_ok=True)
    location = state_location(config, state)
    return enqueue_now(
        location, spec.name, call.stored_args, call.stored_kwargs, schema=config.settings.schema
    )


async def wait_for_run(config: Config, run_id: str, *, state: str | None = None) -> RunResult:
    """Block until the run has finished; return its row."""
    import asyncio

    store = open_state(config, state)
    await store.open()
    try:
        while True:
            row = await store.get_run(run_id)
            if row is not None and row.status.finished:
                return row
            await asyncio.sleep(FINISHED_POLL)
    finally:
        await store.close()


async def read_history(
    config: Config,
    *,
    job: str | None = None,
    limit: int = 50,
    status: RunStatus | None = None,
    state: str | None = None,
    stats: bool = False,
) -> list[Any]:
    store = open_state(config, state)
    await store.open()
    try:
        if stats:
            return list(await store.stats(job))
        return list(await store.history(job, limit=limit, status=status))
    finally:
        await store.close()


async def recent_runs(
    config: Config, jobs: Sequence[str], count: int, *, state: str | None = None
) -> dict[str, list[RunResult]]:
    """Per job, its latest ``count`` runs that ran (not skipped or missed), oldest first."""
    from qtasks_cli.ui.sparkline import oldest_first

    store = open_state(config, state)
    await store.open()
    try:
        # Skipped and missed fires (a paused job) are read past, up to a bound.
        return {
            job: oldest_first(await store.history(job, limit=count * 10), count) for job in jobs
        }
    finally:
        await store.close()
