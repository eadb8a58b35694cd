"""The PostgreSQL store's nodes: registering this node (``lock_daemon``), heartbeats, the
live nodes, reaping the silent ones, recovery of their unfinished runs and the wake-ups that
NOTIFY brings. Many equal daemons share one schema, with no leader."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from psycopg.types.json import Jsonb

from qtasks_cli.models import RunResult
from qtasks_cli.recovery import conclude
from qtasks_cli.store import sql
from qtasks_cli.store.base import (
    NodeInfo,
    local_key,
    pid_alive,
)
from qtasks_cli.store.names import new_run_id
from qtasks_cli.store.postgres_conn import scrub as _scrub  # noqa: F401  (tests read it here)
from qtasks_cli.store.postgres_schema import (
    CONTROL_KIND,
    aware,
    must_utc,
)
from qtasks_cli.store.postgres_schema import (
    MIGRATIONS as MIGRATIONS,
)

if TYPE_CHECKING:
    pass
from qtasks_cli.store.postgres_base import AsyncConn, PostgresBase

log = logging.getLogger("qtasks_cli.store.postgres")

_T = TypeVar("_T")
_LOCAL_KEY = local_key()


def _row_to_node(row: Sequence[Any]) -> NodeInfo:
    return NodeInfo(
        node_id=row[0],
        host=row[1],
        pid=row[2],
        started=must_utc(row[3]),
        last_seen=must_utc(row[4]),
        digest=row[5],
        fingerprints=dict(row[6] or {}),
    )


class PostgresCluster(PostgresBase):
    """Membership, reaping and recovery over ``PostgresBase``'s connection."""

    async def lock_daemon(self) -> None:
        """Register this node (no exclusive lock: nodes share the database) and listen for
        handed-over work."""
        now = self._clock()
        params = (self.node_id, self._host, self._pid, now, now, "", Jsonb({}), _LOCAL_KEY)

        async def work(conn: AsyncConn) -> None:
            await conn.execute(self._sql["register"], params)

        await self._do("registering this node", work)
        self._registered = True
        await self._ear.start()

    @property
    def _listening(self) -> bool:
        return self._ear.listening

    async def wait_for_work(self, timeout: float) -> bool:
        """Return True as soon as a request is handed over (or the listener reconnected),
        False after ``timeout`` seconds; starts listening on first use."""
        return await self._ear.wait_for_work(timeout)

    async def changed(self) -> bool:
        """True when another store wrote since the last call (``Listener.changed``)."""

        async def send(payload: str) -> None:
            async def work(conn: AsyncConn) -> None:
                await conn.execute(self._sql["notify"], (self._channel, payload))

            await self._do("checking for changes", work)

        return await self._ear.changed(send)

    async def heartbeat(
        self, now: datetime, *, digest: str, fingerprints: Mapping[str, str]
    ) -> bool:
        """Record that this node is alive at ``now`` with its job file's digest; False when
        its row was gone (another node presumed it dead and concluded its runs)."""
        beat = (aware(now), digest, Jsonb(dict(fingerprints)), self.node_id)
        row = (
            self.node_id,
            self._host,
            self._pid,
            now,
            now,
            digest,
            Jsonb(dict(fingerprints)),
            _LOCAL_KEY,
        )

        async def work(conn: AsyncConn) -> bool:
            cur = await conn.execute(self._sql["beat"], beat)
            if cur.rowcount:
                return True
            await conn.execute(self._sql["register"], row)
            return False

        found = await self._do("recording a heartbeat", work)
        reaped = not found and self._registered
        if reaped:
            log.warning(
                "%s: node %s had been presumed dead by another node (it did not answer for "
                "longer than node_timeout); its runs in progress were concluded there; "
                "registered again",
                self.location,
                self.node_id,
            )
        self._registered = True
        return not reaped

    async def nodes(self, now: datetime, timeout: timedelta) -> list[NodeInfo]:
        """The nodes that heartbeat within ``timeout`` of ``now``, by node id."""

        async def work(conn: AsyncConn) -> list[Any]:
            cur = await conn.execute(self._sql["nodes"], (aware(now) - timeout,))
            return await cur.fetchall()

        return [_row_to_node(row) for row in await self._do("reading nodes", work)]

    async def reap_dead_nodes(
        self, now: datetime, timeout: timedelta, *, rerun_jobs: Collection[str] = ()
    ) -> list[RunResult]:
        """Conclude the runs of nodes silent for longer than ``timeout`` (or whose process
        is gone from this host) as ``recover`` does; forget the nodes."""
        await self._writes.flush_for_read()
        reruns = frozenset(rerun_jobs)

        async def work(conn: AsyncConn) -> list[RunResult]:
            async with conn.transaction():
                interrupted, requeued = await self._reap(conn, aware(now), timeout, reruns)
                if interrupted or requeued:
                    await self._notify(conn, "w" if requeued else "c")
            return await self._rows(conn, interrupted)

        rows = await self._do("reaping dead nodes", work)
        if rows:
            log.info("%s: %d runs of dead nodes marked interrupted", self.location, len(rows))
        return rows

    async def _reap(
        self, conn: AsyncConn, now: datetime, timeout: timedelta, rerun_jobs: frozenset[str]
    ) -> tuple[list[str], int]:
        """Inside a transaction: reap dead nodes; the interrupted run ids and requeued count."""
        # A node whose process is gone from this machine is dead at once, so a daemon
        # restarted after kill -9 need not wait node_timeout for its old runs.
        cur = await conn.execute(
            self._sql["dead_candidates"],
            (self.node_id, now - timeout, _LOCAL_KEY or "-", self._pid),
        )
        dead = {
            node: last_seen
            for node, local_key, pid, last_seen in await cur.fetchall()
            if now - last_seen > timeout or (local_key == _LOCAL_KEY and not pid_alive(pid))
        }
        if not dead:
            return [], 0
        names = list(dead)
        cur = await conn.execute(self._sql["unfinished_of_nodes"], (names,))
        rows = await cur.fetchall()
        noticed = now.isoformat()

        def note(node: str | None) -> str:
            when = must_utc(dead[node]).isoformat() if node in dead else "?"
            return f"node {node} silent since {when}; noticed at {noticed}"

        interrupted, requeued = await self._conclude(conn, rows, now, rerun_jobs, note)
        for node, last_seen in dead.items():
            log.warning(
                "%s: node %s silent since %s is presumed dead",
                self.location,
                node,
                must_utc(last_seen).isoformat(),
            )
        await conn.execute(self._sql["forget_nodes"], (names,))
        return interrupted, requeued

    async def _conclude(
        self,
        conn: AsyncConn,
        rows: Sequence[Any],
        now: datetime,
        rerun_jobs: frozenset[str],
        note: Callable[[str | None], str],
    ) -> tuple[list[str], int]:
        """Apply ``recovery.verdict`` to unfinished rows (run_id, job, status, trigger, pid,
        host, args_json, kwargs_json, node, cancel_by); the interrupted run ids and the
        count of requeued, re-run and cancelled ones (others to be told)."""
        unfinished = sql.unfinished(
            rows, note=lambda _, node: note(node), runs_elsewhere=self._runs_elsewhere
        )
        done = conclude(unfinished, rerun_jobs, new_run_id)
        async with conn.cursor() as cur:
            for statement, batch in sql.verdict_writes(self._d, done, now):
                await cur.executemany(statement, batch)
        if done.cancel:  # a daemon's control thread reports them (qtasks_cli.cancels)
            await self._notify(conn, CONTROL_KIND)
        told = len(done.requeue) + len(done.reruns) + len(done.cancel)
        return [run_id for run_id, _ in done.interrupt], told

    async def _rows(self, conn: AsyncConn, run_ids: list[str]) -> list[RunResult]:
        if not run_ids:
            return []
        cur = await conn.execute(
            f"SELECT {sql.run_columns(self._d)} FROM {self._d.table('runs')}"
            " WHERE run_id = ANY(%s) ORDER BY run_id",
            (run_ids,),
        )
        return [sql.row_to_run(self._d, row) for row in await cur.fetchall()]

    async def recover(self, now: datetime, *, rerun_jobs: Collection[str] = ()) -> list[RunResult]:
        """At a node's start: reap dead nodes (``node_timeout``), and conclude the runs left
        unfinished by processes that never registered as nodes (``qtasks trigger``, unless
        it still runs on this host) or whose node is gone, by ``recovery.verdict``."""
        await self._writes.flush_for_read()
        now = aware(now)
        reruns = frozenset(rerun_jobs)

        async def work(conn: AsyncConn) -> list[RunResult]:
            async with conn.transaction():
                interrupted, requeued = await self._reap(conn, now, self._node_timeout, reruns)
                cur = await conn.execute(self._sql["orphans"])
                orphans = await cur.fetchall()
                more, again = await self._conclude(
                    conn, orphans, now, reruns, lambda _: f"noticed at {now.isoformat()}"
                )
                interrupted += more
                if interrupted or requeued or again:
                    await self._notify(conn, "w" if requeued or again else "c")
            return await self._rows(conn, interrupted)

        rows = await self._do("recovering unfinished runs", work)
        if rows:
            log.info("%s: %d unfinished runs marked interrupted", self.location, len(rows))
        return rows
