"""How ``list``, ``trigger`` and ``history`` hand back what they found or ran: the job list as
text or JSON, a run's items and an enqueued run's ending line, ``trigger``'s exit code for a
run, and past runs as JSON lines, text or (on a terminal) statistics pictures."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from qtasks_cli.cli_common import fail as _fail
from qtasks_cli.errors import EXIT_FORCED, EXIT_JOB_FAILED, EXIT_OK, QtasksError

if TYPE_CHECKING:
    from qtasks_cli.events import Event
    from qtasks_cli.models import Config, RunResult


def print_job_list(
    loaded: Config, rows: list[dict[str, Any]], paused: frozenset[str], *, as_json: bool
) -> None:
    """``list``: every job of ``rows`` with its schedule, zone, state and next fire times, as
    text or JSON; a paused job no longer in the file is listed too."""
    # A pause is kept by name until resumed: one of a job no longer in the file is listed too.
    kept = sorted(paused - set(loaded.jobs))
    if as_json:
        keys = ("name", "schedule", "timezone", "enabled", "next")
        listed: list[dict[str, Any]] = [
            {**{k: r[k] for k in keys}, "timezone_source": r["timezone_source"],
             "paused": r["name"] in paused, "in_file": True}
            for r in rows
        ]  # fmt: skip
        listed += [
            {"name": name, "schedule": None, "timezone": None, "enabled": False, "next": [],
             "timezone_source": None, "paused": True, "in_file": False}
            for name in kept
        ]  # fmt: skip
        print(json.dumps(listed, indent=2))
        return
    from qtasks_cli.text import clean_line

    width = max(len(clean_line(name)) for name in [*(r["name"] for r in rows), *kept, ""])
    if loaded.zone_source:  # the machine's zone is the default: say where it was found
        zone = clean_line(f"{loaded.settings.timezone} (from {loaded.zone_source})")
        print(f"default time zone: {zone}")
    for row in rows:
        state = "enabled" if row["enabled"] else "disabled"
        if row["name"] in paused:  # the file's enabled: false wins over a pause
            state = "paused, enabled" if row["enabled"] else "disabled, also paused"
        nexts = row["next"] or ["-"]
        name, schedule = clean_line(row["name"]), clean_line(row["schedule"])
        print(f"{name:<{width}}  {schedule}  [{clean_line(row['timezone'])}, {state}]")
        for when in nexts:
            print(f"{'':<{width}}  next: {when}")
    for name in kept:
        shown = clean_line(name)
        print(f"{shown:<{width}}  not in the job file  [paused: `qtasks resume {shown}` lifts it]")


def print_run_end(row: RunResult) -> int:
    """``trigger --enqueue --wait``: the waited-for run's job, id, status and error on stderr;
    the exit code, 0 if it succeeded, else 1."""
    from qtasks_cli.text import clean_line

    print(
        clean_line(
            f"{row.job} {row.run_id} {row.status}"
            + (f": {row.error_type}: {row.error}" if row.error else "")
        ),
        file=sys.stderr,
    )
    return EXIT_OK if row.status.ok else EXIT_JOB_FAILED


def trigger_exit(result: Any) -> int:
    """``trigger``'s exit code: 0 if the run succeeded, 1 if it failed; stopped by Ctrl-C
    130, by SIGTERM 143 (128 + the signal, as a shell reports it)."""
    from qtasks_cli.models import RunStatus

    if result.status is RunStatus.CANCELLED:
        return 143 if result.error == "cancelled by SIGTERM" else EXIT_FORCED
    return EXIT_OK if result.status.ok else EXIT_JOB_FAILED


def print_items(event: Event) -> None:
    from qtasks_cli.events import Item

    if isinstance(event, Item):
        from qtasks_cli.text import clean_line

        print(clean_line(event.item), flush=True)


def print_history(
    loaded: Config,
    rows: list[Any],
    *,
    as_json: bool,
    stats: bool,
    limit: int,
    state: str | None,
) -> None:
    """``history``: ``rows`` as JSON lines, as pictures (``--stats`` on a rich terminal) or
    as a text table."""
    from qtasks_cli.ui import tables

    if as_json:
        for row in rows:
            print(json.dumps(tables.row_json(row), default=str))
    elif stats and rows and _rich_terminal():
        print_stats_pictures(loaded, rows, limit=limit, state=state)
    else:
        print(tables.stats_text(rows) if stats else tables.history_text(rows))


def _rich_terminal() -> bool:
    """stdout is a terminal that can show colours and block characters (NO_COLOR and
    TERM=dumb mean plain text)."""
    return (
        sys.stdout.isatty()
        and os.environ.get("TERM", "") not in ("", "dumb")
        and "NO_COLOR" not in os.environ
    )


def print_stats_pictures(loaded: Config, rows: list[Any], *, limit: int, state: str | None) -> None:
    """``history --stats`` on a terminal: the statistics with a duration sparkline and a
    success strip of each job's latest runs (at most RECENT_RUNS, fewer with --limit)."""
    import asyncio

    from rich.console import Console

    from qtasks_cli import api
    from qtasks_cli.ui import sparkline

    count = min(limit, sparkline.RECENT_RUNS)
    try:
        recent = asyncio.run(api.recent_runs(loaded, [r.job for r in rows], count, state=state))
    except QtasksError as exc:
        _fail(str(exc), exc.exit_code)
    console = Console()
    ascii_only = "utf" not in (console.encoding or "").lower()
    console.print(sparkline.stats_table(rows, recent, ascii_only=ascii_only))
