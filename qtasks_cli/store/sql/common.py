"""``SqlStore``: the ``Store`` methods that are the same SQL in both stores."""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable, Collection, Generator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, overload

from qtasks_cli.errors import StoreError
from qtasks_cli.models import Attempt, RunResult, RunStatus
from qtasks_cli.store.base import Claim, Fire, JobStats, pid_alive
from qtasks_cli.store.sql.dialect import Dialect, Query
from qtasks_cli.store.sql.reads import (
    attempts_query,
    history_query,
    last_fired_sql,
    run_steps,
    stats_steps,
)
from qtasks_cli.store.sql.rows import attempt_from_row, check_fires, row_to_run, run_values

if TYPE_CHECKING:
    from qtasks_cli.store.buffer import Write, WriteBuffer


_T = TypeVar("_T")


class SqlStore(abc.ABC):
    """The ``Store`` methods that are the same in both stores: reads, stats, the claim's
    contract, manual runs, the prune's limits, flushing. A store gives its dialect, its
    writes' buffer and five primitives: ``_fetch`` (one query), ``_steps`` (a read of
    several), ``_insert_run``, ``_claim`` and ``_prune``."""

    location: str
    node_id: str
    _duplicate: type[BaseException]  # the driver's error for a run id recorded already
    _clock: Callable[[], datetime]
    _d: Dialect
    _pid: int
    _host: str
    _writes: WriteBuffer

    @abc.abstractmethod
    def _is_open(self) -> bool:
        """Opened and not closed yet."""

    def _check_open(self) -> None:
        """RuntimeError (a programming error, not a store's) unless the store is open."""
        if not self._is_open():
            raise RuntimeError(f"{self.location}: the store is not open")

    @abc.abstractmethod
    async def _write_pending(self, batch: list[Write]) -> None:
        """Write a batch the buffer hands over, in one transaction where it can."""

    def _write_buffer(
        self,
        log: logging.Logger,
        *,
        flush_interval: float,
        retry_interval: float,
        batch_size: int,
        sleep: Callable[[float], Awaitable[None]],
        reason: Callable[[StoreError], object] | None = None,
    ) -> WriteBuffer:
        """The buffer of this store's ``start`` and ``finish`` writes, which hands them to
        ``_write_pending`` every ``flush_interval`` seconds (``reason``: what a failure's
        message shows, by default its cause)."""
        from qtasks_cli.store.buffer import WriteBuffer

        shown = {} if reason is None else {"reason": reason}
        return WriteBuffer(
            location=self.location,
            log=log,
            write_batch=self._write_pending,
            flush_interval=flush_interval,
            retry_interval=retry_interval,
            batch_size=batch_size,
            sleep=sleep,
            **shown,
        )

    def _buffer(self, write: Write) -> None:
        """Hand a write that decides nothing (start, finish) to the buffer."""
        if not self._is_open():  # after every run: one call, not two
            raise RuntimeError(f"{self.location}: the store is not open")
        self._writes.add(write)

    @abc.abstractmethod
    async def _fetch(self, what: str, query: str, params: Any = ()) -> list[Any]:
        """The rows of one query; StoreError saying ``what`` failed."""

    @abc.abstractmethod
    async def _steps(self, what: str, steps: Generator[Query, list[Any], _T]) -> _T:
        """Run a read of several queries (``drive``); StoreError saying ``what`` failed."""

    @abc.abstractmethod
    async def _insert_run(self, row: tuple[Any, ...]) -> None:
        """Insert ``rows.run_values``; StoreError caused by ``_duplicate`` when it exists."""

    @abc.abstractmethod
    async def _prune(self, keep_runs: int | None, keep_days: float | None, now: datetime) -> int:
        """``prune`` once some limit is set and buffered writes are written."""

    @abc.abstractmethod
    async def _claim(
        self, fires: Sequence[Fire], scheduled: list[Any], exclusive_jobs: Collection[str]
    ) -> list[Claim]:
        """``Store.claim`` of checked, non-empty ``fires`` (``scheduled``: their times as
        stored), as ``Claim`` per fire."""

    @overload
    async def claim(self, fires: Sequence[Fire]) -> list[bool]: ...

    @overload
    async def claim(
        self, fires: Sequence[Fire], *, exclusive_jobs: Collection[str]
    ) -> list[Claim]: ...

    async def claim(
        self, fires: Sequence[Fire], *, exclusive_jobs: Collection[str] | None = None
    ) -> list[bool] | list[Claim]:
        """Insert each fire unless its (job, scheduled) exists and advance last fires, in
        one transaction; see ``Store.claim`` for ``exclusive_jobs``."""
        if not fires:
            return []
        scheduled = check_fires(self._d, fires)
        outcomes = await self._claim(fires, scheduled, exclusive_jobs or ())
        if exclusive_jobs is None:
            return [outcome is Claim.INSERTED for outcome in outcomes]
        return outcomes

    async def add_run(self, result: RunResult, *, args: Any = None, kwargs: Any = None) -> None:
        """Insert a run that has no scheduled time (a manual run), as given."""
        row = run_values(
            self._d,
            result,
            created=self._clock(),
            pid=self._pid,
            host=self._host,
            node=self.node_id,
            args=args,
            kwargs=kwargs,
        )
        try:
            await self._insert_run(row)
        except StoreError as exc:
            if isinstance(exc.__cause__, self._duplicate):
                raise StoreError(
                    f"{self.location}: run {result.run_id!r} of {result.job!r} is already recorded"
                ) from None
            raise

    async def last_fired(self) -> dict[str, tuple[datetime, str]]:
        """Per job, the last scheduled time recorded and its schedule key."""
        rows = await self._fetch("reading last fires", last_fired_sql(self._d))
        return {job: (self._d.time_out(when), key) for job, when, key in rows}

    async def flush(self) -> None:
        """Write buffered rows now; StoreError (rows kept) when the store cannot take them."""
        await self._writes.flush()

    async def get_run(self, run_id: str) -> RunResult | None:
        await self._writes.flush_for_read()
        return await self._steps("reading a run", run_steps(self._d, run_id))

    async def history(
        self, job: str | None = None, *, limit: int = 50, status: RunStatus | None = None
    ) -> list[RunResult]:
        """Newest first (by start, else scheduled, else created time)."""
        await self._writes.flush_for_read()
        rows = await self._fetch("reading history", *history_query(self._d, job, status, limit))
        return [row_to_run(self._d, row) for row in rows]

    async def attempts(self, run_id: str) -> list[Attempt]:
        await self._writes.flush_for_read()
        rows = await self._fetch("reading attempts", *attempts_query(self._d, run_id))
        return [attempt_from_row(self._d, row) for row in rows]

    async def stats(self, job: str | None = None) -> list[JobStats]:
        """Per job (sorted by name): counts, p50/p95 durations, last success and failure
        (``stats_steps``); a job named explicitly but never run gets a row of zeros."""
        await self._writes.flush_for_read()
        return await self._steps("reading statistics", stats_steps(self._d, job))

    async def prune(self, *, keep_runs: int | None, keep_days: float | None, now: datetime) -> int:
        """Delete finished runs beyond the ``keep_runs`` newest per job or older than
        ``keep_days`` (either limit deletes; None disables it); return how many."""
        if keep_runs is None and keep_days is None:
            return 0
        await self._writes.flush_for_read()
        return await self._prune(keep_runs, keep_days, now)

    def _runs_elsewhere(self, pid: int | None, host: str | None) -> bool:
        """A manual run's process still runs on this host (``qtasks trigger``)."""
        return pid is not None and pid != self._pid and host == self._host and pid_alive(pid)
