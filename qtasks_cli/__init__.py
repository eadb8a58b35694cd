"""qtasks: a command-line scheduler for Python functions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["__version__", "enqueue"]


def enqueue(job: str, *args: Any, config: str | Path | None = None, **kwargs: Any) -> str:
    """Hand a run of ``job`` to the daemon through the store; return its run id at once.

    Every keyword but ``config`` goes to the job (so a job may take ``state``, say)."""
    from qtasks_cli import api

    return api.enqueue_loaded(api.load_cached(config), job, args, kwargs)
