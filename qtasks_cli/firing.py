"""Firing: every due fire claimed ahead of its instant, and started on the instant.

A fire's path: the timetable says it is due within ``claim_ahead`` -> ``claim_due`` lists the
due fires (after a late wake-up, the missed ones too, policy.due_fires) and splits them into
runs and missed rows (policy.split_due; a job held back by the cluster: missed) -> one store
write claims them, in the background (ledger.py; not claimed: tried again, late but once) ->
the claimed fires wait in the ledger for their instant -> ``start_ready`` wakes ``lead``
before the instant, decides overlap (policy.overlap_skip), prepares each run up to its gate
and, at the instant, opens the gates one after the other (burst.py, clock.settle_until).
Nothing but the bodies runs between the instant and the bodies: see the README's design
section, "Firing on the instant".
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from qtasks_cli import cancels
from qtasks_cli.burst import Burst
from qtasks_cli.clock import settle_until
from qtasks_cli.events import EventKind
from qtasks_cli.models import JobSpec, RunStatus, TriggerKind
from qtasks_cli.policy import (
    LATE_AFTER,
    Gap,
    StepBack,
    due_fires,
    exclusive,
    keep_last,
    late_claim_missed,
    missed_reason,
    overlap_skip,
    second_pass,
    split_due,
)
from qtasks_cli.store import new_run_id
from qtasks_cli.store.base import Claim, Fire, busy_error

if TYPE_CHECKING:
    from qtasks_cli.clock import Wakeup
    from qtasks_cli.ledger import Ledger
    from qtasks_cli.models import Config
    from qtasks_cli.runs import Runs
    from qtasks_cli.store.base import Store
    from qtasks_cli.timetable import JobState, Timetable

log = logging.getLogger(__name__)

# Claims are written this long before a fire's instant, so that at the instant the
# bodies start with no database write in between (ledger.py).
CLAIM_AHEAD = timedelta(milliseconds=500)
# When claims take long (a busy PostgreSQL server), they are written further ahead: three
# times the last claim's duration, decaying slowly back to CLAIM_AHEAD, at most this much.
CLAIM_AHEAD_MAX = timedelta(seconds=2)
# How soon fires the store did not claim are tried again (doubling up to CLAIM_RETRY_MAX):
# a fire never runs unclaimed; it waits for the store and is late but once.
CLAIM_RETRY = timedelta(milliseconds=200)
CLAIM_RETRY_MAX = timedelta(seconds=1)
# Missed fires of one job in one wake-up reported one event each; more become one event.
MISSED_EVENTS = 5
# Preparing a fire's run before its instant (burst.py) costs about this much (seconds); the
# loop measures it at every burst and wakes that much more before an instant (FIRE_EARLY
# is the rest: the timer's overshoot). Bounded so that a slow burst never blocks the loop
# for long.
PREPARE_GUESS = 30e-6
PREPARE_MAX = 300e-6
PREPARE_MARGIN = 1.5  # the estimate's margin: a burst's preparing varies with the machine's load
LEAD_MAX = 0.25


class Firing:
    """Claims due fires ahead of their instant and starts them on it."""

    def __init__(
        self,
        *,
        jobs: dict[str, JobState],
        timetable: Timetable,
        ledger: Ledger,
        store: Store,
        runs: Runs,
        config: Callable[[], Config],
        paused: Callable[[], frozenset[str]],
        held: Callable[[], dict[str, str]],
        clock: Callable[[], datetime],
        emit: Callable[..., None],
        tasks: set[asyncio.Task[None]],
        wake: Wakeup,
        early: float,
    ) -> None:
        self.jobs = jobs  # the supervisor's table, shared
        self.timetable = timetable
        self.ledger = ledger
        self.store = store
        self.runs = runs
        self._config = config
        self._paused = paused  # jobs the operator paused (qtasks_cli.control)
        self._held = held  # jobs held back across nodes, and why (qtasks_cli.cluster)
        self.clock = clock
        self._emit = emit
        self._tasks = tasks  # the daemon's tasks, which a stop waits for
        self._wake = wake
        # Wake this long before a fire's instant (plus the preparing, see PREPARE_GUESS)
        # and wait the rest precisely (clock.settle_until); a test's clock has no overshoot.
        self._early = early
        self._prepare_cost = PREPARE_GUESS
        self._retry_from: dict[str, datetime] = {}  # first fire the store did not claim
        self._claim_task: asyncio.Task[None] | None = None
        self.claim_ahead = CLAIM_AHEAD  # grows while claims are slow (CLAIM_AHEAD_MAX)
        # The wall times a step of the clock back repeats (set by the loop's clock check).
        self.stepped_back: StepBack | None = None

    def wait(self, now: datetime) -> float | None:
        """Seconds until the loop must wake to claim the next fires or to start the next
        claimed ones (``lead`` before their instant); None when nothing waits. A claim in
        flight wakes the loop when it ends."""
        waits = []
        first = self.timetable.first()
        claiming = self._claim_task is not None and not self._claim_task.done()
        if first is not None and not claiming:
            waits.append(max(0.0, (first - self.claim_ahead - now).total_seconds()))
        instant = self.ledger.next_instant()
        if instant is not None:
            lead = self.lead(self.ledger.held_at(instant))
            waits.append(max(0.0, (instant - now).total_seconds() - lead))
        return min(waits, default=None)

    async def landed(self) -> None:
        """Let a claim in flight land (at a stop, so that it can be released)."""
        if self._claim_task is not None:
            await asyncio.wait({self._claim_task}, timeout=10)

    def claim_due(self, now: datetime) -> None:
        """Claim every fire due by ``now + _claim_ahead`` in one store write, in the
        background: claimed fires wait in the ledger for their instant, and a slow or locked
        store never holds up fires already claimed. Late fires go through catch_up."""
        if self._claim_task is not None and not self._claim_task.done():
            return  # one claim at a time; its end wakes the loop
        fires: list[Fire] = []
        advanced: list[tuple[str, int, datetime]] = []
        horizon = now + self.claim_ahead
        for name, when in self.timetable.take_due(horizon):
            spec = self.jobs[name].spec
            assert spec.schedule is not None
            first = min(when, self._retry_from.pop(name, when))
            # An on-time fire is the common case; only a late wake-up looks for missed fires.
            gap: Gap | None = None
            if now - first <= LATE_AFTER:
                due = [first]
            else:
                last = keep_last(spec.catch_up, self._config().settings.max_catch_up)
                due, gap = due_fires(spec.schedule.next_after, first, now, keep_last=last)
            fires.extend(self._decide(spec, due, now, gap))
            advanced.append((name, self.jobs[name].generation, due[-1] if due else first))
        if not fires:
            return
        self._claim_task = task = asyncio.create_task(self._claim_round(fires, advanced, now))
        task.add_done_callback(lambda _: self._wake.set())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _claim_round(
        self, fires: list[Fire], advanced: list[tuple[str, int, datetime]], now: datetime
    ) -> None:
        began = self.clock()
        claimed = await self.claim(fires, now)
        retry = timedelta(seconds=0 if claimed else self.ledger.backoff.next())
        after = self.clock()
        if claimed and self.store.multi_node:
            # A slow claim (a busy database server) makes the next ones start earlier. Only
            # with a shared store: a single SQLite daemon's claims are local writes, and its
            # handling of a clock stepped back counts on the usual lead.
            took = after - began
            self.claim_ahead = min(
                CLAIM_AHEAD_MAX, max(CLAIM_AHEAD, 3 * took, self.claim_ahead * 0.9)
            )
        for name, generation, last_due in advanced:
            state = self.jobs.get(name)
            if state is None or state.generation != generation or state.spec.schedule is None:
                continue  # removed or rescheduled (reload, clock step) meanwhile
            if claimed:
                self.timetable.push(name, state.spec.schedule.next_after(last_due))
            else:  # the store did not answer: claim again after the retry delay
                self.timetable.push(name, after + self.claim_ahead + retry)

    async def claim(self, fires: list[Fire], now: datetime) -> bool:
        """Claim ``fires`` in the store; hold the won CLAIMED ones in the ledger and report the
        others. False when the store did not answer: no fire runs unclaimed, so they are
        remembered (``_retry_from``) and tried again, late but once."""
        if self._paused():  # a paused job's fires are recorded `skipped (paused)`, not run
            fires = [self._unless_paused(fire) for fire in fires]
        apart = None
        if self.store.multi_node:
            apart = {f.job for f in fires if exclusive(self.jobs[f.job].spec.overlap)}
        outcomes = await self.ledger.claim(fires, exclusive=apart)
        if outcomes is None:
            for fire in fires:
                self._retry_from.setdefault(fire.job, fire.scheduled)
            return False
        missed: dict[str, list[Fire]] = {}
        for fire, won in zip(fires, outcomes):
            if not won:
                log.debug(
                    "%s at %s was already recorded; not firing it again", fire.job, fire.scheduled
                )
                continue
            if won is Claim.BUSY:
                fire = replace(fire, status=RunStatus.SKIPPED, error=busy_error("another node"))
            if fire.status is RunStatus.CLAIMED:
                self.ledger.hold(fire)
            elif fire.status is RunStatus.MISSED:
                missed.setdefault(fire.job, []).append(fire)
            else:
                self._emit_unrun(fire)
        for job_fires in missed.values():
            if len(job_fires) <= MISSED_EVENTS:
                for fire in job_fires:
                    self._emit_unrun(fire)
            else:
                first, last = job_fires[0], job_fires[-1]
                self._emit_unrun(
                    replace(
                        last,
                        error=(
                            f"{len(job_fires)} fires from {first.scheduled.isoformat()} "
                            f"to {last.scheduled.isoformat()} missed: {last.error}"
                        ),
                    )
                )
        return True

    def _emit_unrun(self, fire: Fire) -> None:
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

    def start_ready(self, now: datetime) -> None:
        """Start every claimed fire whose instant has come, or comes within the loop's lead
        (then its run is prepared now and its body starts on the instant: burst.py);
        overlap is decided now, for the fires due together against what ran before them (so
        catch_up: all runs them all)."""
        horizon = now
        instant = self.ledger.next_instant()
        if self._early and instant is not None:
            horizon = now + timedelta(seconds=self.lead(self.ledger.held_at(instant)))
        due = self.ledger.due(horizon)
        if not due:
            return
        if now - due[0].scheduled > LATE_AFTER:
            due = self._recheck_late(due, now)
        if self._paused():  # paused after its claim, before its instant
            due = [self._unless_paused(fire) for fire in due]
        decided = [
            self._overlap(f) if f.job in self.jobs and f.status is RunStatus.CLAIMED else f
            for f in due
        ]
        unrun: list[Fire] = []
        burst: Burst | None = None
        prepared = time.perf_counter()
        # No collector pass while runs are prepared and started: the objects the preparing
        # makes are young, and a pass over them stops everything for milliseconds (a full
        # one for tens); the next allocation after the burst collects them.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for fire in decided:
                state = self.jobs.get(fire.job)
                if state is None:  # removed by a reload after the claim
                    self.ledger.unstarted(fire, RunStatus.CANCELLED, cancels.REMOVED)
                    self.runs.cancelled(
                        fire.job, fire.run_id, fire.trigger, fire.scheduled, cancels.REMOVED
                    )
                    continue
                if fire.status is not RunStatus.CLAIMED:
                    unrun.append(fire)
                    continue
                at = max(fire.scheduled, now)
                if burst is not None and burst.gate.instant != at:
                    self._go(burst, prepared)
                    burst, prepared = None, time.perf_counter()
                if burst is None:
                    burst = Burst(at)
                self._emit(
                    EventKind.FIRED,
                    at=at,
                    job=fire.job,
                    run_id=fire.run_id,
                    trigger=fire.trigger,
                    scheduled=fire.scheduled,
                )
                self.runs.start(state.spec, fire.run_id, fire.trigger, fire.scheduled, burst=burst)
        finally:
            try:
                if burst is not None:  # never leave a prepared run at its gate
                    self._go(burst, prepared)
            finally:
                if collecting:
                    gc.enable()
        for fire in unrun:
            self.ledger.unstarted(fire, fire.status, fire.error or "")
            self._emit_unrun(fire)

    def _go(self, burst: Burst, prepared: float) -> None:
        """Wait for the burst's instant (the rest of the lead) and start its bodies."""
        count = len(burst)
        if self._early and count:
            cost = (time.perf_counter() - prepared) / count
            # Up at once, down slowly: one slow burst makes the next ones wake earlier.
            self._prepare_cost = min(max(cost, 0.8 * self._prepare_cost + 0.2 * cost), PREPARE_MAX)
            settle_until(burst.gate.instant.timestamp(), limit=LEAD_MAX)
        burst.go(self.clock)

    def _recheck_late(self, due: list[Fire], now: datetime) -> list[Fire]:
        """Claimed fires that come to start late (the loop or the store held them up) go
        through catch_up like any late fire, judged against the fires due after them: the
        ones it does not run are recorded missed."""
        keep: list[Fire] = []
        for fire in due:
            state = self.jobs.get(fire.job)
            late = now - fire.scheduled > LATE_AFTER
            if state is None or not late or fire.trigger is not TriggerKind.SCHEDULE:
                keep.append(fire)
                continue
            spec = state.spec
            reason = late_claim_missed(
                scheduled=fire.scheduled,
                newer=spec.schedule.next_after(fire.scheduled) if spec.schedule else None,
                now=now,
                catch_up=spec.catch_up,
                misfire_grace=spec.misfire_grace,
            )
            if reason is None:
                keep.append(replace(fire, trigger=TriggerKind.CATCH_UP))
                continue
            self.ledger.unstarted(fire, RunStatus.MISSED, reason)
            self._emit_unrun(replace(fire, status=RunStatus.MISSED, error=reason))
        return keep

    def _decide(
        self, spec: JobSpec, due: Sequence[datetime], now: datetime, gap: Gap | None = None
    ) -> list[Fire]:
        """Split due fires into runs and missed rows by lateness, catch_up and misfire_grace;
        a ``gap`` of fires not listed one by one becomes one missed row."""
        summary: list[Fire] = []
        if gap is not None:
            why = missed_reason(spec.catch_up, True)
            summary.append(
                self.fire(
                    spec,
                    gap.first,
                    TriggerKind.SCHEDULE,
                    RunStatus.MISSED,
                    f"{gap.describe()} missed: {why}",
                )
            )
        if spec.name in self._held():
            reason = f"held back: {self._held()[spec.name]}"
            return summary + [
                self.fire(spec, t, TriggerKind.SCHEDULE, RunStatus.MISSED, reason) for t in due
            ]
        catch, on_time, missed = split_due(
            due,
            now,
            catch_up=spec.catch_up,
            misfire_grace=spec.misfire_grace,
            max_catch_up=self._config().settings.max_catch_up,
        )
        fires = [self.fire(spec, t, TriggerKind.CATCH_UP) for t in catch]
        fires += [self.fire(spec, t, TriggerKind.SCHEDULE) for t in on_time]
        reason = missed_reason(spec.catch_up, bool(on_time))
        fires += [
            self.fire(spec, t, TriggerKind.SCHEDULE, RunStatus.MISSED, reason) for t in missed
        ]
        fires.sort(key=lambda f: f.scheduled)
        return summary + fires

    def fire(
        self,
        spec: JobSpec,
        when: datetime,
        trigger: TriggerKind,
        status: RunStatus = RunStatus.CLAIMED,
        error: str | None = None,
    ) -> Fire:
        """A new fire of ``spec`` at ``when`` (marked if it repeats a wall time after a step
        of the clock back: policy.second_pass)."""
        key = spec.schedule.key if spec.schedule is not None else ""
        startup = trigger is TriggerKind.STARTUP
        return Fire(
            job=spec.name,
            scheduled=second_pass(when, spec.schedule, self.stepped_back, startup=startup),
            trigger=trigger,
            run_id=new_run_id(),
            schedule_key=key,
            status=status,
            error=error,
        )

    def _overlap(self, fire: Fire) -> Fire:
        """Apply the job's overlap policy to a fire that wants to run."""
        state = self.jobs[fire.job]
        busy = self.runs.busy(fire.job)
        why = overlap_skip(state.spec.overlap, fire.trigger, busy, queued=bool(state.pending))
        if why is None:
            return fire
        return replace(fire, status=RunStatus.SKIPPED, error=why)

    def _unless_paused(self, fire: Fire) -> Fire:
        """A fire of a paused job (``qtasks pause``) is recorded, not run."""
        if fire.job not in self._paused() or fire.status is not RunStatus.CLAIMED:
            return fire
        return replace(fire, status=RunStatus.SKIPPED, error="skipped (paused)")

    def lead(self, fires: int) -> float:
        """How long before an instant with ``fires`` held fires the loop wakes (seconds)."""
        if not self._early:
            return 0.0
        return min(self._early + PREPARE_MARGIN * fires * self._prepare_cost, LEAD_MAX)
