"""The run ledger: claim -> start -> finish (what recovery concludes after a crash is
``recovery.py``).

The guarantee it keeps (README, "Exactly once"): the body of a (job, scheduled time) and of a
handed-over request starts at most once, ever. The state that guards a re-execution is
durable before the body starts:

- a scheduled or catch-up fire is *claimed* (a row under the unique (job, scheduled) key,
  committed) before its instant; the claim means "this fire may start", so a claim left
  behind by a dead daemon is concluded ``interrupted`` ("may have run") and never fired again;
- a handed-over request (``trigger --enqueue``, ``enqueue()``, a re-run) is *taken* (status
  ``claimed``, owned by this daemon) and then *begun*: the ``running`` mark is committed,
  conditional on this daemon still owning it, before the body starts. A request taken but
  not begun has certainly not run, so recovery gives it back to the queue; a begun one
  is ``interrupted``.

When the store cannot take a claim or a begin, the run waits for it (late but once); nothing
runs unrecorded. ``finish`` may be buffered: losing it leaves the row ``running``, which
recovery reports as interrupted.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import logging
import random
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from qtasks_cli.errors import StoreError
from qtasks_cli.models import JobSpec, RunResult, RunStatus
from qtasks_cli.policy import still_claimable
from qtasks_cli.recovery import never_ran

if TYPE_CHECKING:
    from qtasks_cli.store.base import Claim, Fire, LedgerStore

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class Backoff:
    """Exponential delays with jitter: ``first`` seconds, doubling up to ``cap``."""

    def __init__(self, first: float = 0.2, cap: float = 10.0) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.first


async def until_stored(
    what: str,
    call: Callable[[], Awaitable[_T]],
    *,
    stopping: Callable[[], bool],
    backoff: Backoff | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> _T | None:
    """Await ``call()`` until the store answers; retry transient StoreErrors with backoff.

    Logs the outage once (WARNING, the error names the store and the step) and its end
    once (INFO, with ``what``). Returns None when ``stopping()``
    becomes true before the store answered. A non-transient StoreError is raised.
    """
    backoff = backoff or Backoff()
    failures = 0
    while True:
        try:
            result = await call()
        except StoreError as exc:
            if not exc.transient:
                raise
            failures += 1
            delay = backoff.next()
            if failures == 1:
                log.warning("%s; waiting for the store, retrying with backoff", exc)
            else:
                log.debug("%s: still failing (%s); next try in %.1fs", what, exc, delay)
            if stopping():
                return None
            await sleep(delay)
            if stopping():
                return None
            continue
        if failures:
            log.info("%s: the store answered again after %d failed tries", what, failures)
        return result


# A claim slower than this is said in the log (once per outage).
SLOW_CLAIM = 1.0


class Ledger:
    """One daemon's side of the ledger: claims (held until their instant), begins, finishes
    and releases, each written through the ``LedgerStore``; the supervisor decides what to claim
    and when to start, the ledger makes it durable.

    ``background(coro)`` runs a coroutine as a tracked task; ``stopping()`` and ``nap`` let a
    wait for the store end early when the daemon stops.
    """

    def __init__(
        self,
        store: LedgerStore,
        *,
        clock: Callable[[], datetime],
        stopping: Callable[[], bool],
        nap: Callable[[float], Awaitable[None]],
        background: Callable[[Coroutine[Any, Any, None]], None],
        retry: tuple[float, float] = (0.2, 1.0),
    ) -> None:
        self.store = store
        self._clock = clock
        self._stopping = stopping
        self._nap = nap
        self._background = background
        self.backoff = Backoff(*retry)
        self._held: list[tuple[datetime, int, Fire]] = []  # claimed, before their instant
        self._held_at: collections.Counter[datetime] = collections.Counter()  # per instant
        self._seq = 0
        self._failing = False

    # -- claims --------------------------------------------------------------------------

    async def claim(
        self, fires: Sequence[Fire], *, exclusive: Collection[str] | None = None
    ) -> Sequence[bool | Claim] | None:
        """Claim ``fires`` in one store write: per fire, what the store did (``Claim``, or
        a bool without ``exclusive``); None when the store did not answer (nothing was
        claimed, and the caller tries again later). Logs a slow or failing store once per
        outage and its end once."""
        try:
            if exclusive is not None:
                claim: asyncio.Future[Sequence[bool | Claim]] = asyncio.ensure_future(
                    self.store.claim(fires, exclusive_jobs=exclusive)
                )
            else:
                claim = asyncio.ensure_future(self.store.claim(fires))
            done, _ = await asyncio.wait({claim}, timeout=SLOW_CLAIM)
            if not done and not self._failing:
                self._failing = True
                log.warning(
                    "claims in %s take longer than %gs (is another process holding it?); "
                    "fires wait for the store and run late, each at most once",
                    self.store.location,
                    SLOW_CLAIM,
                )
            outcomes = await claim
        except Exception as exc:
            if not self._failing:
                self._failing = True
                log.error(
                    "cannot claim fires in %s (%s); they wait for the store and run late, "
                    "each at most once",
                    self.store.location,
                    exc,
                )
            return None
        if self._failing:
            self._failing = False
            log.warning("%s takes claims again", self.store.location)
        self.backoff.reset()
        return outcomes

    def hold(self, fire: Fire) -> None:
        """Keep a claimed fire until its instant (``due``)."""
        self._seq += 1
        heapq.heappush(self._held, (fire.scheduled, self._seq, fire))
        self._held_at[fire.scheduled] += 1

    def next_instant(self) -> datetime | None:
        """The instant of the soonest held fire, or None."""
        return self._held[0][0] if self._held else None

    def held_at(self, instant: datetime) -> int:
        """How many held fires are due at ``instant``."""
        return self._held_at.get(instant, 0)

    def due(self, now: datetime) -> list[Fire]:
        """Take the held fires whose instant has come, soonest first."""
        due: list[Fire] = []
        while self._held and self._held[0][0] <= now:
            due.append(heapq.heappop(self._held)[2])
        for fire in due:
            self._forget(fire.scheduled)
        return due

    def held_runs(self) -> dict[str, str]:
        """The claims held until their instant: run id -> job."""
        return {fire.run_id: fire.job for _, _, fire in self._held}

    def forget(self, run_ids: Collection[str]) -> list[Fire]:
        """Drop held claims that are no longer this daemon's (another node concluded them
        while this one did not answer): they must not start, and are not released either."""
        gone = [f for _, _, f in self._held if f.run_id in run_ids]
        if gone:
            self._held = [e for e in self._held if e[2].run_id not in run_ids]
            heapq.heapify(self._held)
            for fire in gone:
                self._forget(fire.scheduled)
        return gone

    def _forget(self, instant: datetime) -> None:
        left = self._held_at[instant] - 1
        if left > 0:
            self._held_at[instant] = left
        else:
            del self._held_at[instant]

    def release(
        self, jobs: Collection[str] | None = None, keep: Callable[[Fire], bool] | None = None
    ) -> None:
        """Give back the held claims (of ``jobs``, or all; not those ``keep`` keeps): off
        the list now, deleted from the store in the background (a clock step, a reload that
        removed or changed jobs)."""
        fires = self._take(jobs, keep)
        if fires:
            self._background(self._release(fires))

    def release_stale(self, jobs: Collection[str], specs: Mapping[str, JobSpec]) -> None:
        """A reload: give back the held claims of ``jobs`` (removed or changed) that the job
        file ``specs`` no longer makes (``policy.still_claimable``)."""
        self.release(jobs, lambda f: still_claimable(specs.get(f.job), f.trigger, f.scheduled))

    async def release_all(self) -> None:
        """Give back every held claim and wait for the store (a graceful stop)."""
        await self._release(self._take(None))

    def _take(
        self, jobs: Collection[str] | None, keep: Callable[[Fire], bool] | None = None
    ) -> list[Fire]:
        def taken(fire: Fire) -> bool:
            return (jobs is None or fire.job in jobs) and (keep is None or not keep(fire))

        fires = [f for _, _, f in self._held if taken(f)]
        self._held = [e for e in self._held if not taken(e[2])]
        heapq.heapify(self._held)
        for fire in fires:
            self._forget(fire.scheduled)
        return fires

    async def _release(self, fires: list[Fire]) -> None:
        if not fires:
            return
        try:
            await self.store.release(fires)
        except Exception as exc:
            log.warning(
                "cannot give back %d unstarted claim(s) in %s (%s); the next start reports "
                "them as interrupted",
                len(fires),
                self.store.location,
                exc,
            )

    # -- starts and ends -----------------------------------------------------------------

    async def begin(self, job: str, run_id: str) -> bool:
        """Commit a request's ``running`` mark before its body starts, waiting for the
        store; False when the request must not run here (another node took it back, or the
        daemon is stopping: it stays taken and the next start gives it back)."""
        begun = await until_stored(
            f"starting run {run_id} of {job}",
            lambda: self.store.begin(run_id, self._clock()),
            stopping=self._stopping,
            sleep=self._nap,
        )
        if begun is None:
            return False
        if not begun:
            log.warning(
                "request %s of %s is no longer this daemon's (another node took it back); "
                "not running it here",
                run_id,
                job,
            )
        return begun

    async def started(self, run_id: str) -> None:
        """A claimed fire's body starts now (buffered: the claim already guards it)."""
        await self.store.start(run_id, self._clock())

    async def finish(self, result: RunResult) -> None:
        """Record a run's outcome (buffered); a failure is logged, never raised."""
        try:
            await self.store.finish(result)
        except Exception:
            log.exception("cannot record the end of run %s of %s", result.run_id, result.job)

    def unstarted(self, fire: Fire, status: RunStatus, error: str) -> None:
        """Record a claimed fire that will not run (skipped, missed, cancelled)."""
        result = never_ran(
            job=fire.job,
            run_id=fire.run_id,
            trigger=fire.trigger,
            scheduled=fire.scheduled,
            ended=self._clock(),
            status=status,
            error=error,
        )
        self._background(self.finish(result))
