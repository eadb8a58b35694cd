"""Job files for qtasks and yacron, written the way a user would write them."""

from __future__ import annotations

from pathlib import Path

from common import JOBS_DIR


def job_name(i: int) -> str:
    return f"j{i:04d}"


def qtasks_ticking(
    path: Path,
    count: int,
    *,
    schedule: str,
    max_concurrent: int = 2000,
    schema: str | None = None,
) -> Path:
    """``count`` jobs running ``benchjobs:tick`` on ``schedule``; history in ``state.db``
    beside the file (as a user runs it), or in PostgreSQL schema ``schema`` (the server from
    ``$QTASKS_STATE``)."""
    lines = [
        "settings:",
        f"  path: [{str(JOBS_DIR)!r}]",
        "  state: state.db",
        "  timezone: UTC",
        f"  max_concurrent: {max_concurrent}",
        *([f"  schema: {schema}"] if schema else []),
        "jobs:",
    ]
    for i in range(count):
        name = job_name(i)
        lines += [
            f"  {name}:",
            "    entrypoint: benchjobs:tick",
            f"    schedule: {schedule!r}",
            f"    kwargs: {{name: {name}}}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def qtasks_handed(path: Path, *, max_concurrent: int = 2000) -> Path:
    """One job with no schedule that runs only when work is handed to it."""
    path.write_text(
        "settings:\n"
        f"  path: [{str(JOBS_DIR)!r}]\n"
        "  state: state.db\n"
        "  timezone: UTC\n"
        f"  max_concurrent: {max_concurrent}\n"
        "jobs:\n"
        "  handed:\n"
        "    entrypoint: benchjobs:handed\n"
    )
    return path


def qtasks_cluster(path: Path, count: int, *, schema: str, max_concurrent: int = 2000) -> Path:
    """``count`` jobs running ``benchjobs:tick`` every second plus ``stamp``, a job with no
    schedule, for nodes sharing the PostgreSQL schema ``schema`` (the state comes from
    ``$QTASKS_STATE``)."""
    lines = [
        "settings:",
        f"  path: [{str(JOBS_DIR)!r}]",
        "  timezone: UTC",
        f"  max_concurrent: {max_concurrent}",
        f"  schema: {schema}",
        "jobs:",
        "  stamp:",
        "    entrypoint: benchjobs:stamp",
    ]
    for i in range(count):
        name = job_name(i)
        lines += [
            f"  {name}:",
            "    entrypoint: benchjobs:tick",
            "    schedule: '* * * * * *'",
            f"    kwargs: {{name: {name}}}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path
