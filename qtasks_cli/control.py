"""The daemon's side of the operator's commands, in a thread of its own.

The thread sleeps on an event. An operator's command wakes it: ``pause``, ``resume``,
``cancel`` and a ``status`` that wants a fresh view write what they want to the store and
then announce it (a ``CONTROL`` datagram on the daemon's wake-up socket for SQLite, a NOTIFY
for PostgreSQL; qtasks_cli.wake). The thread then reads the paused jobs and the cancel
requests, hands them to the loop, and publishes what ``qtasks status`` shows (pid, node, up
since, version, the loaded file's fingerprint, what each job is doing). Unasked, it does all
that once every HEARTBEAT seconds, which is also the heartbeat ``status`` judges a daemon on
another host by; on this host ``status`` asks the kernel whether the process still exists.
Where a daemon has no wake-up path (no abstract Unix socket), the thread looks every
LOOK_EVERY seconds instead.

It has its own store connection, so the loop never waits on it; the loop only takes a
snapshot (cached views) and flips two fields.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from qtasks_cli import __version__, offthread
from qtasks_cli.cancels import cancelled_event
from qtasks_cli.errors import StoreError
from qtasks_cli.models import RunResult
from qtasks_cli.store import open_control
from qtasks_cli.store.base import local_key
from qtasks_cli.store.control import ControlStore, DaemonInfo, process_start

if TYPE_CHECKING:
    from qtasks_cli.models import Snapshot
    from qtasks_cli.supervisor import Supervisor

log = logging.getLogger(__name__)
_R = TypeVar("_R")

HEARTBEAT = 60.0  # seconds between looks and publishes when nobody asks
LOOK_EVERY = 5.0  # ... when commands cannot wake the thread (no wake-up socket)
ANSWER_AFTER = 0.05  # a poke is served at the first quiet instant at least this far away
QUIET = (0.2, 0.8)  # the part of each second rounds happen in: away from cron's whole seconds
TIDY_EVERY = 3600.0  # seconds between deletions of output rows of pruned runs
LOOP_WAIT = 5.0  # the longest the thread waits for the loop to answer


def daemon_info(
    snapshot: Snapshot,
    *,
    node_id: str,
    config: str,
    digest: str,
    every: float,
    abandoned: Mapping[str, str] | None = None,
    wakeable: bool | None = None,
) -> DaemonInfo:
    """What a daemon publishes, from its snapshot and its abandoned runs (run id -> job)
    (pure but for the pid and host)."""
    given_up: dict[str, list[str]] = {}
    for run_id, job in sorted((abandoned or {}).items()):
        given_up.setdefault(job, []).append(run_id)
    jobs = {
        view.name: {
            "next": view.next_fire.isoformat() if view.next_fire is not None else None,
            "running": view.running,
            "waiting": view.waiting,
            "pending": view.pending,
            "abandoned": given_up.get(view.name, []),
            "enabled": view.enabled,
            "paused": view.paused,
        }
        for view in snapshot.jobs
    }
    pid = os.getpid()
    return DaemonInfo(
        node_id=node_id,
        host=socket.gethostname(),
        pid=pid,
        pid_start=process_start(pid),
        local_key=local_key() or None,
        wakeable=wakeable,
        started=snapshot.started_at,
        last_seen=snapshot.now,
        published=snapshot.now,
        version=__version__,
        config=config,
        digest=digest,
        every=every,
        running=snapshot.running,
        queued=snapshot.queued,
        waiting=snapshot.waiting,
        abandoned=snapshot.abandoned,
        jobs=jobs,
    )


def quiet_instant(after: float, now: float) -> float:
    """The first wall-clock instant at least ``after`` seconds past ``now`` whose fraction of
    a second lies within QUIET. Rounds fall between whole seconds, where cron's fires are, so
    the thread's store writes and its turns at the GIL stay out of the way of a burst."""
    when = now + after
    low, high = QUIET
    fraction = when - math.floor(when)
    if fraction < low:
        return math.floor(when) + low
    if fraction > high:
        return math.floor(when) + 1 + low
    return when


class Controller:
    """Connects a running ``Supervisor`` with the operator's tables of its state."""

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        state: str,
        schema: str,
        heartbeat: float = HEARTBEAT,
        look_every: float = LOOK_EVERY,
        opener: Callable[[], ControlStore] | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.heartbeat = heartbeat
        # Until ``woken`` says commands reach the thread, it looks every ``look_every`` s.
        self.look_every = look_every
        self.woken = False
        self._open = opener or (lambda: open_control(state, schema=schema))
        self._store: ControlStore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._tidied = time.monotonic()
        self.rounds = 0  # rounds done, for tests and the bench
        self.latest: Snapshot | None = None  # the last snapshot taken, for metrics
        self.store_errors = 0  # failed rounds in a row
        self.on_round: list[Callable[[], None]] = []  # called in the thread after each look

    @property
    def every(self) -> float:
        """Seconds between rounds nobody asked for."""
        return self.heartbeat if self.woken else min(self.heartbeat, self.look_every)

    @property
    def beat_every(self) -> float:
        """Seconds between the heartbeats ``status`` sees: a PostgreSQL node's own (its row
        in ``nodes``, which ``status`` reads with ours), else this thread's rounds."""
        if self.supervisor.cluster.shared:
            return min(self.every, self.supervisor.cluster.every)
        return self.every

    async def start(self) -> None:
        """Open the store and read the pauses before the first fire (so a restart never
        fires a paused job), then start the thread. StoreError if the store cannot be read."""
        self._loop = asyncio.get_running_loop()
        self._store = await offthread.run(self._open, name="qtasks-control")
        paused = await offthread.run(self._store.paused, name="qtasks-control")
        self.supervisor.paused = frozenset(paused)
        await offthread.run(functools.partial(_withdraw_gone, self._store), name="qtasks-control")
        self._thread = threading.Thread(target=self._main, name="qtasks-control", daemon=True)
        self._thread.start()

    def read(self, fn: Callable[[ControlStore], _R]) -> _R:
        """``fn(store)`` with the thread's store (which serializes its calls); any thread
        but the loop's. RuntimeError before ``start``."""
        if self._store is None:
            raise RuntimeError("the control store is not open")
        return fn(self._store)

    def fresh_snapshot(self) -> Snapshot | None:
        """The daemon's snapshot now, taken on the loop (one hop); the latest published one
        when the loop does not answer in time. Any thread but the loop's."""
        try:
            snapshot: Snapshot = self._on_loop(self.supervisor.snapshot)
        except (concurrent.futures.TimeoutError, RuntimeError):
            return self.latest
        return snapshot

    def poke(self) -> None:
        """Look at the store and publish soon (a command announced a change, or someone
        wants a fresh view); safe from any thread, including the loop's."""
        self._wake.set()

    async def stop(self, wait: float | None = None) -> None:
        """Stop the thread and withdraw this daemon's row, waiting for it at most ``wait``
        seconds (default: as long as a round may take)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            # Not asyncio.to_thread: jobs may have filled the loop's default executor.
            try:
                await offthread.run(thread.join, LOOP_WAIT + 5 if wait is None else wait)
            except RuntimeError:  # no thread to wait with: the daemon thread ends with us
                log.warning("could not wait for the control thread: no thread can start")

    # --- the thread -------------------------------------------------------------------------

    def _main(self) -> None:
        store = self._store
        assert store is not None
        try:
            # The first round once the supervisor has started (at once, so `status` finds the
            # daemon): a snapshot before the start shows no next fire, and its views (10,000
            # jobs: 25 ms on the loop) held the start back. The round also works out the
            # file's digest here, in this thread (Config.digest: 0.09 s for 10,000 jobs).
            while not self._stop.is_set() and not self.supervisor.ready.is_set():
                self._stop.wait(0.02)
            while not self._stop.is_set():
                try:
                    self._round(store)
                    if self.store_errors:
                        log.warning("the operator's tables can be reached again")
                    self.store_errors = 0
                except StoreError as exc:
                    if not self.store_errors:  # once per outage, not once a round
                        log.warning("cannot read or write the operator's tables: %s", exc)
                    self.store_errors += 1
                except (concurrent.futures.TimeoutError, RuntimeError):
                    pass  # the loop is busy or closing: next round
                self.rounds += 1
                for hook in self.on_round:
                    try:
                        hook()
                    except Exception:
                        log.exception("control hook %r failed", hook)
                self._sleep()
        finally:
            with contextlib.suppress(Exception):
                store.withdraw(self.supervisor.store.node_id)
            with contextlib.suppress(Exception):
                store.close()

    def _sleep(self) -> None:
        """Until the next round: ``every`` seconds after this one (one wake-up, no polling),
        or soon after a poke; always at a quiet instant, so a burst of pokes makes at most
        about one round a second."""
        deadline = quiet_instant(self.every, time.time())
        if self.store_errors:  # an outage: try again sooner than a whole heartbeat
            deadline = min(deadline, quiet_instant(LOOK_EVERY, time.time()))
        while not self._stop.is_set():
            remaining = deadline - time.time()
            if remaining <= 0:
                return
            if self._wake.wait(remaining):
                self._wake.clear()
                deadline = min(deadline, quiet_instant(ANSWER_AFTER, time.time()))

    def _round(self, store: ControlStore) -> None:
        paused = frozenset(store.paused())
        if paused != self.supervisor.paused:
            self._on_loop(self._set_paused, paused)
        requests = store.cancel_requests()
        if requests:
            done = [
                r.run_id
                for r in requests
                if self._on_loop(self.supervisor.cancel_run, r.run_id, r.by)
            ]
            if done:
                store.settle_cancel(done, f"cancelled on node {self.supervisor.store.node_id}")
        reported = store.take_unreported_cancels(
            f"reported by node {self.supervisor.store.node_id}"
        )
        if reported:
            self._on_loop(self._report_cancels, reported)
        snapshot, abandoned = self._on_loop(self._observe)
        self.latest = snapshot
        config = self.supervisor.config
        store.publish(
            daemon_info(
                snapshot,
                node_id=self.supervisor.store.node_id,
                config=str(config.path),
                digest=config.digest,
                every=self.beat_every,
                abandoned=abandoned,
                wakeable=self.woken,
            )
        )
        now = time.monotonic()
        if now - self._tidied >= TIDY_EVERY:
            self._tidied = now
            store.tidy()

    def _observe(self) -> tuple[Snapshot, dict[str, str]]:
        """On the loop: the snapshot, and the runs given up on whose thread still runs."""
        return self.supervisor.snapshot(), dict(self.supervisor.runtime.abandoned)

    def _report_cancels(self, rows: list[RunResult]) -> None:
        """On the loop: report runs cancelled without a daemon (qtasks_cli.cancels)."""
        for row in rows:
            self.supervisor.bus.emit(
                cancelled_event(
                    job=row.job,
                    run_id=row.run_id,
                    trigger=row.trigger,
                    scheduled=row.scheduled,
                    error=row.error or "cancelled",
                    time=self.supervisor.clock(),
                )
            )

    def _set_paused(self, paused: frozenset[str]) -> None:
        before = self.supervisor.paused
        self.supervisor.paused = paused
        for job in sorted(paused - before):
            log.warning("job %s is paused (qtasks pause): its fires are skipped", job)
        for job in sorted(before - paused):
            log.warning("job %s is resumed", job)

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the event loop, waited for from this thread."""
        assert self._loop is not None

        async def call() -> Any:
            return fn(*args)

        future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        return future.result(LOOP_WAIT)


GONE_KEPT = timedelta(hours=24)  # how long a daemon judged gone by its heartbeat stays listed


def _withdraw_gone(store: ControlStore) -> None:
    """At a daemon's start, after recovery took over their runs: the entries of daemons that
    are gone (their process is not there on this host, or their heartbeat stopped more than
    GONE_KEPT ago) leave ``status``, which otherwise lists every killed daemon for good."""
    from qtasks_cli.liveness import judge

    now = datetime.now(timezone.utc)
    here = socket.gethostname()
    for info in store.daemons():
        alive, by = judge(info, now, here)
        if not alive and (by != "heartbeat" or now - info.last_seen > GONE_KEPT):
            with contextlib.suppress(Exception):  # a listing to tidy, never a reason to fail
                store.withdraw(info.node_id)
