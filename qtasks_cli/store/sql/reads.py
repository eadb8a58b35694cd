"""The reads both stores make: one run, history, attempts, last fires, and ``stats`` as
a generator of queries (``dialect.drive``)."""

from __future__ import annotations

from collections.abc import Generator
from datetime import datetime
from typing import Any

from qtasks_cli.models import RunResult, RunStatus
from qtasks_cli.store.base import JobStats, job_stats
from qtasks_cli.store.sql.dialect import ORDER_NEWEST, TIMED, TIMED_STATUSES, Dialect, Query
from qtasks_cli.store.sql.rows import row_to_run, run_columns

_QUANTILES = (0.5, 0.95)


def run_query(d: Dialect, run_id: str) -> Query:
    return f"SELECT {run_columns(d)} FROM {d.table('runs')} WHERE run_id = {d.mark}", (run_id,)


def run_steps(d: Dialect, run_id: str) -> Generator[Query, list[Any], RunResult | None]:
    """One run by id, decoded where it is read (SQLite: in the store's thread)."""
    rows = yield run_query(d, run_id)
    return row_to_run(d, rows[0]) if rows else None


def history_query(d: Dialect, job: str | None, status: RunStatus | None, limit: int) -> Query:
    """Newest first (by start, else scheduled, else created time)."""
    where: list[str] = []
    params: list[Any] = []
    if job is not None:
        where.append(f"job = {d.mark}")
        params.append(job)
    if status is not None:
        where.append(f"status = {d.mark}")
        params.append(status.value)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    sql = f"SELECT {run_columns(d)} FROM {d.table('runs')} {clause}{ORDER_NEWEST} LIMIT {d.mark}"
    return sql, (*params, limit)


def attempts_query(d: Dialect, run_id: str) -> Query:
    return (
        "SELECT attempt, started, ended, status, error_type, error"
        f" FROM {d.table('attempts')} WHERE run_id = {d.mark} ORDER BY attempt",
        (run_id,),
    )


def last_fired_sql(d: Dialect) -> str:
    return f"SELECT job, last_scheduled, schedule_key FROM {d.table('jobs')}"


def stats_steps(d: Dialect, job: str | None) -> Generator[Query, list[Any], list[JobStats]]:
    """Per job (sorted by name): counts, p50/p95 durations, last success and failure; a job
    named explicitly but never run gets a row of zeros. Percentiles (seconds; linear
    interpolation between closest ranks, numpy's default) each come from the two values at
    their ranks, read in order from the runs_duration index (from whichever end is nearer):
    no row per run is read."""
    runs = d.table("runs")
    where, params = (f"WHERE job = {d.mark}", (job,)) if job is not None else ("", ())
    counts: dict[str, dict[str, tuple[int, datetime | None]]] = {}
    timed_count = ", count(ended - started)" if d.timed_in_counts else ""
    rows = yield (
        f"SELECT job, status, count(*), max(ended){timed_count} FROM {runs} {where}"
        " GROUP BY job, status",
        params,
    )
    timed: dict[str, int] = {}
    for name, status, count, last_ended, *with_times in rows:
        counts.setdefault(name, {})[status] = (count, d.opt_out(last_ended))
        if with_times and with_times[0] and status in TIMED_STATUSES:
            timed[name] = timed.get(name, 0) + with_times[0]
    if not d.timed_in_counts:
        and_job = f"AND job = {d.mark}" if job is not None else ""
        found_timed = yield (
            f"SELECT job, count(*) FROM {runs} WHERE {TIMED} {and_job} GROUP BY job",
            params,
        )
        timed = dict(found_timed)
    percentiles: dict[str, tuple[float | None, float | None]] = {}
    for name, count in timed.items():
        found: list[float | None] = []
        for q in _QUANTILES:
            pos = q * (count - 1)
            low = int(pos)
            # Walk in from the nearer end: p95 passes 5% of a job's runs, not 95% of them.
            down = low > count - 1 - low and low + 1 < count
            values = yield (
                f"SELECT {d.duration} FROM {runs} WHERE job = {d.mark} AND {TIMED}"
                f" ORDER BY ended - started{' DESC' if down else ''} LIMIT 2 OFFSET {d.mark}",
                (name, count - 2 - low if down else low),
            )
            if not values:
                found.append(None)
                continue
            if down:  # the values at ranks low + 1 and low, in that order
                values = values[::-1]
            first = d.seconds(values[0][0])
            second = d.seconds(values[1][0]) if len(values) > 1 else first
            found.append(first + (second - first) * (pos - low))
        percentiles[name] = (found[0], found[1])
    if job is not None:
        counts.setdefault(job, {})
    return [
        job_stats(name, counts[name], *percentiles.get(name, (None, None)))
        for name in sorted(counts)
    ]
