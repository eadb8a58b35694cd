"""The run ledger: claim -> start -> finish, and what recovery concludes after a crash.

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
import enum
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from qtasks_cli.errors import StoreError
from qtasks_cli.models import RunStatus, TriggerKind

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# What a recovered row's error says; tests and the README quote these.
IN_PROGRESS = "daemon stopped while the run was in progress"
MAY_HAVE_RUN = (
    "daemon stopped after claiming this fire, at about its start; the run may have started "
    "(a claim is written before the instant, the start mark after it)"
)


class Verdict(enum.Enum):
    """What recovery does with one unfinished row a dead daemon left."""

    INTERRUPT_RUNNING = "interrupt_running"  # it was running: interrupted
    INTERRUPT_CLAIMED = "interrupt_claimed"  # claimed fire: may have run, interrupted
    REQUEUE = "requeue"  # a request taken but never begun: offer it again


def verdict(status: str, trigger: str) -> Verdict:
    """Recovery's rule for one ``claimed`` or ``running`` row of a dead owner.

    A request (trigger ``queued``) is begun durably before its body runs, so while it is
    still ``claimed`` it has not run: it goes back to the queue. Every other claim may have
    started (claims are written ahead of the instant), so it is interrupted, never re-fired.
    """
    if status == RunStatus.RUNNING.value:
        return Verdict.INTERRUPT_RUNNING
    if trigger == TriggerKind.QUEUED.value:
        return Verdict.REQUEUE
    return Verdict.INTERRUPT_CLAIMED


def rerun_note(run_id: str) -> str:
    """The text appended to an interrupted run's error when ``retry_interrupted`` re-runs it."""
    return f"; re-run as {run_id} (retry_interrupted)"


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

    Logs the outage once (WARNING) and its end once (INFO). Returns None when ``stopping()``
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
                log.warning("%s: %s; waiting for the store, retrying with backoff", what, exc)
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
