"""The daemon's loop: due fires, overlap, the concurrency cap, catch-up, queued triggers, reload
and graceful stop. Clock and timer are injected so tests control time."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from qtasks_cli.events import Event, EventBus, EventKind
from qtasks_cli.executor import Runtime, execute
from qtasks_cli.models import (
    CatchUp,
    Config,
    JobSpec,
    JobView,
    Overlap,
    RunResult,
    RunStatus,
    Snapshot,
    TriggerKind,
)
from qtasks_cli.store import new_run_id
from qtasks_cli.store.base import Claim, Fire, NodeInfo, QueuedRun, RunRow, Store, busy_error

log = logging.getLogger(__name__)

# A fire started more than this after its time counts as late and goes through catch_up.
LATE_AFTER = timedelta(seconds=1)
# How often the daemon asks the store whether requests were handed over.
QUEUE_POLL = 1.0
QUEUE_BATCH = 500
# The shortest gap between two looks at the queue prompted by wake-ups.
NUDGE_GAP = 0.05
# How long firing waits for the store to confirm a claim before running the fires anyway.
CLAIM_WAIT = 0.1
# Seconds between attempts to record fires the store refused.
RECORD_RETRY = 1.0
# How soon fires a shared (PostgreSQL) store did not claim are tried again.
CLAIM_RETRY = timedelta(seconds=1)
# How often a node heartbeats; at most a third of node_timeout.
HEARTBEAT_EVERY = 5.0
# How long a stop waits for the store to take what it refused before giving up on it.
BACKLOG_GRACE = 10.0
PRUNE_EVERY = timedelta(hours=1)
# Missed fires recorded one by one per job and wake-up; beyond that they are only counted.
MAX_MISSED_ROWS = 10_000


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Wakeup(asyncio.Event):
    """An Event the loop can sleep on with a timeout for the price of one future and one
    timer handle (``wait_for`` costs a task and several loop passes per wake-up, which is
    most of the daemon's idle CPU)."""

    _sleeper: asyncio.Future[None] | None = None

    def set(self) -> None:
        super().set()
        if self._sleeper is not None and not self._sleeper.done():
            self._sleeper.set_result(None)

    async def sleep(self, timeout: float | None) -> None:
        if self.is_set():
            return
        loop = asyncio.get_running_loop()
        self._sleeper = sleeper = loop.create_future()
        handle = None if timeout is None else loop.call_later(timeout, _resolve, sleeper)
        try:
            await sleeper
        finally:
            self._sleeper = None
            if handle is not None:
                handle.cancel()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Timer:
    """Waits until a timeout passes or ``wake`` is set; tests replace it to control time."""

    async def wait(self, timeout: float | None, wake: asyncio.Event) -> None:
        if isinstance(wake, Wakeup):
            await wake.sleep(timeout)
        elif not wake.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
        wake.clear()


@dataclass(slots=True)
class _JobState:
    spec: JobSpec
    next_fire: datetime | None = None
    generation: int = 0  # bumps when the job is rescheduled, invalidating old heap entries
    running: int = 0
    waiting: int = 0  # of the running ones, those still waiting for a slot
    pending: list[tuple[str, TriggerKind, datetime | None, Any, Any]] = field(default_factory=list)


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
        runtime: Runtime | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.bus = bus
        self.clock = clock
        self.timer = timer or Timer()
        self._reload_config = reload
        self.runtime = runtime or Runtime(config.settings.max_concurrent)
        self.runtime.on_unstuck = self._start_pending
        self.started_at = clock()
        self.jobs: dict[str, _JobState] = {}
        self._heap: list[tuple[datetime, int, str, int]] = []
        self._seq = 0
        self._wake = Wakeup()
        # How often to look for handed-over requests; slower when something wakes us.
        self.queue_poll = QUEUE_POLL
        self._last_poll = 0.0
        self._stopping = False
        self._reload_requested = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Fires run while the store did not take them, their run ids, and the outcomes of
        # those runs, held until the fires are recorded (see _claim).
        self._backlog: list[Fire] = []
        self._unrecorded_ids: set[str] = set()
        self._held: list[RunResult] = []
        self._backlog_task: asyncio.Task[None] | None = None
        self._retry_from: dict[str, datetime] = {}  # first fire a shared store did not claim
        self._held_jobs: dict[str, str] = {}  # job -> why its definition differs across nodes
        self._nodes: tuple[str, ...] = ()
        self._fingerprints: dict[str, str] = {}
        self._side_tasks: list[asyncio.Task[None]] = []
        self._poll_task: asyncio.Task[None] | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self._parsed: Config | None = None  # a reloaded file waiting to be applied
        self._next_poll = 0.0
        self._queue_more = True  # the first poll reads requests left from before the start
        self._next_prune: datetime | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self._views: dict[str, tuple[tuple[Any, ...], JobView]] = {}  # for snapshot()

    # --- control: signal handlers call these; they only flip state -------------------------

    def request_stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def nudge(self) -> None:
        """Look for handed-over requests soon instead of at the next poll. Wake-ups that
        arrive together are served by one look (at most one per NUDGE_GAP), so a shop
        handing over thousands of runs does not fight the daemon for the write lock."""
        self._next_poll = min(self._next_poll, self._last_poll + NUDGE_GAP)
        self._wake.set()

    @property
    def running(self) -> int:
        return sum(state.running for state in self.jobs.values())

    @property
    def queued(self) -> int:
        return (
            sum(len(state.pending) for state in self.jobs.values()) + self.runtime.capacity.waiting
        )

    def snapshot(self) -> Snapshot:
        """The daemon's state now, for displays; cheap enough to call a few times a second."""
        views = tuple(self._view(name, s) for name, s in self.jobs.items())
        return Snapshot(
            now=self.clock(),
            started_at=self.started_at,
            jobs=views,
            running=self.running,
            queued=self.queued,
            state=self.store.location,
            nodes=self._nodes,
        )

    def _view(self, name: str, state: _JobState) -> JobView:
        """The job's view, reused while nothing in it changed: building 1,000 views (and
        describing 1,000 schedules) on every redraw of the live table would cost the loop
        milliseconds."""
        spec = state.spec
        key = (spec, state.next_fire, state.running, len(state.pending))
        cached = self._views.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        if cached is not None and cached[0][0] is spec:
            words = cached[1].schedule
        else:
            words = spec.schedule.describe() if spec.schedule else "only when triggered"
        view = JobView(
            name=name,
            schedule=words,
            enabled=spec.enabled,
            next_fire=state.next_fire,
            running=state.running,
            pending=len(state.pending),
            max_attempts=spec.retry.attempts,
        )
        if len(self._views) > 2 * len(self.jobs):  # jobs removed by reloads
            self._views.clear()
        self._views[name] = (key, view)
        return view

    # --- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Supervise until ``request_stop``; then stop gracefully."""
        await self._start()
        if self.store.multi_node:
            self._side_tasks.append(asyncio.create_task(self._keep_in_touch()))
        if self.store.wakes_on_work:
            self._side_tasks.append(asyncio.create_task(self._wake_on_work()))
        self.ready.set()
        self._emit(EventKind.READY)
        while not self._stopping:
            if self._reload_requested and (self._reload_task is None or self._reload_task.done()):
                # Parsed in the background so firing goes on; a SIGHUP during a parse
                # leaves the flag set and starts one more parse after it.
                self._reload_requested = False
                self._reload_task = asyncio.create_task(self._reload())
                self._reload_task.add_done_callback(lambda _: self._wake.set())
            if self._parsed is not None:  # applied here, with no fire half-way through
                parsed, self._parsed = self._parsed, None
                self.apply_config(parsed)
            now = self.clock()
            try:
                await self._fire_due(now)
                self._poll_queue()
                self._maybe_prune(now)
            except Exception:  # a bug of ours must not take every job down with it
                log.exception("the supervisor loop failed; carrying on")
            await self.timer.wait(self._sleep_for(), self._wake)
        self._emit(EventKind.STOPPING)
        await self._shutdown()

    async def _start(self) -> None:
        now = self.clock()
        self.started_at = now
        self.jobs = {spec.name: _JobState(spec=spec) for spec in self.config.jobs.values()}
        if self.store.multi_node:
            await self._touch_nodes(now)
        for row in await self.store.recover(now):
            await self._interrupted(row)
        last = await self.store.last_fired()
        startup: list[Fire] = []
        for spec in self.config.jobs.values():
            if not spec.enabled or spec.schedule is None:
                continue
            if spec.schedule.startup:
                startup.append(self._fire(spec, now, TriggerKind.STARTUP))
            self._schedule_job(spec.name, now, last.get(spec.name))
        if startup:
            await self._claim_and_start(startup)
        for state in self.jobs.values():
            self._emit(EventKind.NOTICE, job=state.spec.name, message=self._plan(state))

    async def _interrupted(self, row: RunRow) -> None:
        """Report a run a dead daemon left behind; run it again if its job says so."""
        self._emit(
            EventKind.INTERRUPTED,
            job=row.job,
            run_id=row.run_id,
            trigger=row.trigger,
            scheduled=row.scheduled,
            status=RunStatus.INTERRUPTED,
            error=row.error,
            level=logging.WARNING,
        )
        spec = self.config.jobs.get(row.job)
        if spec is not None and spec.retry_interrupted:
            await self._rerun(spec, row.run_id)

    async def _rerun(self, spec: JobSpec, interrupted_run: str) -> None:
        """Run an interrupted run's job again (``retry_interrupted``), as a new catch-up run."""
        run_id = new_run_id()
        await self.store.add_run(
            RunResult(
                job=spec.name,
                run_id=run_id,
                trigger=TriggerKind.CATCH_UP,
                scheduled=None,
                started=None,
                ended=None,
                attempts=0,
                status=RunStatus.CLAIMED,
                error=f"re-run of interrupted run {interrupted_run}",
            )
        )
        self._emit(
            EventKind.FIRED,
            job=spec.name,
            run_id=run_id,
            trigger=TriggerKind.CATCH_UP,
            message=f"re-running interrupted run {interrupted_run}",
        )
        self._start_run(spec, run_id, TriggerKind.CATCH_UP, None)

    @staticmethod
    def _plan(state: _JobState) -> str:
        spec = state.spec
        if not spec.enabled:
            return "disabled"
        if spec.schedule is None:
            return "no schedule; runs when triggered"
        if state.next_fire is None:
            return f"no further fires ({spec.schedule.describe()})"
        from zoneinfo import ZoneInfo

        local = state.next_fire.astimezone(ZoneInfo(spec.timezone))
        return f"next fire {local.isoformat()} ({spec.schedule.describe()})"

    def _schedule_job(
        self, name: str, now: datetime, last: tuple[datetime, str] | None = None
    ) -> None:
        """Put the job's next fire on the heap: after its last recorded fire when the schedule
        is unchanged (so downtime is caught up), else after now (a changed schedule never
        backfills)."""
        state = self.jobs[name]
        schedule = state.spec.schedule
        state.generation += 1
        state.next_fire = None
        if schedule is None or not state.spec.enabled:
            return
        after = last[0] if last is not None and last[1] == schedule.key else now
        self._push(name, schedule.next_after(after))

    def _push(self, name: str, when: datetime | None) -> None:
        state = self.jobs[name]
        state.next_fire = when
        if when is not None:
            self._seq += 1
            heapq.heappush(self._heap, (when, self._seq, name, state.generation))

    def _sleep_for(self) -> float | None:
        now = self.clock()
        waits = []
        if self._poll_task is None or self._poll_task.done():
            # While a poll is pending its end wakes the loop; a past _next_poll would spin.
            waits.append(max(0.0, self._next_poll - now.timestamp()))
        while self._heap and not self._is_current(self._heap[0]):
            heapq.heappop(self._heap)
        if self._heap:
            waits.append(max(0.0, (self._heap[0][0] - now).total_seconds()))
        return min(waits, default=None)

    def _maybe_prune(self, now: datetime) -> None:
        """Apply keep_runs/keep_days at start and then hourly, in the background."""
        if self._next_prune is not None and now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        settings = self.config.settings
        if settings.keep_runs is None and settings.keep_days is None:
            return
        if self._prune_task is not None and not self._prune_task.done():
            return
        self._prune_task = asyncio.create_task(self._prune(now))

    async def _prune(self, now: datetime) -> None:
        settings = self.config.settings
        try:
            removed = await self.store.prune(
                keep_runs=settings.keep_runs, keep_days=settings.keep_days, now=now
            )
        except Exception as exc:
            log.warning("cannot prune history in %s: %s", self.store.location, exc)
        else:
            if removed:
                log.info("pruned %d old run(s) from the history", removed)

    def _is_current(self, entry: tuple[datetime, int, str, int]) -> bool:
        state = self.jobs.get(entry[2])
        return state is not None and state.generation == entry[3]

    # --- firing ------------------------------------------------------------------------------

    async def _fire_due(self, now: datetime) -> None:
        fires: list[Fire] = []
        advanced: list[tuple[str, datetime]] = []
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            if not self._is_current(entry):
                continue
            name = entry[2]
            spec = self.jobs[name].spec
            first = min(entry[0], self._retry_from.pop(name, entry[0]))
            # An on-time fire is the common case: its next fire is computed after the runs
            # have started. Only a late wake-up needs the look-ahead for missed fires.
            due = [first] if now - first <= LATE_AFTER else self._due_fires(spec, first, now)
            fires.extend(self._decide(spec, due, now))
            advanced.append((name, due[-1]))
        unclaimed = await self._claim_and_start(fires) if fires else set()
        for name, last in advanced:
            schedule = self.jobs[name].spec.schedule
            if schedule is None:
                continue
            upcoming = schedule.next_after(last)
            if name in unclaimed:  # the shared store did not answer: try these fires again
                retry = now + CLAIM_RETRY
                upcoming = retry if upcoming is None else min(upcoming, retry)
            self._push(name, upcoming)

    def _due_fires(self, spec: JobSpec, first: datetime, now: datetime) -> list[datetime]:
        """Every fire of the job in [first, now], oldest first, capped."""
        assert spec.schedule is not None
        due = [first]
        while True:
            nxt = spec.schedule.next_after(due[-1])
            if nxt is None or nxt > now:
                return due
            due.append(nxt)
            if len(due) > MAX_MISSED_ROWS:
                del due[: len(due) - MAX_MISSED_ROWS]

    def _decide(self, spec: JobSpec, due: Sequence[datetime], now: datetime) -> list[Fire]:
        """Split due fires into runs and missed rows by lateness, catch_up and misfire_grace."""
        if spec.name in self._held_jobs:
            reason = f"held back: {self._held_jobs[spec.name]}"
            return [
                self._fire(spec, t, TriggerKind.SCHEDULE, RunStatus.MISSED, reason) for t in due
            ]
        late = [t for t in due if now - t > LATE_AFTER]
        on_time = [t for t in due if now - t <= LATE_AFTER]
        graced = [t for t in late if now - t <= spec.misfire_grace]
        catch: list[datetime] = []
        if spec.catch_up is CatchUp.ALL:
            catch = graced[-self.config.settings.max_catch_up :]
        elif spec.catch_up is CatchUp.LATEST and graced and not on_time:
            catch = graced[-1:]
        fires = [self._overlap(self._fire(spec, t, TriggerKind.CATCH_UP)) for t in catch]
        fires += [self._overlap(self._fire(spec, t, TriggerKind.SCHEDULE)) for t in on_time]
        chosen = set(catch)
        reason = self._missed_reason(spec, bool(on_time))
        fires += [
            self._fire(spec, t, TriggerKind.SCHEDULE, RunStatus.MISSED, reason)
            for t in late
            if t not in chosen
        ]
        fires.sort(key=lambda f: f.scheduled)
        return fires

    @staticmethod
    def _missed_reason(spec: JobSpec, has_on_time: bool) -> str:
        if spec.catch_up is CatchUp.NONE:
            return "missed while the daemon was down or late (catch_up: none)"
        if spec.catch_up is CatchUp.LATEST:
            newer = "a newer fire ran" if has_on_time else "only the latest missed fire runs"
            return f"missed while the daemon was down or late (catch_up: latest, {newer})"
        return f"missed: older than misfire_grace or beyond max_catch_up ({spec.catch_up})"

    def _fire(
        self,
        spec: JobSpec,
        when: datetime,
        trigger: TriggerKind,
        status: RunStatus = RunStatus.CLAIMED,
        error: str | None = None,
    ) -> Fire:
        key = spec.schedule.key if spec.schedule is not None else ""
        return Fire(
            job=spec.name,
            scheduled=when,
            trigger=trigger,
            run_id=new_run_id(),
            schedule_key=key,
            status=status,
            error=error,
        )

    def _busy(self, name: str) -> str | None:
        """Why the job counts as still running, or None: a run in progress or waiting for a
        slot, or a thread of an earlier run that timed out and has not returned."""
        state = self.jobs[name]
        if state.running > state.waiting:
            return "previous run still running"
        if state.running:
            return "previous run still waiting for a free slot (max_concurrent)"
        if self.runtime.stuck[name]:
            return "previous run's thread is still running after its timeout"
        return None

    def _overlap(self, fire: Fire) -> Fire:
        """Apply the job's overlap policy to a fire that wants to run."""
        state = self.jobs[fire.job]
        policy = state.spec.overlap
        busy = self._busy(fire.job)
        if busy is None or policy is Overlap.ALLOW:
            return fire
        if policy is Overlap.QUEUE and not state.pending:
            return fire  # started as pending when the current run ends
        why = "a run is already queued" if policy is Overlap.QUEUE else busy
        return replace(fire, status=RunStatus.SKIPPED, error=f"skipped: {why} (overlap: {policy})")

    async def _claim_and_start(self, fires: list[Fire]) -> set[str]:
        """Claim fires and start the runs this node won; return the jobs whose fires the
        shared store could not claim (to be tried again)."""
        claimed = await self._claim(fires)
        if claimed is None:
            for fire in fires:
                self._retry_from.setdefault(fire.job, fire.scheduled)
            return {fire.job for fire in fires}
        for fire, won in zip(fires, claimed):
            if not won:
                log.debug(
                    "%s at %s was already recorded; not firing it again", fire.job, fire.scheduled
                )
                continue
            state = self.jobs.get(fire.job)
            if state is None:  # removed by a reload while the claim was in flight
                self._background(self._record(self._never_started(fire)))
                continue
            spec = state.spec
            if won is Claim.BUSY:
                fire = replace(fire, status=RunStatus.SKIPPED, error=busy_error("another node"))
            if fire.status is RunStatus.CLAIMED:
                self._emit(
                    EventKind.FIRED,
                    job=fire.job,
                    run_id=fire.run_id,
                    trigger=fire.trigger,
                    scheduled=fire.scheduled,
                )
                self._start_run(spec, fire.run_id, fire.trigger, fire.scheduled)
            else:
                kind = EventKind.SKIPPED if fire.status is RunStatus.SKIPPED else EventKind.MISSED
                self._emit(
                    kind,
                    job=fire.job,
                    run_id=fire.run_id,
                    trigger=fire.trigger,
                    scheduled=fire.scheduled,
                    status=fire.status,
                    error=fire.error,
                    level=logging.WARNING,
                )
        await asyncio.sleep(0)  # let the new runs start before anything else
        return set()

    def _never_started(self, fire: Fire) -> RunResult:
        return RunResult(
            job=fire.job,
            run_id=fire.run_id,
            trigger=fire.trigger,
            scheduled=fire.scheduled,
            started=None,
            ended=self.clock(),
            attempts=0,
            status=RunStatus.CANCELLED,
            error="the job was removed by a reload before the run started",
        )

    async def _claim_shared(self, fires: list[Fire]) -> list[Claim] | None:
        """On a store shared by several nodes the claim decides who runs a fire, so a fire
        never runs unclaimed: None when the store did not answer (the fires are retried)."""
        exclusive = {f.job for f in fires if self.jobs[f.job].spec.overlap is not Overlap.ALLOW}
        try:
            return await self.store.claim(fires, exclusive_jobs=exclusive)
        except Exception as exc:
            log.error(
                "cannot claim fires in %s (%s); trying again in %gs",
                self.store.location,
                exc,
                CLAIM_RETRY.total_seconds(),
            )
            return None

    async def _claim(self, fires: list[Fire]) -> Sequence[bool | Claim] | None:
        """Claim fires in the store. A single daemon waits at most CLAIM_WAIT: firing never
        waits on a slow or locked store. Fires it does not confirm in time run anyway (each
        fire is still taken once, by this process) and are recorded in the background, with
        their runs' outcomes held back until then."""
        if self.store.multi_node:
            return await self._claim_shared(fires)
        if self._backlog_task is not None:  # the store is behind: do not queue up behind it
            self._hold(fires)
            return [True] * len(fires)
        claim = asyncio.ensure_future(self.store.claim(fires))
        inflight: asyncio.Future[list[bool]] | None = claim
        try:
            return await asyncio.wait_for(asyncio.shield(claim), CLAIM_WAIT)
        except asyncio.TimeoutError:
            reason = f"no answer within {CLAIM_WAIT:g}s"
        except Exception as exc:
            inflight, reason = None, str(exc)
        log.error(
            "cannot record fires in %s (%s); firing anyway and recording them later",
            self.store.location,
            reason,
        )
        self._hold(fires)
        self._backlog_task = asyncio.create_task(self._record_backlog(inflight, fires))
        return [True] * len(fires)

    def _hold(self, fires: list[Fire]) -> None:
        self._backlog.extend(fires)
        self._unrecorded_ids.update(f.run_id for f in fires)

    async def _record_backlog(
        self, inflight: asyncio.Future[list[bool]] | None, fires: list[Fire]
    ) -> None:
        """Write fires the store refused, retrying until it takes them; then the held
        outcomes of their runs."""
        total = 0
        if inflight is not None:
            with contextlib.suppress(Exception):
                await inflight
                total += self._recorded(fires)
        while self._backlog:
            pending = list(self._backlog)
            try:
                await self.store.claim(pending)
            except Exception:
                await asyncio.sleep(RECORD_RETRY)
                continue
            total += self._recorded(pending)
        self._backlog_task = None
        log.warning("recorded %d fire(s) that the store had refused for a while", total)

    def _recorded(self, fires: list[Fire]) -> int:
        """These fires are in the store now: send the outcomes held for their runs."""
        ids = {f.run_id for f in fires}
        self._backlog = [f for f in self._backlog if f.run_id not in ids]
        self._unrecorded_ids -= ids
        held = [r for r in self._held if r.run_id in ids]
        self._held = [r for r in self._held if r.run_id not in ids]
        for result in held:
            self._background(self._record(result))
        return len(ids)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- runs ------------------------------------------------------------------------------------

    def _start_run(
        self,
        spec: JobSpec,
        run_id: str,
        trigger: TriggerKind,
        scheduled: datetime | None,
        args: Any = None,
        kwargs: Any = None,
    ) -> None:
        state = self.jobs.get(spec.name)
        if state is None:
            return
        busy = self._busy(spec.name) is not None
        if busy and spec.overlap is Overlap.QUEUE and trigger is not TriggerKind.QUEUED:
            state.pending.append((run_id, trigger, scheduled, args, kwargs))
            self._emit(
                EventKind.QUEUED, job=spec.name, run_id=run_id, trigger=trigger, scheduled=scheduled
            )
            return
        state.running += 1
        task = asyncio.create_task(
            self._run(spec, run_id, trigger, scheduled, args, kwargs),
            name=f"qtasks:{spec.name}:{run_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        spec: JobSpec,
        run_id: str,
        trigger: TriggerKind,
        scheduled: datetime | None,
        args: Any,
        kwargs: Any,
    ) -> None:
        result: RunResult | None = None
        state = self.jobs.get(spec.name) or _JobState(spec=spec)  # gone if a reload removed it
        try:
            state.waiting += 1
            try:
                await self.runtime.capacity.acquire()
            finally:
                state.waiting -= 1
            try:
                if run_id not in self._unrecorded_ids:
                    await self.store.start(run_id, self.clock())
                result = await execute(
                    spec,
                    run_id=run_id,
                    trigger=trigger,
                    scheduled=scheduled,
                    runtime=self.runtime,
                    emit=self.bus.emit,
                    clock=self.clock,
                    args=args,
                    kwargs=kwargs,
                )
            finally:
                self.runtime.capacity.release()
        except asyncio.CancelledError:
            result = RunResult(
                job=spec.name,
                run_id=run_id,
                trigger=trigger,
                scheduled=scheduled,
                started=None,
                ended=self.clock(),
                attempts=0,
                status=RunStatus.CANCELLED,
                error="cancelled at shutdown",
            )
            raise
        finally:
            if result is not None:
                await asyncio.shield(self._record(result))
            self._run_ended(spec.name)

    async def _record(self, result: RunResult) -> None:
        if result.run_id in self._unrecorded_ids:
            self._held.append(result)
            return
        try:
            await self.store.finish(result)
        except Exception:
            log.exception("cannot record the end of run %s of %s", result.run_id, result.job)

    def _run_ended(self, name: str) -> None:
        state = self.jobs.get(name)
        if state is None:
            return
        state.running -= 1
        self._start_pending(name)
        self._wake.set()

    def _start_pending(self, name: str) -> None:
        """Start the job's next pending run once nothing of it runs any more."""
        state = self.jobs.get(name)
        if state is None or not state.pending or self._stopping or self._busy(name):
            return
        run_id, trigger, scheduled, args, kwargs = state.pending.pop(0)
        self._start_run(state.spec, run_id, trigger, scheduled, args, kwargs)

    # --- several nodes on one store -------------------------------------------------------------

    async def _keep_in_touch(self) -> None:
        """Heartbeat, reap the runs of dead nodes, and hold back jobs defined differently
        elsewhere, every few seconds (PostgreSQL only)."""
        timeout = self.config.settings.node_timeout
        every = min(HEARTBEAT_EVERY, timeout.total_seconds() / 3)
        while not self._stopping:
            await asyncio.sleep(every)
            await self._touch_nodes(self.clock())

    async def _touch_nodes(self, now: datetime) -> None:
        timeout = self.config.settings.node_timeout
        try:
            await self.store.heartbeat(
                now, digest=self.config.digest, fingerprints=self._job_fingerprints()
            )
            for row in await self.store.reap_dead_nodes(now, timeout):
                await self._interrupted(row)
            nodes = await self.store.nodes(now, timeout)
        except Exception as exc:
            log.warning("cannot reach the other nodes through %s: %s", self.store.location, exc)
            return
        self._nodes = tuple(node.node_id for node in nodes)
        self._compare_definitions(nodes)

    def _job_fingerprints(self) -> dict[str, str]:
        if not self._fingerprints:
            from qtasks_cli.config import fingerprint

            self._fingerprints = {name: fingerprint(j) for name, j in self.config.jobs.items()}
        return self._fingerprints

    def _compare_definitions(self, nodes: Sequence[NodeInfo]) -> None:
        """Hold back every job whose definition differs on another live node."""
        mine = self._job_fingerprints()
        held: dict[str, str] = {}
        for node in nodes:
            if node.node_id == self.store.node_id or not node.digest:
                continue  # ourselves, or a node that has not described its jobs yet
            for job, print_ in mine.items():
                if node.fingerprints.get(job) != print_:
                    held[job] = f"its definition differs on node {node.node_id}"
        if set(held) != set(self._held_jobs):
            if held:
                self._emit(
                    EventKind.NOTICE,
                    level=logging.WARNING,
                    message=(
                        "job file differs from the other nodes'; not firing until they agree: "
                        + ", ".join(f"{job} ({why})" for job, why in sorted(held.items()))
                    ),
                )
            else:
                self._emit(EventKind.NOTICE, message="job files agree across nodes again")
        self._held_jobs = held

    async def _wake_on_work(self) -> None:
        """Look for handed-over requests as soon as the store says there may be some."""
        while not self._stopping:
            try:
                woken = await self.store.wait_for_work(30.0)
            except Exception as exc:
                log.warning("cannot listen for handed-over runs: %s", exc)
                await asyncio.sleep(QUEUE_POLL)
                continue
            if woken:
                self.nudge()

    # --- handed-over requests -------------------------------------------------------------------

    def _poll_queue(self) -> None:
        """Look for handed-over requests at most once a second, in the background: a store
        locked by another process must not hold up firing."""
        now = self.clock().timestamp()
        if now < self._next_poll or (self._poll_task is not None and not self._poll_task.done()):
            return
        self._last_poll = now
        self._next_poll = now + self.queue_poll
        self._poll_task = asyncio.create_task(self._take_queued())
        self._tasks.add(self._poll_task)
        self._poll_task.add_done_callback(self._tasks.discard)
        self._poll_task.add_done_callback(lambda _: self._wake.set())

    async def _take_queued(self) -> None:
        try:
            if not (self._queue_more or await self.store.changed()):
                return
            requests = await self.store.take_queued(self.clock(), limit=QUEUE_BATCH)
        except Exception as exc:
            log.warning("cannot read queued requests from %s: %s", self.store.location, exc)
            return
        for request in requests:
            self._start_queued(request)
        self._queue_more = len(requests) == QUEUE_BATCH
        if self._queue_more:  # take the rest at once
            self._next_poll = 0.0
            self._wake.set()

    def _start_queued(self, request: QueuedRun) -> None:
        state = self.jobs.get(request.job)
        if state is None:
            result = RunResult(
                job=request.job,
                run_id=request.run_id,
                trigger=TriggerKind.QUEUED,
                scheduled=None,
                started=None,
                ended=self.clock(),
                attempts=0,
                status=RunStatus.FAILED,
                error_type="UnknownJob",
                error=f"no job named {request.job!r} in {self.config.path}",
            )
            self._emit(
                EventKind.FINISHED,
                job=request.job,
                run_id=request.run_id,
                trigger=TriggerKind.QUEUED,
                status=RunStatus.FAILED,
                error=result.error,
                level=logging.ERROR,
            )
            self._background(self._record(result))
            return
        self._emit(
            EventKind.FIRED, job=request.job, run_id=request.run_id, trigger=TriggerKind.QUEUED
        )
        # A handed-over request is never skipped: under skip or queue it waits for the
        # current run instead, so no order notification is lost.
        if self._busy(request.job) is not None and state.spec.overlap is not Overlap.ALLOW:
            state.pending.append(
                (request.run_id, TriggerKind.QUEUED, None, request.args, request.kwargs)
            )
            return
        self._start_run(
            state.spec, request.run_id, TriggerKind.QUEUED, None, request.args, request.kwargs
        )

    # --- reload and stop ----------------------------------------------------------------------

    async def _reload(self) -> None:
        if self._reload_config is None:
            return
        self._emit(EventKind.RELOADING)
        try:
            config = await self._reload_config()
        except Exception as exc:
            self._emit(
                EventKind.RELOAD_FAILED,
                level=logging.ERROR,
                message=f"(the old configuration keeps running):\n{exc}",
            )
            return
        self._parsed = config

    def apply_config(self, config: Config) -> None:
        """Take a new configuration: added, removed and changed jobs take effect; runs in
        progress are not touched."""
        from qtasks_cli.config import fingerprint

        old = self.config.jobs
        now = self.clock()
        added = [n for n in config.jobs if n not in old]
        removed = [n for n in old if n not in config.jobs]
        changed = [
            n
            for n in config.jobs
            if n in old and fingerprint(old[n]) != fingerprint(config.jobs[n])
        ]
        self.config = config
        self._fingerprints = {}
        for name in removed:
            state = self.jobs.pop(name)
            state.generation += 1
        for name in added:
            self.jobs[name] = _JobState(spec=config.jobs[name])
            self._schedule_job(name, now)
        for name in changed:
            state = self.jobs[name]
            previous = state.spec
            state.spec = config.jobs[name]
            same_time = (
                previous.schedule is not None
                and state.spec.schedule is not None
                and previous.schedule.key == state.spec.schedule.key
                and previous.enabled == state.spec.enabled
            )
            if not same_time:
                self._schedule_job(name, now)
        self._emit(
            EventKind.RELOADED,
            message=(
                f"{config.path}: {len(added)} added, {len(removed)} removed, {len(changed)} changed"
            ),
        )

    async def _shutdown(self) -> None:
        for task in self._side_tasks:
            task.cancel()
        grace = self.config.settings.shutdown_grace.total_seconds()
        running = [t for t in self._tasks if not t.done()]
        if running:
            self._emit(
                EventKind.NOTICE,
                message=(f"stopping: waiting up to {grace:g}s for {len(running)} running job(s)"),
            )
            _, still = await asyncio.wait(running, timeout=grace)
            if still:
                for task in still:
                    task.cancel()
                await asyncio.wait(still, timeout=5)
                self._emit(
                    EventKind.NOTICE,
                    level=logging.WARNING,
                    message=(f"abandoned {len(still)} run(s) still running after shutdown_grace"),
                )
        await self._settle_backlog()
        try:
            await asyncio.shield(self.store.flush())
        except Exception as exc:
            log.error("cannot write the last history rows to %s: %s", self.store.location, exc)
        self.runtime.shutdown()

    async def _settle_backlog(self) -> None:
        """Give the store a last chance to take refused fires; count what is lost."""
        if self._backlog_task is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._backlog_task), BACKLOG_GRACE)
        if self._backlog:
            self._emit(
                EventKind.NOTICE,
                level=logging.ERROR,
                message=(
                    f"{len(self._backlog)} fire(s) and {len(self._held)} run outcome(s) could not "
                    f"be recorded in {self.store.location}"
                ),
            )

    def _emit(self, kind: EventKind, **fields: Any) -> None:
        self.bus.emit(Event(kind=kind, time=self.clock(), **fields))
