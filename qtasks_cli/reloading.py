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
from qtasks_cli.models import Config, JobSpec, Settings
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
        ahead = await offthread.run(_ahead, jobs, config, clock(), name="qtasks-reload")
    except Exception:  # no thread could start: the loop works them out as before
        ahead = {}
    return config, ahead


def _ahead(jobs: Mapping[str, JobSpec], config: Config, now: datetime) -> Mapping[str, Ahead]:
    """``first_fires``; and, first, the fingerprints ``timetable.apply`` compares on the
    loop, of the running jobs and of the new file's (``Config.digest`` works them out)."""
    from qtasks_cli.digests import fingerprint

    for spec in jobs.values():
        fingerprint(spec)
    _ = config.digest
    return first_fires(jobs, config.jobs, now)


# Settings a running daemon cannot take: where history lives and who imports and listens.
NEEDS_RESTART = ("path", "state", "schema", "metrics")


def settings_changes(old: Settings, new: Settings, first: Settings) -> tuple[str, bool]:
    """Words for the settings a reload changes (``"; settings.max_concurrent 1 -> 4"``, or
    ``""``) and whether one of them takes effect only at the next start (``NEEDS_RESTART``:
    compared with ``first``, the settings the daemon started with, so a file put back says
    nothing; ``schema`` only with a PostgreSQL state). Every other setting is read where it
    is used, so it applies at once (max_concurrent: ``Capacity.resize``)."""
    words: list[str] = []
    later = False
    postgres = first.state.startswith(("postgresql:", "postgres:"))
    for name in Settings.__dataclass_fields__:
        restart = name in NEEDS_RESTART
        before, after = getattr(first if restart else old, name), getattr(new, name)
        if before == after or (name == "schema" and not postgres):
            continue
        if restart:
            later = True
            words.append(f"settings.{name} changed: it takes effect at the next start")
        else:
            words.append(f"settings.{name} {_shown(before)} -> {_shown(after)}")
    return "".join(f"; {w}" for w in words), later


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return ":".join(map(str, value)) if value else "none"
    return "none" if value is None else str(value)
