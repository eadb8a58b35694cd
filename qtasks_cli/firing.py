"""Firing: the claimed fires started on their instant.

The loop wakes ``lead`` before an instant (clock.FIRE_EARLY plus the measured cost of
preparing the instant's runs); ``start_ready`` then takes the fires due from the ledger,
sends the late ones through catch_up again (policy.late_claim_missed), decides overlap
(policy.overlap_skip), prepares each run up to its gate and, at the instant, opens the gates
one after the other (burst.py, clock.settle_until). Nothing but the bodies runs between the
instant and the bodies: see the README's design section, "Firing on the instant".
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from qtasks_cli import cancels
from qtasks_cli.burst import Burst
from qtasks_cli.claims import report_unrun, unless_paused
from qtasks_cli.clock import settle_until
from qtasks_cli.events import Event, Fired
from qtasks_cli.models import Overlap, RunStatus, TriggerKind
from qtasks_cli.policy import LATE_AFTER, late_claim_missed, overlap_skip
from qtasks_cli.store.base import Fire

if TYPE_CHECKING:
    from qtasks_cli.cluster import Cluster
    from qtasks_cli.ledger import Ledger
    from qtasks_cli.occupancy import Occupancy
    from qtasks_cli.runs import Runs
    from qtasks_cli.timetable import JobState

# Preparing a fire's run before its instant (burst.py) costs about this much (seconds); the
# loop measures it at every burst and wakes that much more before an instant (FIRE_EARLY
# is the rest: the timer's overshoot). Bounded so that a slow burst never blocks the loop
# for long.
PREPARE_GUESS = 30e-6
PREPARE_MAX = 300e-6
PREPARE_MARGIN = 1.5  # the estimate's margin: a burst's preparing varies with the machine's load
LEAD_MAX = 0.25
# Late claims that wait for a heartbeat (``_vouched``) are looked at again this often
# (seconds), and judged anyway after UNSURE_WAIT (a store that does not answer).
UNSURE_POLL = 0.02
UNSURE_WAIT = 5.0


class Firing:
    """Starts claimed fires on their instant."""

    def __init__(
        self,
        *,
        jobs: dict[str, JobState],
        ledger: Ledger,
        runs: Runs,
        occupancy: Occupancy,
        cluster: Cluster,
        paused: Callable[[], frozenset[str]],
        clock: Callable[[], datetime],
        emit: Callable[[Event], None],
        early: float,
    ) -> None:
        self.jobs = jobs  # the supervisor's table, shared
        self.ledger = ledger
        self.runs = runs
        self._occupancy = occupancy  # who holds what: the overlap rule reads it
        self._cluster = cluster
        self._unsure_since: float | None = None  # late claims wait since (``_vouched``)
        self._paused = paused  # jobs the operator paused (qtasks_cli.control)
        self.clock = clock
        self._emit = emit
        # Wake this long before a fire's instant (plus the preparing, see PREPARE_GUESS)
        # and wait the rest precisely (clock.settle_until); a test's clock has no overshoot.
        self._early = early
        self._prepare_cost = PREPARE_GUESS
        # The instant of fires held to be decided on it, not before (``_on_the_instant``).
        self._exact: datetime | None = None

    def wait(self, now: datetime) -> float | None:
        """Seconds until the loop must wake to start the next claimed fires (``lead`` before
        their instant); None when no claimed fire waits."""
        instant = self.ledger.next_instant()
        if instant is None:
            return None
        if self._unsure_since is not None:
            return UNSURE_POLL
        if instant == self._exact:  # decided on the instant itself: no lead
            return max(0.0, (instant - now).total_seconds())
        lead = self.lead(self.ledger.held_at(instant))
        return max(0.0, (instant - now).total_seconds() - lead)

    def start_ready(self, now: datetime) -> None:
        """Start every claimed fire whose instant has come, or comes within the loop's lead
        (then its run is prepared now and its body starts on the instant: burst.py);
        overlap is decided now, for the fires due together against what ran before them (so
        catch_up: all runs them all)."""
        horizon = now
        if self._exact is not None and now >= self._exact:
            self._exact = None
        instant = self.ledger.next_instant()
        if self._early and instant is not None and instant != self._exact:
            horizon = now + timedelta(seconds=self.lead(self.ledger.held_at(instant)))
        due = self._on_the_instant(self.ledger.due(horizon), now)
        if not due or now - due[0].scheduled <= LATE_AFTER:
            self._unsure_since = None  # nothing late waits any more
        if not due:
            return
        if now - due[0].scheduled > LATE_AFTER:
            if not self._vouched(due, now):
                return
            due = self._recheck_late(due, now)
        paused = self._paused()
        if paused:  # paused after its claim, before its instant
            due = [unless_paused(fire, paused) for fire in due]
        decided = [
            self._overlap(f) if f.job in self.jobs and f.status is RunStatus.CLAIMED else f
            for f in due
        ]
        unrun: list[Fire] = []
        # No collector pass while runs are prepared and started: the objects the preparing
        # makes are young, and a pass over them stops everything for milliseconds (a full
        # one for tens); the next allocation after the burst collects them.
        collecting = gc.isenabled()
        gc.disable()  # not gcpause's threshold: a body may read it (and fill up to it)
        try:
            self._start_decided(decided, now, unrun)
        finally:
            if collecting:
                gc.enable()
        for fire in unrun:
            self.ledger.unstarted(fire, fire.status, fire.error or "")
            report_unrun(self._emit, fire, self.clock())

    def _start_decided(self, decided: list[Fire], now: datetime, unrun: list[Fire]) -> None:
        """Prepare the claimed runs of ``decided`` in bursts by instant and start each burst
        on its instant; the fires not to run go to ``unrun``."""
        burst: Burst | None = None
        prepared = time.perf_counter()
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
                    Fired(
                        time=at,
                        job=fire.job,
                        run_id=fire.run_id,
                        trigger=fire.trigger,
                        scheduled=fire.scheduled,
                    )
                )
                self.runs.start(state.spec, fire.run_id, fire.trigger, fire.scheduled, burst=burst)
        finally:
            if burst is not None:  # never leave a prepared run at its gate
                self._go(burst, prepared)

    def _go(self, burst: Burst, prepared: float) -> None:
        """Wait for the burst's instant (the rest of the lead) and start its bodies."""
        count = len(burst)
        if self._early and burst.added:
            if count:
                cost = (time.perf_counter() - prepared) / count
                # Up at once, down slowly: one slow burst makes the next ones wake earlier.
                self._prepare_cost = min(
                    max(cost, 0.8 * self._prepare_cost + 0.2 * cost), PREPARE_MAX
                )
            # Also when no run is held at the gate: a run waiting for a slot passes the open
            # gate the moment it gets one, and that must not be before the instant.
            settle_until(burst.gate.instant.timestamp(), limit=LEAD_MAX)
        burst.go(self.clock)

    def _on_the_instant(self, due: list[Fire], now: datetime) -> list[Fire]:
        """``due`` less the fires taken before their instant (the lead) whose job still runs:
        they are held again and decided on the instant itself (``wait``), so that a run that
        ends in the last milliseconds before it does not make them skip or wait."""
        if not self._early:
            return due
        keep: list[Fire] = []
        for fire in due:
            state = self.jobs.get(fire.job)
            if (
                fire.scheduled > now
                and fire.status is RunStatus.CLAIMED
                and state is not None
                and state.spec.overlap is not Overlap.ALLOW
                and self._occupancy.busy(fire.job) is not None
            ):
                self.ledger.hold(fire)
                self._exact = min(fire.scheduled, self._exact or fire.scheduled)
            else:
                keep.append(fire)
        return keep

    def _vouched(self, due: list[Fire], now: datetime) -> bool:
        """Whether late claims may be judged now. On a shared store, claims late by more than
        ``Cluster.unsure_after`` wait (held again) for a heartbeat begun after they were found
        late: this node may have been presumed dead while it did not run, and what another
        node concluded of them is honoured first (qtasks_cli.fencing), so that they neither
        run nor are said missed here. At most UNSURE_WAIT seconds (a store that does not
        answer: then the fence refuses their writes)."""
        limit = self._cluster.unsure_after()
        if limit is None or (now - due[0].scheduled).total_seconds() <= limit:
            self._unsure_since = None
            return True
        mono = time.monotonic()
        since = self._unsure_since
        if since is None:
            self._unsure_since = since = mono
            self._cluster.confirm_soon()
        if self._cluster.confirmed >= since or mono - since > UNSURE_WAIT:
            self._unsure_since = None
            return True
        for fire in due:
            self.ledger.hold(fire)
        return False

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
            report_unrun(
                self._emit, replace(fire, status=RunStatus.MISSED, error=reason), self.clock()
            )
        return keep

    def _overlap(self, fire: Fire) -> Fire:
        """Apply the job's overlap policy to a fire that wants to run."""
        state = self.jobs[fire.job]
        busy = self._occupancy.busy(fire.job)
        why = overlap_skip(state.spec.overlap, fire.trigger, busy, queued=bool(state.pending))
        if why is None:
            return fire
        return replace(fire, status=RunStatus.SKIPPED, error=why)

    def lead(self, fires: int) -> float:
        """How long before an instant with ``fires`` held fires the loop wakes (seconds)."""
        if not self._early:
            return 0.0
        return min(self._early + PREPARE_MARGIN * fires * self._prepare_cost, LEAD_MAX)
