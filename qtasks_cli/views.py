"""What the daemon shows of its jobs: each job's view for the snapshot (the live table,
``status``, the metrics), and each job's plan line at the start.

Views are pure readings of the job table and of who holds what (occupancy.py); building
1,000 views (and describing 1,000 schedules) on every redraw of the live table would cost the
loop milliseconds, so a job's view is reused while nothing in it changed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtasks_cli.events import Notice
from qtasks_cli.models import JobView

if TYPE_CHECKING:
    from qtasks_cli.occupancy import Occupancy
    from qtasks_cli.timetable import JobState


class JobViews:
    """Each job's ``JobView``, cached while its inputs are the same."""

    def __init__(self, jobs: dict[str, JobState], occupancy: Occupancy) -> None:
        self.jobs = jobs  # the supervisor's table, shared
        self._occupancy = occupancy
        self._views: dict[str, tuple[Any, JobView]] = {}  # name -> (its spec, its view)
        self._words: dict[int, tuple[Any, str]] = {}  # id(schedule) -> (schedule, words)

    def views(
        self, *, paused: Collection[str], abandoned: Mapping[str, str]
    ) -> tuple[JobView, ...]:
        """Every job's view; ``abandoned``: run id -> job of runs given up on that still run."""
        counts: dict[str, int] = {}
        for job in abandoned.values():
            counts[job] = counts.get(job, 0) + 1
        return tuple(
            self._view(name, state, name in paused, counts.get(name, 0))
            for name, state in self.jobs.items()
        )

    def _view(self, name: str, state: JobState, paused: bool, abandoned: int) -> JobView:
        spec = state.spec
        held = self._occupancy.of(name)
        cached = self._views.get(name)
        if cached is not None and cached[0] is spec:
            view = cached[1]  # the key is the view's own fields (a tuple each: 1 MB at 10,000)
            if (
                view.next_fire == state.next_fire
                and view.running == held.running - held.waiting
                and view.waiting == held.waiting
                and view.pending == len(state.pending)
                and view.paused == paused
                and view.abandoned == abandoned
            ):
                return view
            words = view.schedule
        elif spec.schedule is None:
            words = "only when triggered"
        else:  # jobs sharing a schedule object share its words: 10,000 jobs, one description
            kept = self._words.get(id(spec.schedule))
            if kept is None or kept[0] is not spec.schedule:
                if len(self._words) > 2 * len(self.jobs):
                    self._words.clear()
                kept = self._words[id(spec.schedule)] = (spec.schedule, spec.schedule.describe())
            words = kept[1]
        view = JobView(
            name=name,
            schedule=words,
            enabled=spec.enabled,
            next_fire=state.next_fire,
            running=held.running - held.waiting,
            pending=len(state.pending),
            max_attempts=spec.retry.attempts,
            paused=paused,
            waiting=held.waiting,
            abandoned=abandoned,
        )
        if len(self._views) > 2 * len(self.jobs):  # jobs removed by reloads
            self._views.clear()
        self._views[name] = (spec, view)
        return view


# Jobs whose plan ("next fire ...") is logged one line each at start; the rest in one line.
PLAN_LINES = 100


def plan_notices(states: list[JobState], clock: Callable[[], datetime], path: Path) -> list[Notice]:
    """The start's plan lines: one per job for the first PLAN_LINES jobs, then one line for
    the rest (ten thousand plan lines would be noise, and their records the start-up's
    largest use of memory)."""
    words: dict[int, str] = {}  # jobs sharing a schedule share its description
    notices = [
        Notice(time=clock(), job=state.spec.name, message=plan(state, words))
        for state in states[:PLAN_LINES]
    ]
    if len(states) > PLAN_LINES:
        notices.append(
            Notice(
                time=clock(),
                message=f"and {len(states) - PLAN_LINES:,} more jobs scheduled "
                f"(`qtasks list {path}` shows every next fire)",
            )
        )
    return notices


def plan(state: JobState, words: dict[int, str]) -> str:
    """The job's plan at the start (``next fire <local time> (<schedule in words>)``);
    ``words`` memoises descriptions, shared by the jobs that share a schedule object."""
    spec = state.spec
    if not spec.enabled:
        return "disabled"
    schedule = spec.schedule
    if schedule is None:
        return "no schedule; runs when triggered"
    described = words.get(id(schedule))
    if described is None:
        described = words[id(schedule)] = schedule.describe()
    if state.next_fire is None:
        return f"no further fires ({described})"
    from qtasks_cli.zones import get_zone

    local = state.next_fire.astimezone(get_zone(spec.timezone))
    return f"next fire {local.isoformat()} ({described})"
