"""The daemon's loop, which wires the parts: it sleeps until the next thing due or a wake-up,
then asks each part to do its share, and stops gracefully when asked.

The parts, each in a module of its own: ``timetable`` (the job table and the heap of next
fires), ``claims`` (fires claimed ahead of their instant), ``firing`` (started on it),
``runs`` (a run through the executor, overlap queues, cancels), ``intake`` (handed-over
requests), ``cluster`` (heartbeats and reaping on a shared store), ``ledger`` (claim ->
start -> finish), ``pruning``, ``views`` (the snapshot) and ``stopping``; ``policy`` decides.
Signal handlers only flip state (``request_stop``, ``request_reload``); clock, timer injected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any

from qtasks_cli import cancels, outcomes, sigguard
from qtasks_cli.claims import CLAIM_RETRY, CLAIM_RETRY_MAX, Claims
from qtasks_cli.clock import FIRE_EARLY, StepWatch, Timer, Wakeup, utcnow
from qtasks_cli.cluster import Cluster
from qtasks_cli.events import Event, EventBus, Ready, Reloaded, ReloadFailed, Reloading, Stopping
from qtasks_cli.firing import Firing
from qtasks_cli.intake import Intake
from qtasks_cli.ledger import Ledger, until_stored
from qtasks_cli.models import Config, RunResult, RunStatus, Snapshot, TriggerKind
from qtasks_cli.pruning import Pruner
from qtasks_cli.reloading import reread, settings_changes
from qtasks_cli.runs import Runs
from qtasks_cli.runtime import Runtime
from qtasks_cli.stopping import stop_runs, stop_settle
from qtasks_cli.store.base import Announcer, ClusterStore, Store
from qtasks_cli.timetable import Ahead, JobState, Timetable
from qtasks_cli.views import JobViews, plan_notices

log = logging.getLogger(__name__)

# Seconds between wake-ups while runs go on, to put back signal handlers (sigguard.check).
SIGNAL_CHECK = 1.0

__all__ = ["Supervisor", "Timer", "Wakeup", "utcnow"]


class Supervisor:
    """Fires every job at its time and runs it with the executor until asked to stop."""

    def __init__(
        self,
        config: Config,
        *,
        store: Store,
        bus: EventBus,
        clock: Callable[[], datetime] = utcnow,
        timer: Timer | None = None,
        reload: Callable[[], Awaitable[Config]] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self._first = config.settings  # what a reload cannot change
        self.store = store
        self.bus = bus
        self.clock = clock
        # Clock steps are seen against the monotonic clock (a test driving ``clock`` has none).
        monotonic = monotonic or (time.monotonic if clock is utcnow else None)
        self._steps = StepWatch(monotonic) if monotonic is not None else None
        self.timer = timer or Timer()
        self._reload_config = reload
        self.runtime = Runtime(config.settings.max_concurrent, on_freed=self._freed)
        self.occupancy = self.runtime.occupancy
        self.started_at = clock()
        self.jobs: dict[str, JobState] = {}  # shared with the parts below; never rebound
        self.timetable = Timetable(self.jobs)
        self._wake = Wakeup()
        self._stopping = False
        self._stopped = asyncio.Event()
        self.ledger = Ledger(
            store,
            clock=clock,
            stopping=lambda: self._stopping,
            nap=self._nap,
            background=self._background,
            retry=(CLAIM_RETRY.total_seconds(), CLAIM_RETRY_MAX.total_seconds()),
        )
        self._reload_requested = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.runs = Runs(
            jobs=self.jobs,
            store=store,
            ledger=self.ledger,
            runtime=self.runtime,
            bus=bus,
            clock=clock,
            emit=self._emit,
            tasks=self._tasks,
            background=self._background,
            wake=self._wake,
            config=lambda: self.config,
            stopping=lambda: self._stopping,
        )
        # What only some stores can do is wired here, once: the parts never ask the store.
        self.cluster = Cluster(
            store=store if isinstance(store, ClusterStore) else None,
            holder=self.runs,
            config=lambda: self.config,
            clock=clock,
            emit=self._emit,
            interrupted=self._interrupted,
            rerun_jobs=self._rerun_jobs,
            stopping=lambda: self._stopping,
        )
        self.claims = Claims(
            jobs=self.jobs,
            timetable=self.timetable,
            ledger=self.ledger,
            shared=self.cluster.shared,
            config=lambda: self.config,
            paused=lambda: self.paused,
            held=lambda: self.cluster.held,
            clock=clock,
            emit=self._emit,
            tasks=self._tasks,
            wake=self._wake,
            read_run=store.get_run,
        )
        self.firing = Firing(
            jobs=self.jobs,
            ledger=self.ledger,
            runs=self.runs,
            occupancy=self.occupancy,
            cluster=self.cluster,
            paused=lambda: self.paused,
            clock=clock,
            emit=self._emit,
            # A test's clock has no overshoot: it wakes on the instant itself.
            early=FIRE_EARLY if clock is utcnow else 0.0,
        )
        self._side_tasks: list[asyncio.Task[None]] = []
        self._reload_task: asyncio.Task[None] | None = None
        # A reloaded file waiting to be applied, with its new jobs' first fires (timetable).
        self._parsed: tuple[Config, Mapping[str, Ahead]] | None = None
        self.intake = Intake(
            store=store,
            clock=clock,
            wake=self._wake,
            tasks=self._tasks,
            deliver=self.runs.start_queued,
            stopping=lambda: self._stopping,
            announcer=store if isinstance(store, Announcer) else None,
        )
        self._pruner = Pruner(store, lambda: self.config.settings)
        self.ready = asyncio.Event()
        self._views = JobViews(self.jobs, self.occupancy)  # for snapshot()
        # Operator's hooks (qtasks_cli/control.py sets them from the store): paused jobs;
        # and a call after a new job file was applied (the operator's view changes).
        self.paused: frozenset[str] = frozenset()
        self.on_config: Callable[[], None] | None = None

    # --- control: signal handlers call these; they only flip state -------------------------

    def request_stop(self) -> None:
        self._stopping = True
        self._stopped.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def nudge(self) -> None:
        """Look for handed-over requests soon (qtasks_cli.intake)."""
        self.intake.nudge()

    @property
    def running(self) -> int:
        """Runs whose body runs, or is about to start: they hold a slot."""
        return self.occupancy.running

    def _freed(self, job: str) -> None:
        """A stuck thread or task of ``job`` ended: its queued run may start."""
        self.runs.start_pending(job)

    def cancel_run(self, run_id: str, by: str) -> bool:
        """Stop a run of this daemon for ``qtasks cancel`` (qtasks_cli.runs.Runs.cancel)."""
        return self.runs.cancel(run_id, by)

    def runs_in_hand(self) -> dict[str, str]:
        """Every run this daemon holds, run id -> job (qtasks_cli.fencing)."""
        return self.runs.runs_in_hand()

    def let_go(self, run_id: str, status: RunStatus, why: str) -> None:
        """Stop holding a run another node concluded (qtasks_cli.fencing)."""
        self.runs.let_go(run_id, status, why)

    def snapshot(self) -> Snapshot:
        """The daemon's state now, for displays; cheap enough to call a few times a second."""
        return Snapshot(
            now=self.clock(),
            started_at=self.started_at,
            jobs=self._views.views(paused=self.paused, abandoned=self.runtime.abandoned),
            running=self.occupancy.running,
            queued=self.runs.queued,
            state=self.store.location,
            nodes=self.cluster.nodes,
            waiting=self.occupancy.waiting,
            abandoned=len(self.runtime.abandoned),
            paused_jobs=tuple(sorted(self.paused)),
        )

    # --- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Supervise until ``request_stop``; then stop gracefully."""
        await self._start()
        # Each returns at once where the store has no such seam (one daemon; no NOTIFY).
        self._side_tasks.append(asyncio.create_task(self.cluster.keep_in_touch()))
        self._side_tasks.append(asyncio.create_task(self.intake.listen()))
        self.ready.set()
        self._emit(Ready(time=self.clock()))
        while not self._stopping:
            if self._reload_requested and (self._reload_task is None or self._reload_task.done()):
                # Parsed in the background so firing goes on; a SIGHUP during a parse
                # leaves the flag set and starts one more parse after it.
                self._reload_requested = False
                self._reload_task = asyncio.create_task(self._reload())
                self._reload_task.add_done_callback(lambda _: self._wake.set())
            if self._parsed is not None:  # applied here, with no fire half-way through
                (parsed, ahead), self._parsed = self._parsed, None
                self.apply_config(parsed, ahead)
            now = self.clock()
            try:
                sigguard.check(self._running_jobs)
                self._check_clock(now)
                self.claims.claim_due(now)
                self.firing.start_ready(self.clock())
                self.intake.poll()
                self._pruner.maybe(now)
            except Exception:  # a bug of ours must not take every job down with it
                log.exception("the supervisor loop failed; carrying on")
            await self.timer.wait(self._sleep_for(), self._wake)
        self._emit(Stopping(time=self.clock()))
        await self._shutdown()

    async def _start(self) -> None:
        now = self.clock()
        self.started_at = now
        self.timetable.fill(self.config.jobs)
        await self.cluster.touch(now)  # nothing to do with a store of one daemon
        # A store that is locked, full or unreachable at start-up is waited for (and said
        # so); the daemon does not exit, so a service manager has nothing to give up on.
        rows = await until_stored(
            f"recovering unfinished runs in {self.store.location}",
            lambda: self.store.recover(now, rerun_jobs=self._rerun_jobs()),
            stopping=lambda: self._stopping,
            sleep=self._nap,
        )
        for row in rows or ():
            self._interrupted(row)
        last = await until_stored(
            f"reading last fires from {self.store.location}",
            self.store.last_fired,
            stopping=lambda: self._stopping,
            sleep=self._nap,
        )
        if last is None:
            return  # asked to stop while waiting for the store
        now = self.clock()
        ahead = self.timetable.schedule_all(self.config.jobs, now, last)
        startup = [
            self.claims.fire(spec, now, TriggerKind.STARTUP)
            for spec in self.config.jobs.values()
            if spec.enabled and spec.schedule is not None and spec.schedule.startup
        ]
        if ahead:
            log.warning(
                "last recorded fires lie in the future (the wall clock was ahead, or stepped "
                "back since); scheduling those jobs from now, each (job, time) still runs at "
                "most once: %s",
                ", ".join(ahead),
            )
        if startup:
            await self.claims.claim(startup, now)
            self.firing.start_ready(now)
        for notice in plan_notices(list(self.jobs.values()), self.clock, self.config.path):
            self._emit(notice)

    async def _nap(self, seconds: float) -> None:
        """Sleep while waiting for the store; a stop request cuts it short."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    def _rerun_jobs(self) -> set[str]:
        return {name for name, spec in self.config.jobs.items() if spec.retry_interrupted}

    def _interrupted(self, row: RunResult) -> None:
        """Report a run a dead daemon left behind (recovery already queued its re-run when
        its job has ``retry_interrupted``)."""
        self.intake.more = True
        self._emit(outcomes.interrupted(row, self.clock()))

    def _running_jobs(self) -> str:
        """Who may have changed the daemon's signal handling: the jobs running now."""
        unique = self.occupancy.holders()
        return f"one of the running jobs ({', '.join(unique[:10]) or '?'})"

    def _sleep_for(self) -> float | None:
        now = self.clock()
        waits = []
        if self._tasks or self.runtime.zombies:  # runs in progress: see SIGNAL_CHECK
            waits.append(SIGNAL_CHECK)
        poll = self.intake.wait(now.timestamp())
        if poll is not None:
            waits.append(poll)
        waits += [w for w in (self.claims.wait(now), self.firing.wait(now)) if w is not None]
        return min(waits, default=None)

    def _check_clock(self, now: datetime) -> None:
        """Notice a step of the wall clock (clock.StepWatch); the claims react to it."""
        if self._steps is not None:
            self.claims.after_step(now, self._steps.step(now))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- reload and stop ----------------------------------------------------------------------

    async def _reload(self) -> None:
        if self._reload_config is None:
            return
        self._emit(Reloading(time=self.clock()))
        parsed = await reread(self._reload_config, self.config.jobs, self.clock)
        if isinstance(parsed, ReloadFailed):
            self._emit(parsed)
        else:
            self._parsed = parsed

    def apply_config(self, config: Config, ahead: Mapping[str, Ahead] | None = None) -> None:
        """Take a new configuration: added, removed and changed jobs take effect; runs in
        progress are not touched; a removed job's runs waiting behind its run or for a slot
        are recorded cancelled; those of a changed job start if its new overlap lets them.
        ``ahead``: ``timetable.first_fires`` made off the loop."""
        gone = [name for name in self.config.jobs if name not in config.jobs]
        for result in self.runs.drop_pending(gone, cancels.REMOVED):
            self._background(self.ledger.finish(result))
        changes = self.timetable.apply(self.config.jobs, config.jobs, self.clock(), ahead)
        settings, later = settings_changes(self.config.settings, config.settings, self._first)
        self.occupancy.capacity.resize(config.settings.max_concurrent)
        self.config = config
        self.cluster.config_changed()
        self.ledger.release_stale({*changes.removed, *changes.changed}, config.jobs)
        for name in changes.changed:
            self.runs.start_pending(name)
        if self.on_config is not None:
            self.on_config()
        self._emit(
            Reloaded(
                time=self.clock(),
                message=f"{config.path}: {len(changes.added)} added, "
                f"{len(changes.removed)} removed, {len(changes.changed)} changed{settings}",
                level=logging.WARNING if later else logging.INFO,
            )
        )

    async def _shutdown(self) -> None:
        for task in self._side_tasks:
            task.cancel()
        await self.claims.landed()
        await self.ledger.release_all()
        grace = self.config.settings.shutdown_grace.total_seconds()
        grace_ends = time.monotonic() + grace  # runs and their hooks share it
        await stop_runs(
            self._tasks,
            grace=grace,
            waiting=lambda: self.occupancy.waiting,
            cancel_waits=lambda: self.runs.cancel_slot_waits(cancels.AT_SHUTDOWN),
            why_cancelled=self.runtime.why_cancelled,
            emit=self._emit,
            clock=self.clock,
            settle=stop_settle([*self.config.jobs.values(), *self.runs.going_specs()]),
        )
        await self.runs.all_recorded()
        for result in self.runs.left_running(cancels.ABANDONED_AT_SHUTDOWN):
            await self.ledger.finish(result)
        for result in self.runs.drop_queued(cancels.AT_SHUTDOWN):
            await self.ledger.finish(result)
        # The runs are recorded already; their hooks get what is left of the grace.
        if await self.runtime.settle_hooks(max(0.0, grace_ends - time.monotonic())):
            log.warning("hooks still running after shutdown_grace were abandoned")
        try:
            await asyncio.shield(self.store.flush())
        except Exception as exc:
            log.error("cannot write the last history rows to %s: %s", self.store.location, exc)
        self.runtime.shutdown()

    def _emit(self, event: Event) -> None:
        self.bus.emit(event)
