"""The write buffer both stores share: ``start`` and ``finish`` wait here and are written
in batches, and survive an outage of the file or server.

A failed batch is kept and retried every ``retry_interval``; the outage is logged once
(WARNING, with the number of rows waiting) and its end once (INFO). Messages go to the
owning store's logger, so they read as that store's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qtasks_cli.errors import StoreError

CLOSE_ATTEMPTS = 3  # tries to write the buffer when closing before rows are given up


@dataclass(frozen=True, kw_only=True, slots=True)
class Write:
    """One buffered write: the first statement must touch a row, the rest follow it."""

    kind: str  # "start" or "finish", for messages
    run_id: str
    statements: tuple[tuple[str, tuple[Any, ...]], ...]
    wanted: str = ""  # the status a finish writes, to tell a repeat from a refusal


def _cause(exc: StoreError) -> object:
    return exc.__cause__ or exc


class WriteBuffer:
    """Pending writes of one store, flushed by ``write_batch`` (which raises StoreError
    when the whole batch should be kept and retried)."""

    def __init__(
        self,
        *,
        location: str,
        log: logging.Logger,
        write_batch: Callable[[list[Write]], Awaitable[None]],
        flush_interval: float,
        retry_interval: float,
        batch_size: int,
        sleep: Callable[[float], Awaitable[None]],
        reason: Callable[[StoreError], object] = _cause,
    ) -> None:
        self._location = location
        self._log = log
        self._write_batch = write_batch
        self._flush_interval = flush_interval
        self.retry_interval = retry_interval
        self._batch_size = batch_size
        self._sleep = sleep
        self._reason = reason  # what a message shows of a failure (psycopg's may quote a URL)
        self.pending: list[Write] = []
        self._flush_lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None  # timed flushes while rows wait
        self._kick: asyncio.Task[None] | None = None  # an early flush of a full buffer
        self._outage_since: float | None = None  # monotonic time of the first failed flush

    def add(self, write: Write) -> None:
        """Buffer ``write``; a writer task writes it soon (at once when the buffer is full)."""
        self.pending.append(write)
        loop = asyncio.get_running_loop()
        full = len(self.pending) > self._batch_size
        if full and self._outage_since is None and (self._kick is None or self._kick.done()):
            self._kick = loop.create_task(self._flush_quietly())
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_loop())

    async def _write_loop(self) -> None:
        while self.pending:
            healthy = self._outage_since is None
            await self._sleep(self._flush_interval if healthy else self.retry_interval)
            await self._flush_quietly()

    async def _flush_quietly(self) -> None:
        try:
            await self.try_flush()
        except Exception:
            self._log.exception("%s: unexpected error while writing run updates", self._location)

    async def try_flush(self) -> StoreError | None:
        """Write the buffer in one batch; on failure keep it and return the error."""
        async with self._flush_lock:
            if not self.pending:
                return None
            batch, self.pending = self.pending, []
            try:
                await self._write_batch(batch)
            except StoreError as exc:
                self.pending[:0] = batch
                self._note_failure(exc)
                return exc
            except BaseException:
                # Cancelled mid-write: the write may still commit, but every buffered
                # write is idempotent, so writing it again later is harmless.
                self.pending[:0] = batch
                raise
            if self._outage_since is not None:
                waited = time.monotonic() - self._outage_since
                self._outage_since = None
                self._log.info(
                    "%s: wrote %d run updates that had waited %.1fs",
                    self._location,
                    len(batch),
                    waited,
                )
            return None

    def _note_failure(self, exc: StoreError) -> None:
        reason = self._reason(exc)
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self._log.warning(
                "%s: cannot write %d run updates (%s); keeping them and retrying every %gs",
                self._location,
                len(self.pending),
                reason,
                self.retry_interval,
            )
        else:
            self._log.debug("%s: still cannot write run updates: %s", self._location, reason)

    async def flush(self) -> None:
        """Write buffered rows now; StoreError (rows kept) when they cannot be written."""
        failure = await self.try_flush()
        if failure is not None:
            raise StoreError(
                f"{self._location}: {len(self.pending)} run updates are not written yet "
                f"({self._reason(failure)}); they are kept and retried"
            ) from failure

    async def flush_for_read(self) -> None:
        """Flush before a read, except during an outage."""
        # During an outage the retry loop owns the buffer; a read should not wait out
        # another timeout just to fail the same way.
        if self.pending and self._outage_since is None:
            await self.try_flush()

    async def stop(self) -> None:
        """Cancel the writer tasks (before a final ``drain``)."""
        for task in (self._writer, self._kick):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def drain(self) -> StoreError | None:
        """Try to write the buffer ``CLOSE_ATTEMPTS`` times; the last failure, if any."""
        failure: StoreError | None = None
        for attempt in range(CLOSE_ATTEMPTS):
            failure = await self.try_flush()
            if failure is None:
                break
            if attempt + 1 < CLOSE_ATTEMPTS:
                await self._sleep(self.retry_interval)
        return failure

    def raise_lost(self, failure: StoreError | None, lost: int) -> None:
        """After closing: log and raise StoreError when ``lost`` rows were never written."""
        if failure is not None and lost:
            self._log.error(
                "%s: %d run updates were never written: %s", self._location, lost, failure
            )
            raise StoreError(
                f"{self._location}: {lost} run updates could not be written before closing "
                f"({failure}); those runs will show as interrupted"
            )

    def ignored(self, write: Write, row: Sequence[Any] | None) -> None:
        """Log a write the fence refused (its first statement touched no row), with what the
        store holds instead (``row``: job, status, error, owner; None: no such run)."""
        from qtasks_cli.store.fence import refused

        refused(self._log, self._location, write.kind, write.run_id, write.wanted, row)

    def dropped(self, write: Write, reason: object) -> None:
        """Log a write the database rejected for good (the others go on)."""
        self._log.error(
            "%s: dropped the %s of run %r: %s", self._location, write.kind, write.run_id, reason
        )
