"""Work over the whole history in SQLite: ``history --stats`` percentiles are computed by
SQLite (4 rows a job come back, not a row per run) and must equal the linear interpolation
between closest ranks over every finished run's duration; a prune deletes in chunks and
gives the space back."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtasks_cli.models import RunResult, RunStatus, TriggerKind
from qtasks_cli.store import sqlite_prune
from qtasks_cli.store.sqlite import SqliteStore

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
FINISHED = [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED]


def reference(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


runs = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.integers(min_value=0, max_value=10**9),  # microseconds
        st.sampled_from(FINISHED),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(runs=runs)
def test_percentiles_match_the_closest_ranks_interpolation(
    runs: list[tuple[str, int, RunStatus]],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "state.db"
        found = asyncio.run(_stats(path, runs))
    for job in {job for job, _, _ in runs}:
        durations = [us / 1e6 for name, us, _ in runs if name == job]
        stats = found[job]
        assert stats.runs == len(durations)
        for got, q in ((stats.p50, 0.5), (stats.p95, 0.95)):
            want = reference(durations, q)
            assert want is not None and got is not None
            assert abs(got - want) <= 1e-9 * max(1.0, abs(want))


async def _stats(path: Path, runs: list[tuple[str, int, RunStatus]]) -> dict[str, object]:
    store = SqliteStore(path)
    await store.open()
    try:
        for i, (job, micros, status) in enumerate(runs):
            started = T0 + timedelta(minutes=i)
            await store.add_run(
                RunResult(
                    job=job,
                    run_id=f"r{i}",
                    trigger=TriggerKind.MANUAL,
                    scheduled=None,
                    started=started,
                    ended=started + timedelta(microseconds=micros),
                    attempts=1,
                    status=status,
                )
            )
        return {s.job: s for s in await store.stats()}
    finally:
        await store.close()


def test_a_new_state_file_gives_pruned_space_back_as_it_goes(tmp_path: Path) -> None:
    async def make() -> None:
        store = SqliteStore(tmp_path / "state.db")
        await store.open()
        await store.close()

    asyncio.run(make())
    conn = sqlite3.connect(tmp_path / "state.db")
    try:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    finally:
        conn.close()


def test_a_prune_in_many_chunks_keeps_the_newest_and_shrinks_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_prune, "CHUNK", 7)
    monkeypatch.setattr(sqlite_prune, "VACUUM_PAGES", 3)
    path = tmp_path / "state.db"

    async def body() -> tuple[int, list[str], int, int]:
        store = SqliteStore(path)
        await store.open()
        try:
            for i in range(300):
                started = T0 + timedelta(minutes=i)
                await store.add_run(
                    RunResult(
                        job="a" if i % 2 else "b",
                        run_id=f"r{i:03d}",
                        trigger=TriggerKind.MANUAL,
                        scheduled=None,
                        started=started,
                        ended=started + timedelta(seconds=1),
                        attempts=1,
                        status=RunStatus.SUCCEEDED,
                        error="x" * 2000,  # enough to fill pages worth giving back
                    )
                )
            before = path.stat().st_size + _wal(path)
            deleted = await store.prune(keep_runs=5, keep_days=None, now=T0 + timedelta(days=1))
            left = [row.run_id for row in await store.history(limit=1000)]
            return deleted, left, before, path.stat().st_size + _wal(path)
        finally:
            await store.close()

    deleted, left, before, after = asyncio.run(body())
    assert deleted == 290
    assert sorted(left) == sorted([f"r{i:03d}" for i in range(290, 300)])
    assert after < before / 2


def _wal(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0
