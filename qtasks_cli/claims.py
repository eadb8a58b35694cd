"""Claiming: every due fire claimed in the store ahead of its instant.

A fire's path to its claim: the timetable says it is due within ``claim_ahead`` ->
``claim_due`` lists the due fires (after a late wake-up, the missed ones too,
policy.due_fires) and splits them into runs and missed rows (policy.split_due; a job held
back by the cluster: missed) -> one store write claims them, in the background (ledger.py)
-> the claimed fires wait in the ledger for their instant (firing.py starts them). A fire
the store did not claim is tried again (late but once): no fire runs unclaimed. A step of
the wall clock back gives the claims back and schedules afresh (``after_step``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from qtasks_cli.durations import format_duration
from qtasks_cli.events import Event, Missed, Skipped
from qtasks_cli.models import JobSpec, RunStatus, TriggerKind
from qtasks_cli.policy import (
    LATE_AFTER,
    Gap,
    StepBack,
    due_fires,
    exclusive,
    keep_last,
    missed_reason,
    second_pass,
    split_due,
    step_back,
)
from qtasks_cli.store import new_run_id
from qtasks_cli.store.base import BUSY_ELSEWHERE, Claim, Fire

if TYPE_CHECKING:
    from qtasks_cli.clock import Wakeup
    from qtasks_cli.ledger import Ledger
    from qtasks_cli.models import Config, RunResult
    from qtasks_cli.timetable import JobState, Timetable

# The daemon loop's logger, as before the loop was split: its records keep their name (the
# JSON log's "logger", the store-error count of metrics.py).
log = logging.getLogger("qtasks_cli.supervisor")

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


def report_unrun(emit: Callable[[Event], None], fire: Fire, now: datetime) -> None:
    """Say that ``fire`` did not run (skipped or missed), with why; ``now``: aware UTC."""
    kind = Skipped if fire.status is RunStatus.SKIPPED else Missed
    emit(
        kind(
            time=now,
            job=fire.job,
            run_id=fire.run_id,
            trigger=fire.trigger,
            scheduled=fire.scheduled,
            status=fire.status,
            error=fire.error,
        )
    )


def unless_paused(fire: Fire, paused: Collection[str]) -> Fire:
    """A fire of a paused job (``qtasks pause``) is recorded, not run."""
    if fire.job not in paused or fire.status is not RunStatus.CLAIMED:
        return fire
    return replace(fire, status=RunStatus.SKIPPED, error="skipped (paused)")


class Claims:
    """Claims due fires ahead of their instant; holds the won ones in the ledger."""

    def __init__(
        self,
        *,
        jobs: dict[str, JobState],
        timetable: Timetable,
        ledger: Ledger,
        shared: bool,
        config: Callable[[], Config],
        paused: Callable[[], frozenset[str]],
        held: Callable[[], dict[str, str]],
        clock: Callable[[], datetime],
        emit: Callable[[Event], None],
        tasks: set[asyncio.Task[None]],
        wake: Wakeup,
        read_run: Callable[[str], Awaitable[RunResult | None]] | None = None,
    ) -> None:
        self.jobs = jobs  # the supervisor's table, shared
        # A fire the store skipped because another node runs its job is said as the store
        # recorded it, naming that node (``_busy_error``).
        self._read_run = read_run
        self.timetable = timetable
        self.ledger = ledger
        # Other nodes may share the store (qtasks_cli.cluster): a claim is then the only guard
        # against a fire running on every node, and their clocks keep the wall times.
        self._shared = shared
        self._config = config
        self._paused = paused  # jobs the operator paused (qtasks_cli.control)
        self._held = held  # jobs held back across nodes, and why (qtasks_cli.cluster)
        self.clock = clock
        self._emit = emit
        self._tasks = tasks  # the daemon's tasks, which a stop waits for
        self._wake = wake
        self._retry_from: dict[str, datetime] = {}  # first fire the store did not claim
        self._claim_task: asyncio.Task[None] | None = None
        self.claim_ahead = CLAIM_AHEAD  # grows while claims are slow (CLAIM_AHEAD_MAX)
        # The wall times a step of the clock back repeats (after_step).
        self.stepped_back: StepBack | None = None

    def wait(self, now: datetime) -> float | None:
        """Seconds until the loop must wake to claim the next fires (``claim_ahead`` before
        the earliest); None when no fire is scheduled, or while a claim is in flight (its end
        wakes the loop)."""
        first = self.timetable.first()
        claiming = self._claim_task is not None and not self._claim_task.done()
        if first is None or claiming:
            return None
        return max(0.0, (first - self.claim_ahead - now).total_seconds())

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
        if claimed and self._shared:
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
        paused = self._paused()
        if paused:  # a paused job's fires are recorded `skipped (paused)`, not run
            fires = [unless_paused(fire, paused) for fire in fires]
        apart = None
        if self._shared:
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
                fire = replace(fire, status=RunStatus.SKIPPED, error=await self._busy_error(fire))
            if fire.status is RunStatus.CLAIMED:
                self.ledger.hold(fire)
            elif fire.status is RunStatus.MISSED:
                missed.setdefault(fire.job, []).append(fire)
            else:
                report_unrun(self._emit, fire, self.clock())
        for job_fires in missed.values():
            if len(job_fires) <= MISSED_EVENTS:
                for fire in job_fires:
                    report_unrun(self._emit, fire, self.clock())
            else:
                first, last = job_fires[0], job_fires[-1]
                report_unrun(
                    self._emit,
                    replace(
                        last,
                        error=(
                            f"{len(job_fires)} fires from {first.scheduled.isoformat()} "
                            f"to {last.scheduled.isoformat()} missed: {last.error}"
                        ),
                    ),
                    self.clock(),
                )
        return True

    async def _busy_error(self, fire: Fire) -> str:
        """Why the store skipped ``fire`` (``Claim.BUSY``), as its row says: the node that
        runs the job is named there, and the event says the same as the history."""
        try:
            row = None if self._read_run is None else await self._read_run(fire.run_id)
        except Exception as exc:  # the store stopped answering: say it without the name
            log.debug("cannot read the skip of %s back: %s", fire.run_id, exc)
            row = None
        if row is not None and row.error:
            return row.error
        return BUSY_ELSEWHERE

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

    def after_step(self, now: datetime, step: float) -> None:
        """React to a step of the wall clock by ``step`` seconds (0: none; clock.StepWatch):
        say so once, and after a step back give the claims back and compute every next fire
        from the present; the unique (job, time) key keeps every fire at most once
        whichever way the clock went."""
        if self.stepped_back is not None and now > self.stepped_back.until:
            self.stepped_back = None  # the repeated wall times are behind us
        if not step:
            return
        direction = "forward" if step > 0 else "back"
        log.warning(
            "the wall clock stepped %s by %s; computing every next fire from now (%s)",
            direction,
            format_duration(timedelta(seconds=round(abs(step)))),
            now.isoformat(),
        )
        if step < 0:
            # Fires claimed for what is now the far future would start late by the step:
            # give the claims back and schedule afresh from the present.
            self.ledger.release()
            if not self._shared:
                # The wall times up to where the clock was come round again; jobs that
                # follow the clock fire at them again, under a key of their own
                # (policy.repeats_after_step). With several nodes the others' clocks
                # keep those times, so a second pass would run them twice.
                self.stepped_back = step_back(now, timedelta(seconds=-step) + self.claim_ahead)
            for name in self.jobs:
                self.timetable.schedule(name, now)
