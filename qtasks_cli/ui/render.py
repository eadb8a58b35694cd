"""The live table as text (``render``): one row per job, the latest events, a footer. Pure: a
function of a snapshot, per-job tallies and event lines; Rich's ``Text`` only, no live display."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo

from rich.console import Group, RenderableType
from rich.text import Text

from qtasks_cli.models import JobView, RunStatus, Snapshot
from qtasks_cli.ui.humanize import ago, clock_time, countdown, elapsed, span
from qtasks_cli.ui.tally import EventLine, JobTally

MIN_EVENT_LINES = 5  # the events area keeps at least this many lines when jobs overflow


@dataclass(frozen=True, slots=True)
class _Symbols:
    ok: str
    failed: str
    more: str
    none: str
    sep: str


_UNICODE = _Symbols(ok="✓", failed="✗", more="…", none="—", sep=" · ")
_ASCII = _Symbols(ok="ok", failed="x", more="...", none="-", sep=" | ")
_EMPTY = JobTally()


_NEVER = datetime.max.replace(tzinfo=timezone.utc)


def order(snapshot: Snapshot, job_stats: Mapping[str, JobTally]) -> list[JobView]:
    """Running jobs first (oldest run first), then queued, then failing, then by next fire;
    jobs with no next fire last."""
    busy: list[tuple[int, datetime, str, JobView]] = []
    idle: list[tuple[datetime, str, JobView]] = []
    get = job_stats.get
    # Most of 1,000 jobs are idle with no statistics: keep their path short.
    for view in snapshot.jobs:
        stats = get(view.name)
        fires = view.next_fire is not None and view.enabled and not view.paused
        when = view.next_fire if fires and view.next_fire is not None else _NEVER
        if stats is None:
            if view.pending or view.running or view.waiting or view.abandoned:
                busy.append((1, _NEVER, view.name, view))
            else:
                idle.append((when, view.name, view))
        elif stats.runs:
            first = min(p.started for p in stats.runs.values())
            busy.append((0, first, view.name, view))
        elif stats.waiting or view.pending or view.running or view.waiting or view.abandoned:
            busy.append((1, _NEVER, view.name, view))
        elif stats.failing:
            busy.append((2, when, view.name, view))
        else:
            idle.append((when, view.name, view))
    # Names are unique, so the comparison never reaches the views.
    busy.sort()
    idle.sort()
    return [item[3] for item in busy] + [item[2] for item in idle]


# A cell is a list of (text, style) pieces; rows are laid out here rather than by rich.Table,
# whose layout costs ~15 ms for a screenful of rows: too much to do 4 times a second on the loop.
_Cell = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class _Column:
    header: str
    min_width: int  # how far it may shrink when the terminal is narrow
    max_width: int
    right: bool = False


def _columns(sym: _Symbols) -> tuple[_Column, ...]:
    return (
        _Column("job", 8, 32),
        _Column("schedule", 6, 30),
        _Column("next", 4, 12),
        _Column("at", 5, 16),
        _Column("state", 10, 30),
        _Column("last", 8, 40),
        _Column(sym.ok, 1, 7, right=True),
        _Column(sym.failed, 1, 7, right=True),
    )


# When a row is too wide: narrow these columns to their minimum, in this order; then drop
# whole columns (a clock time cut to "12:0…" says nothing); then narrow the rest.
_SHRINK_ORDER = (1, 5, 0)
_DROP_ORDER = (3, 1)
_LAST_RESORT = (4, 2)
_GAP = "  "


def _state(view: JobView, stats: JobTally, now: datetime, sym: _Symbols) -> _Cell:
    if stats.runs:
        progress = max(stats.runs.values(), key=lambda p: p.started)
        many = f"{len(stats.runs)}× " if len(stats.runs) > 1 else ""
        queued = " +queued" if view.pending else ""
        attempt = (
            f" {progress.attempt}/{progress.max_attempts}" if progress.max_attempts > 1 else ""
        )
        if progress.retry_at is not None and progress.retry_at > now:
            wait = math.ceil((progress.retry_at - now).total_seconds())
            return [(f"{many}retrying{attempt} in {wait}s{queued}", "yellow")]
        took = elapsed((now - progress.started).total_seconds())
        return [(f"{many}running{attempt}{sym.sep}{took}{queued}", "bold cyan")]
    return [state_cell(view, bool(stats.waiting))]


def state_cell(view: JobView, fired: bool = False) -> tuple[str, str]:
    """A job's state when none of its bodies runs, with its style. One order everywhere
    (``qtasks run``, ``status --watch``, ``status``): a run waiting for a max_concurrent slot,
    one queued behind the job's own run, a run given up on whose thread or task still runs,
    then disabled (in the file) over paused (``qtasks pause``), then idle. ``fired``: a fire
    was announced and its run has not started yet."""
    if view.waiting:
        return "waiting for a slot", "magenta"
    if view.pending or fired:
        return "queued", "magenta"
    if view.running:
        return "starting", "cyan"
    if view.abandoned:
        return "abandoned, still running", "yellow"
    if not view.enabled:
        return "disabled", "dim"
    if view.paused:
        return "paused", "yellow"
    return "idle", "dim"


def _last(stats: JobTally, now: datetime, sym: _Symbols) -> _Cell:
    if stats.last_status is None or stats.last_ended is None:
        return [(sym.none, "dim")]
    age = ago((now - stats.last_ended).total_seconds())
    if stats.last_status is RunStatus.SUCCEEDED:
        took = f", {elapsed(stats.last_duration)}" if stats.last_duration is not None else ""
        return [(sym.ok, "bold green"), (f" {age}{took}", "")]
    what = stats.last_error_type or str(stats.last_status).replace("_", " ")
    style = "yellow" if stats.last_status is RunStatus.CANCELLED else "bold red"
    return [(sym.failed, style), (f" {what} {age}", "")]


def _next(view: JobView, now: datetime, zone: tzinfo | None, sym: _Symbols) -> tuple[str, str]:
    if not view.enabled or view.paused or view.next_fire is None:  # a skipped fire is no fire
        return sym.none, ""
    return (
        countdown((view.next_fire - now).total_seconds()),
        clock_time(view.next_fire, now, zone),
    )


def _row(
    view: JobView, stats: JobTally, now: datetime, zone: tzinfo | None, sym: _Symbols
) -> list[_Cell]:
    nxt, at = _next(view, now, zone, sym)
    dim = "dim" if not view.enabled else ""
    return [
        [(view.name, "bold" if stats.runs else dim)],
        [(view.schedule, dim)],
        [(nxt, "")],
        [(at, "dim")],
        _state(view, stats, now, sym),
        _last(stats, now, sym),
        [(str(stats.successes), "")],
        [(str(stats.failures), "bold red" if stats.failures else "")],
    ]


def _widths(columns: Sequence[_Column], rows: Sequence[Sequence[_Cell]], width: int) -> list[int]:
    """Each column as wide as its widest cell (within its bounds), narrowed, then dropped
    (width 0), until a row fits ``width``."""
    widths = [max(len(c.header), 1) for c in columns]
    for row in rows:
        for i, cell in enumerate(row):
            size = sum(len(piece) for piece, _ in cell)
            if size > widths[i]:
                widths[i] = size
    widths = [min(w, c.max_width) for w, c in zip(widths, columns)]
    natural = list(widths)

    def excess() -> int:
        shown = [w for w in widths if w]
        return sum(shown) + len(_GAP) * (len(shown) - 1) - width

    for i in _SHRINK_ORDER:
        widths[i] -= max(0, min(excess(), widths[i] - columns[i].min_width))
    for i in _DROP_ORDER:
        if excess() > 0:
            widths[i] = 0
            for j in reversed(_SHRINK_ORDER):  # the dropped column's room goes back
                if widths[j]:
                    widths[j] += max(0, min(-excess(), natural[j] - widths[j]))
    for i in _LAST_RESORT:
        widths[i] -= max(0, min(excess(), widths[i] - columns[i].min_width))
    return widths


def _line(
    cells: Sequence[_Cell], widths: Sequence[int], columns: Sequence[_Column], more: str
) -> Text:
    line = Text(no_wrap=True, overflow="ellipsis")
    last = max(i for i, size in enumerate(widths) if size) if any(widths) else -1
    for i, (cell, size, column) in enumerate(zip(cells, widths, columns)):
        if not size:
            continue
        length = sum(len(piece) for piece, _ in cell)
        if length > size:  # cut, with a marker, keeping the styles of the pieces
            cut: _Cell = []
            room = max(0, size - len(more))
            for piece, style in cell:
                if room <= 0:
                    break
                cut.append((piece[:room], style))
                room -= len(piece[:room])
            cell = [*cut, (more[:size], "dim")]
            length = size
        pad = " " * (size - length)
        if column.right:
            line.append(pad)
        for piece, style in cell:
            line.append(piece, style or None)
        if not column.right and i != last:
            line.append(pad)
        if i != last:
            line.append(_GAP)
    return line


def _event_line(line: EventLine, zone: tzinfo | None) -> Text:
    style = ""
    if line.level >= logging.ERROR:
        style = "red"
    elif line.level >= logging.WARNING:
        style = "yellow"
    stamp = line.time.astimezone(zone).strftime("%H:%M:%S")
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(stamp, "dim")
    text.append(" ")
    text.append(line.text, style or None)
    return text


def _footer(snapshot: Snapshot, status: str, sym: _Symbols) -> Text:
    count = len(snapshot.jobs)
    text = Text(no_wrap=True, overflow="ellipsis")
    if status:  # first, so that a long state path never hides it
        text.append(status, "bold yellow")
        text.append(sym.sep)
    text.append(str(count), "bold")
    text.append(f" job{'s' if count != 1 else ''}{sym.sep}")
    text.append(str(snapshot.running), "bold cyan" if snapshot.running else "bold")
    text.append(f" running{sym.sep}")
    if snapshot.waiting:
        text.append(str(snapshot.waiting), "bold magenta")
        text.append(f" waiting for a slot{sym.sep}")
    text.append(str(snapshot.queued), "bold magenta" if snapshot.queued else "bold")
    text.append(f" queued{sym.sep}")
    if snapshot.abandoned:
        text.append(str(snapshot.abandoned), "bold yellow")
        text.append(f" abandoned{sym.sep}")
    text.append(f"up {span((snapshot.now - snapshot.started_at).total_seconds())}")
    text.append(f"{sym.sep}state {snapshot.state}")
    return text


def render(
    snapshot: Snapshot,
    job_stats: Mapping[str, JobTally],
    events: Sequence[EventLine],
    width: int,
    height: int,
    *,
    status: str = "",
    ascii_only: bool = False,
    zone: tzinfo | None = None,
) -> RenderableType:
    """The whole view for a ``width`` x ``height`` terminal, never taller than ``height`` and
    never wider than ``width``: the job table (with a note when rows are hidden), the latest
    ``events`` and a footer.

    Pure: the time is ``snapshot.now``; ``zone`` (default: the machine's) is where clock times
    are shown; ``status`` (``stopping``...) goes in the footer."""
    sym = _ASCII if ascii_only else _UNICODE
    now = snapshot.now
    budget = max(1, height) - 1  # the footer's line
    table_overhead = 2  # header and its rule
    wanted_events = min(len(events), MIN_EVENT_LINES)
    room = budget - table_overhead - (wanted_events + 1 if wanted_events else 0)
    jobs = order(snapshot, job_stats)
    shown = len(jobs)
    if shown > room:
        shown = max(0, room - 1)  # a line says how many are hidden
    hidden = len(jobs) - shown

    lines: list[Text] = []
    if budget >= table_overhead + 1:
        columns = _columns(sym)
        rows = [_row(v, job_stats.get(v.name, _EMPTY), now, zone, sym) for v in jobs[:shown]]
        widths = _widths(columns, rows, width)
        header: list[_Cell] = [[(c.header, "bold")] for c in columns]
        lines.append(_line(header, widths, columns, sym.more))
        rule = "-" if ascii_only else "─"
        shown_widths = [w for w in widths if w]
        total = sum(shown_widths) + len(_GAP) * (len(shown_widths) - 1)
        lines.append(Text(rule * min(width, total), "dim"))
        lines.extend(_line(row, widths, columns, sym.more) for row in rows)
        if hidden:
            more = f"{sym.more} {hidden} more job{'s' if hidden != 1 else ''} not shown"
            lines.append(
                Text(
                    f"{more} (a taller terminal shows more)",
                    "dim italic",
                    no_wrap=True,
                    overflow="ellipsis",
                )
            )
    event_room = budget - len(lines) - 1  # the events title
    if event_room > 0 and events:
        lines.append(Text("latest events", "bold dim"))
        lines.extend(_event_line(line, zone) for line in events[-event_room:])
    lines.append(_footer(snapshot, status, sym))
    return Group(*lines[-max(1, height) :])
