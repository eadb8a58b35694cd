"""qtasks: a command-line scheduler for Python functions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["__version__", "current_run", "enqueue"]


def current_run() -> Any:
    """The ``RunInfo`` (job, run_id, trigger, scheduled) of the run calling this, or None
    outside a run; see ``qtasks_cli.context``."""
    from qtasks_cli.context import current_run as _current_run

    return _current_run()


def enqueue(job: str, /, *args: Any, config: str | Path | None = None, **kwargs: Any) -> str:
    """Hand a run of ``job`` to the daemon through the store; return its run id at once.

    Every keyword but ``config`` goes to the job (so a job may take ``state``, say)."""
    from qtasks_cli import api

    return api.enqueue_loaded(api.load_cached(config), job, args, kwargs)
