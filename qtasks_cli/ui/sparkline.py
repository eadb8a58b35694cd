"""``qtasks history --stats`` on a terminal: the statistics table with a duration sparkline and
a success strip of each job's latest runs, drawn with Rich. Pure functions of the rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from qtasks_cli.models import RunResult, RunStatus
from qtasks_cli.store.base import JobStats

BARS = "▁▂▃▄▅▆▇█"
ASCII_BARS = "_.-=*#"
RECENT_RUNS = 30  # runs shown per job, at most
_STRIP = {
    RunStatus.SUCCEEDED: ("■", "+", "green"),
    RunStatus.FAILED: ("■", "x", "bold red"),
    RunStatus.TIMED_OUT: ("■", "T", "bold red"),
    RunStatus.INTERRUPTED: ("■", "!", "red"),
    RunStatus.CANCELLED: ("■", "c", "yellow"),
}


def sparkline(values: Sequence[float | None], *, ascii_only: bool = False) -> str:
    """One character per value, its height scaled between the smallest and the largest
    value (all equal: the middle height); a run without a duration is a space."""
    bars = ASCII_BARS if ascii_only else BARS
    known = [v for v in values if v is not None]
    if not known:
        return " " * len(values)
    low, high = min(known), max(known)
    top = len(bars) - 1
    out = []
    for value in values:
        if value is None:
            out.append(" ")
        elif high == low:
            out.append(bars[top // 2])
        else:
            out.append(bars[round((value - low) / (high - low) * top)])
    return "".join(out)


def strip(statuses: Sequence[RunStatus], *, ascii_only: bool = False) -> list[tuple[str, str]]:
    """One (character, style) per run: green success, red failure, yellow cancelled."""
    cells = []
    for status in statuses:
        block, letter, style = _STRIP.get(status, ("·", ".", "dim"))
        cells.append((letter if ascii_only else block, style))
    return cells


def oldest_first(rows: Sequence[RunResult], count: int = RECENT_RUNS) -> list[RunResult]:
    """The latest ``count`` runs that ran (not skipped or missed) of newest-first ``rows``,
    oldest first."""
    ran = [r for r in rows if r.status in _STRIP]
    return list(reversed(ran[:count]))


def stats_table(
    stats: Sequence[JobStats],
    recent: Mapping[str, Sequence[RunResult]],
    *,
    ascii_only: bool = False,
) -> Any:
    """A Rich table: the columns of the plain statistics plus the pictures."""
    from rich.table import Table
    from rich.text import Text

    from qtasks_cli.ui.tables import _secs, _when

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in (
        ("JOB", "left"),
        ("RUNS", "right"),
        ("OK", "right"),
        ("FAILED", "right"),
        ("SUCCESS", "right"),
        ("P50", "right"),
        ("P95", "right"),
        ("LAST SUCCESS", "left"),
        ("LAST FAILURE", "left"),
        ("DURATION (oldest → newest)" if not ascii_only else "DURATION (oldest -> newest)", "left"),
        ("RESULTS", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for s in stats:
        runs = list(recent.get(s.job, ()))
        rate = "-" if s.success_rate is None else f"{s.success_rate * 100:.1f}%"
        rate_style = "green" if s.success_rate == 1 else ("red" if s.failed else "")
        spark = Text(sparkline([r.duration for r in runs], ascii_only=ascii_only), "cyan")
        results = Text()
        for char, style in strip([r.status for r in runs], ascii_only=ascii_only):
            results.append(char, style)
        table.add_row(
            s.job,
            str(s.runs),
            str(s.succeeded),
            Text(str(s.failed), "red" if s.failed else ""),
            Text(rate, rate_style),
            _secs(s.p50),
            _secs(s.p95),
            _when(s.last_success),
            _when(s.last_failure),
            spark,
            results,
        )
    return table
