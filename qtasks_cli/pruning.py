"""Keeping the history to ``keep_runs``/``keep_days``: at the start and then hourly, in the
background, so that a long prune (store/sqlite_prune.py works in chunks) never holds up
firing. A store that cannot prune is logged, and tried again an hour later."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qtasks_cli.models import Settings
    from qtasks_cli.store.base import Store

# The daemon loop's logger, as before the loop was split: its records keep their name (the
# JSON log's "logger", the store-error count of metrics.py).
log = logging.getLogger("qtasks_cli.supervisor")

PRUNE_EVERY = timedelta(hours=1)


class Pruner:
    """Starts a prune of the history when one is due and none is in flight."""

    def __init__(self, store: Store, settings: Callable[[], Settings]) -> None:
        self.store = store
        self._settings = settings  # the current job file's (a reload may change them)
        self._next: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    def maybe(self, now: datetime) -> None:
        """Apply keep_runs/keep_days at start and then hourly, in the background."""
        if self._next is not None and now < self._next:
            return
        self._next = now + PRUNE_EVERY
        settings = self._settings()
        if settings.keep_runs is None and settings.keep_days is None:
            return
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.create_task(self._prune(now))

    async def _prune(self, now: datetime) -> None:
        settings = self._settings()
        try:
            removed = await self.store.prune(
                keep_runs=settings.keep_runs, keep_days=settings.keep_days, now=now
            )
        except Exception as exc:
            log.warning("cannot prune history in %s: %s", self.store.location, exc)
        else:
            if removed:
                log.info("pruned %d old run(s) from the history", removed)
