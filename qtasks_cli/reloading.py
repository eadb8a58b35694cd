"""A changed job file read off the loop (SIGHUP, ``qtasks reload``): parsed, and its new
jobs' first fires worked out in a thread, so that firing goes on meanwhile. The loop applies
the result between two passes (``Supervisor.apply_config``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

from qtasks_cli import offthread
from qtasks_cli.events import ReloadFailed
from qtasks_cli.models import Config, JobSpec
from qtasks_cli.timetable import Ahead, first_fires


async def reread(
    load: Callable[[], Awaitable[Config]],
    jobs: Mapping[str, JobSpec],
    clock: Callable[[], datetime],
) -> tuple[Config, Mapping[str, Ahead]] | ReloadFailed:
    """The new configuration ``load`` reads, with its jobs' first fires against the running
    ``jobs`` (``timetable.first_fires``); or the event that says why it was refused (the
    old configuration keeps running). ``clock``: aware UTC."""
    try:
        config = await load()
    except Exception as exc:
        return ReloadFailed(
            time=clock(),
            level=logging.ERROR,
            message=f"(the old configuration keeps running):\n{exc}",
        )
    # The new jobs' first fires, worked out in a thread too: a schedule can be slow.
    try:
        ahead = await offthread.run(first_fires, jobs, config.jobs, clock(), name="qtasks-reload")
    except Exception:  # no thread could start: the loop works them out as before
        ahead = {}
    return config, ahead
