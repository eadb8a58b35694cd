"""Several nodes on one store (PostgreSQL): this node's heartbeat, the runs of dead nodes
reaped, and jobs held back while their definition differs on another live node. With a store
only one daemon can hold (SQLite: no ``ClusterStore``) there is nothing to do: ``shared`` is
False, and the other parts ask it instead of the store.

A node heartbeats every ``every`` seconds (at most a third of ``node_timeout``). A node that
finds itself presumed dead meanwhile honours what the others concluded (qtasks_cli.fencing).
The loop asks ``held`` before it fires a job: a job defined differently elsewhere is recorded
missed ("held back") until the files agree, so two definitions never run side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from qtasks_cli.events import Event, Notice

if TYPE_CHECKING:
    from qtasks_cli.fencing import Holder
    from qtasks_cli.models import Config, RunResult
    from qtasks_cli.store.base import ClusterStore, NodeInfo

# The daemon loop's logger, as before the loop was split: its records keep their name (the
# JSON log's "logger", the store-error count of metrics.py).
log = logging.getLogger("qtasks_cli.supervisor")

# How often a node heartbeats (seconds); at most a third of node_timeout.
HEARTBEAT_EVERY = 5.0
# How far ahead of its instant a fire may be claimed (seconds; claims.CLAIM_AHEAD_MAX): a claim
# this node still holds late by more than node_timeout less this and a heartbeat may belong
# to a node the others presumed dead meanwhile (``unsure_after``).
CLAIMED_AHEAD = 2.0


class Cluster:
    """This node's membership: heartbeat, reaping, the live nodes and the jobs held back."""

    def __init__(
        self,
        *,
        store: ClusterStore | None,
        holder: Holder,
        config: Callable[[], Config],
        clock: Callable[[], datetime],
        emit: Callable[[Event], None],
        interrupted: Callable[[RunResult], None],
        rerun_jobs: Callable[[], set[str]],
        stopping: Callable[[], bool],
    ) -> None:
        self.store = store
        self._holder = holder  # what fencing lets go of (the supervisor)
        self._config = config
        self.clock = clock
        self._emit = emit
        self._interrupted = interrupted
        self._rerun_jobs = rerun_jobs
        self._stopping = stopping
        self.nodes: tuple[str, ...] = ()  # the live nodes, for the snapshot
        self.held: dict[str, str] = {}  # job -> why its definition differs across nodes
        self._fingerprints: dict[str, str] = {}
        # When (monotonic seconds) the last heartbeat that found this node still registered,
        # or honoured what the others concluded, began: what late claims wait for.
        self.confirmed = float("-inf")
        self._soon = asyncio.Event()

    @property
    def shared(self) -> bool:
        """Whether other nodes may share the store: then a fire never runs unclaimed, a
        claim's lead follows the store's speed, and the others' clocks keep the wall times
        (qtasks_cli.claims)."""
        return self.store is not None

    @property
    def every(self) -> float:
        """Seconds between this node's heartbeats: at most a third of node_timeout."""
        return min(HEARTBEAT_EVERY, self._config().settings.node_timeout.total_seconds() / 3)

    def unsure_after(self) -> float | None:
        """How late (seconds) a claim this node holds may be before the node may have been
        presumed dead while it did not run (frozen, cut off), so that another node may have
        concluded the claim; None with a store of one daemon."""
        if self.store is None:
            return None
        timeout = self._config().settings.node_timeout.total_seconds()
        return max(0.0, timeout - self.every - CLAIMED_AHEAD)

    def confirm_soon(self) -> None:
        """Heartbeat now rather than at the next beat (``confirmed`` moves on then)."""
        self._soon.set()

    def config_changed(self) -> None:
        """A new job file was applied: describe its jobs afresh at the next heartbeat."""
        self._fingerprints = {}

    async def keep_in_touch(self) -> None:
        """Heartbeat, reap the runs of dead nodes, and hold back jobs defined differently
        elsewhere, every few seconds, until the daemon stops."""
        every = self.every
        while self.store is not None and not self._stopping():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._soon.wait(), every)
            self._soon.clear()
            await self.touch(self.clock())

    async def touch(self, now: datetime) -> None:
        """One heartbeat; a store that does not answer is logged and tried at the next."""
        if self.store is None:
            return
        config = self._config()
        timeout = config.settings.node_timeout
        began = time.monotonic()
        try:
            registered = await self.store.heartbeat(
                now, digest=config.digest, fingerprints=self._job_fingerprints()
            )
            if not registered:  # presumed dead meanwhile: honour what the others concluded
                from qtasks_cli.fencing import honour_conclusions

                await honour_conclusions(self._holder)
            self.confirmed = began  # what this node holds now is its own
            for row in await self.store.reap_dead_nodes(
                now, timeout, rerun_jobs=self._rerun_jobs()
            ):
                self._interrupted(row)
            nodes = await self.store.nodes(now, timeout)
        except Exception as exc:
            log.warning("cannot reach the other nodes through %s: %s", self.store.location, exc)
            return
        self.nodes = tuple(node.node_id for node in nodes)
        self._compare_definitions(nodes, self.store.node_id)

    def _job_fingerprints(self) -> dict[str, str]:
        if not self._fingerprints:
            from qtasks_cli.digests import fingerprint

            jobs = self._config().jobs
            self._fingerprints = {name: fingerprint(j) for name, j in jobs.items()}
        return self._fingerprints

    def _compare_definitions(self, nodes: Sequence[NodeInfo], me: str) -> None:
        """Hold back every job whose definition differs on another live node (``me``:
        this node's id)."""
        mine = self._job_fingerprints()
        held: dict[str, str] = {}
        for node in nodes:
            if node.node_id == me or not node.digest:
                continue  # ourselves, or a node that has not described its jobs yet
            for job, print_ in mine.items():
                if node.fingerprints.get(job) != print_:
                    held[job] = f"its definition differs on node {node.node_id}"
        if set(held) != set(self.held):
            if held:
                self._emit(
                    Notice(
                        time=self.clock(),
                        level=logging.WARNING,
                        message="job file differs from the other nodes'; "
                        "not firing until they agree: "
                        + ", ".join(f"{job} ({why})" for job, why in sorted(held.items())),
                    )
                )
            else:
                self._emit(Notice(time=self.clock(), message="job files agree across nodes again"))
        self.held = held


__all__ = ["HEARTBEAT_EVERY", "Cluster"]
