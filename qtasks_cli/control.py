"""The daemon's side of the operator's commands, in a thread of its own.

Every LOOK_EVERY seconds (sooner when poked by a wake-up datagram) the thread reads the
paused jobs and the cancel requests from the store and hands them to the loop; every
PUBLISH_EVERY seconds it publishes what ``qtasks status`` shows (pid, node, up since,
version, the loaded file's fingerprint, next fires). It has its own store connection, so the
loop never waits on it; the loop only takes a snapshot (cached views) and flips two fields.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from qtasks_cli import __version__
from qtasks_cli.errors import StoreError
from qtasks_cli.store.control import ControlStore, DaemonInfo, open_control

if TYPE_CHECKING:
    from qtasks_cli.models import Snapshot
    from qtasks_cli.output import Capture
    from qtasks_cli.supervisor import Supervisor

log = logging.getLogger(__name__)
_R = TypeVar("_R")

# Seconds between looks for pauses and cancel requests when nothing pokes the thread: the
# commands wake the daemon (datagram for SQLite, NOTIFY for PostgreSQL), which pokes it.
LOOK_EVERY = 5.0
PUBLISH_EVERY = 5.0  # seconds between status publishes (the heartbeat ``status`` judges)
POKED_AFTER = 0.1  # a poke is served at the first half second at least this far away
TIDY_EVERY = 3600.0  # seconds between deletions of output rows of pruned runs
LOOP_WAIT = 5.0  # the longest the thread waits for the loop to answer


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def daemon_info(
    snapshot: Snapshot, *, node_id: str, config: str, digest: str, every: float
) -> DaemonInfo:
    """What a daemon publishes, from its snapshot (pure)."""
    jobs = {
        view.name: {
            "next": view.next_fire.isoformat() if view.next_fire is not None else None,
            "running": view.running,
            "pending": view.pending,
            "enabled": view.enabled,
            "paused": view.paused,
        }
        for view in snapshot.jobs
    }
    return DaemonInfo(
        node_id=node_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        started=snapshot.started_at,
        last_seen=snapshot.now,
        version=__version__,
        config=config,
        digest=digest,
        every=every,
        running=snapshot.running,
        queued=snapshot.queued,
        jobs=jobs,
    )


def next_half_second(after: float, now: float) -> float:
    """The first wall-clock half second (x.5, Unix time) at least ``after`` seconds past
    ``now``. Rounds fall between whole seconds, where cron's fires are, so the thread's store
    writes and its turns at the GIL stay out of the way of a burst of fires."""
    return math.ceil(now + after - 0.5) + 0.5


class Controller:
    """Connects a running ``Supervisor`` with the operator's tables of its state."""

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        state: str,
        schema: str,
        look_every: float = LOOK_EVERY,
        publish_every: float = PUBLISH_EVERY,
        opener: Callable[[], ControlStore] | None = None,
        capture: Capture | None = None,
    ) -> None:
        self.capture = capture
        self.supervisor = supervisor
        self.look_every = look_every
        self.publish_every = publish_every
        self._open = opener or (lambda: open_control(state, schema=schema))
        self._store: ControlStore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._poked = False  # publish in the next round: a command may wait for it
        self._stop = threading.Event()
        self._published = 0.0
        self._tidied = time.monotonic()
        self.latest: Snapshot | None = None  # the last snapshot taken, for metrics
        self.store_errors = 0  # failed rounds in a row
        self.on_round: list[Callable[[], None]] = []  # called in the thread after each look

    async def start(self) -> None:
        """Open the store and read the pauses before the first fire (so a restart never
        fires a paused job), then start the thread. StoreError if the store cannot be read."""
        self._loop = asyncio.get_running_loop()
        self._store = await asyncio.to_thread(self._open)
        paused = await asyncio.to_thread(self._store.paused)
        self.supervisor.paused = frozenset(paused)
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
        """Look at the store soon (a command announced a change); safe from any thread."""
        self._poked = True
        self._wake.set()

    async def stop(self, wait: float | None = None) -> None:
        """Stop the thread (storing the last output lines) and withdraw this daemon's row,
        waiting for it at most ``wait`` seconds (default: as long as a round may take)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join, LOOP_WAIT + 5 if wait is None else wait)

    # --- the thread -------------------------------------------------------------------------

    def _main(self) -> None:
        store = self._store
        assert store is not None
        try:
            while not self._stop.is_set():
                try:
                    self._round(store)
                    if self.store_errors:
                        log.warning("the operator's tables can be reached again")
                    self.store_errors = 0
                except StoreError as exc:
                    if not self.store_errors:  # once per outage, not once a second
                        log.warning("cannot read or write the operator's tables: %s", exc)
                    self.store_errors += 1
                except (concurrent.futures.TimeoutError, RuntimeError):
                    pass  # the loop is busy or closing: next round
                for hook in self.on_round:
                    try:
                        hook()
                    except Exception:
                        log.exception("control hook %r failed", hook)
                self._sleep()
        finally:
            with contextlib.suppress(Exception):
                self._store_output(store)  # of runs that ended during the stop
            with contextlib.suppress(Exception):
                store.withdraw(self.supervisor.store.node_id)
            with contextlib.suppress(Exception):
                store.close()

    def _sleep(self) -> None:
        """Until the next round: ``look_every`` after this one, or sooner when poked; always
        on a half second, so a burst of pokes makes at most about one round a second."""
        deadline = next_half_second(self.look_every - 0.5, time.time())
        while not self._stop.is_set():
            remaining = deadline - time.time()
            if remaining <= 0:
                return
            if self._wake.wait(remaining):
                self._wake.clear()
                deadline = min(deadline, next_half_second(POKED_AFTER, time.time()))

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
        self._store_output(store)
        now = time.monotonic()
        if self._poked or now - self._published >= self.publish_every - 0.5:
            self._poked = False
            snapshot: Snapshot = self._on_loop(self.supervisor.snapshot)
            self.latest = snapshot
            config = self.supervisor.config
            store.publish(
                daemon_info(
                    snapshot,
                    node_id=self.supervisor.store.node_id,
                    config=str(config.path),
                    digest=config.digest,
                    every=self.publish_every,
                )
            )
            self._published = now
        if now - self._tidied >= TIDY_EVERY:
            self._tidied = now
            store.tidy()

    def _store_output(self, store: ControlStore) -> None:
        if self.capture is None:
            return
        for job, run_id, lines in self.capture.take():
            spec = self.supervisor.config.jobs.get(job)
            if spec is not None and spec.secrets:
                from qtasks_cli.redaction import redact_lines

                lines = redact_lines(lines, spec.secrets)
            store.add_output(run_id, lines)  # cut to OUTPUT_LINE_CHARS there, once redacted

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
