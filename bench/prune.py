"""Pruning a big history: 900,000 of 1,000,000 runs, through the store API and in the daemon.

A SQLite state file is filled with 1,000,000 finished runs (50 jobs x 20,000, one attempt row
each), written by the measured qtasks' own schema. Then, on a fresh copy each time:

- ``api``: ``SqliteStore.prune(keep_runs=2000)`` in this process, timed;
- ``daemon``: ``qtasks run FILE --ui plain`` with ``keep_runs: 2000`` and the same 50 jobs
  firing every second (``benchjobs.tick``, history on): the prune starts with the daemon. It is
  timed from the daemon's ``ready`` line to its ``pruned`` line, and the lateness and missed
  fires of the 50 jobs are scored over that time (plus 2 s); the history must hold a row for
  every fire.

The file's size (with its WAL) is read before, after the prune and after the daemon's next
start. ``QTBENCH_PRUNE_TEMPLATE=FILE`` starts from a copy of FILE instead (a file an older
version made, say). Standalone (``python bench/prune.py``) or ``python bench/run.py --only prune``.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import sqlite3
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import common
import configs

JOBS = 50
PER_JOB = 20_000
KEEP = 2_000


@dataclass(kw_only=True)
class Prune:
    rows: int = JOBS * PER_JOB
    deleted_expected: int = JOBS * (PER_JOB - KEEP)
    auto_vacuum: str = ""  # of the file the measured version creates
    api_s: float | None = None
    api_deleted: int | None = None
    daemon_s: float | None = None
    daemon_deleted: int | None = None
    size_before_mb: float = 0.0
    size_after_api_mb: float | None = None
    size_after_daemon_mb: float | None = None
    size_after_restart_mb: float | None = None
    fires: int = 0
    missed: int = 0
    doubled: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    unrecorded: int = 0  # fires with a start but no history row
    other_load: float | None = None
    history: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(*, quick: bool = False) -> Prune:
    result = Prune()
    per_job = 2_000 if quick else PER_JOB
    keep = 200 if quick else KEEP
    result.rows = JOBS * per_job
    result.deleted_expected = JOBS * (per_job - keep)
    with common.workdir("prune") as work:
        template = work / "template.db"
        given = os.environ.get("QTBENCH_PRUNE_TEMPLATE")  # a file made by another version
        if given:
            shutil.copyfile(given, template)
            print(f"  using {given} ({result.rows:,} runs)", flush=True)
        else:
            print(f"  writing {result.rows:,} runs into {template}", flush=True)
            _fill(template, per_job)
        result.auto_vacuum = _auto_vacuum(template)
        result.size_before_mb = _size_mb(template)
        api = work / "api.db"
        _copy(template, api)
        began = time.monotonic()
        result.api_deleted = asyncio.run(_api_prune(api, keep))
        result.api_s = round(time.monotonic() - began, 2)
        result.size_after_api_mb = _size_mb(api)
        print(f"  store API: {result.api_deleted:,} runs in {result.api_s} s", flush=True)
        _daemon(result, work, template, keep)
    _print(result)
    return result


def _fill(path: Path, per_job: int) -> None:
    from qtasks_cli.store.sqlite import SqliteStore

    async def create() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.close()

    asyncio.run(create())
    t0 = int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp() * 1_000_000)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for j in range(JOBS):
        job = configs.job_name(j)
        runs = []
        attempts = []
        for i in range(per_job):
            at = t0 + i * 60_000_000
            run_id = f"r{j:03d}{i:07d}"
            runs.append((run_id, job, "schedule", at, at, at, at + 2_000, "succeeded", 1, '"ok"'))
            attempts.append((run_id, 1, at, at + 2_000, "succeeded"))
        conn.executemany(
            "INSERT INTO runs (run_id, job, trigger, scheduled, created, started, ended, status,"
            " attempts, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            runs,
        )
        conn.executemany(
            "INSERT INTO attempts (run_id, attempt, started, ended, status) VALUES (?, ?, ?, ?, ?)",
            attempts,
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _auto_vacuum(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        mode = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
    finally:
        conn.close()
    return {0: "none", 1: "full", 2: "incremental"}.get(mode, str(mode))


def _copy(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)


def _size_mb(path: Path) -> float:
    total = 0
    for suffix in ("", "-wal"):
        part = Path(f"{path}{suffix}")
        if part.exists():
            total += part.stat().st_size
    return round(total / 1e6, 1)


async def _api_prune(path: Path, keep: int) -> int:
    from qtasks_cli.store.sqlite import SqliteStore

    store = SqliteStore(path)
    await store.open()
    try:
        return await store.prune(keep_runs=keep, keep_days=None, now=datetime.now(timezone.utc))
    finally:
        await store.close()


def _daemon(result: Prune, work: Path, template: Path, keep: int) -> None:
    state = work / "state.db"
    _copy(template, state)
    config = configs.qtasks_ticking(work / "jobs.yaml", JOBS, schedule="* * * * * *")
    text = config.read_text().replace(
        "  max_concurrent:", f"  keep_runs: {keep}\n  max_concurrent:"
    )
    config.write_text(text)
    out = work / "starts.txt"
    log_path = work / "output.log"
    env = common.bench_env(QTBENCH_OUT=str(out))
    with log_path.open("wb") as log_file:
        proc = common.spawn(
            [common.QTASKS, "run", str(config), "--ui", "plain"],
            cwd=work,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            common.wait_until(
                lambda: "ready" in log_path.read_text(errors="replace") or proc.poll() is not None,
                timeout=120,
                what="the daemon's ready line",
            )
            other = common.OtherLoad(proc.pid)
            common.wait_until(
                lambda: _pruned(log_path) is not None or proc.poll() is not None,
                timeout=600,
                interval=0.2,
                what="the daemon's pruned line",
            )
            result.other_load = other.cores()
            time.sleep(3.0)
        finally:
            common.stop(proc, timeout=30)
    lines = log_path.read_text(errors="replace").splitlines()
    ready = _stamp(next(line for line in lines if "ready" in line))
    pruned = _pruned(log_path)
    assert pruned is not None
    result.daemon_deleted, done = pruned
    result.daemon_s = round(done - ready, 2)
    result.size_after_daemon_mb = _size_mb(state)
    _score(result, out, state, math.floor(ready) + 1, math.floor(done) + 2)
    print(f"  daemon: {result.daemon_deleted:,} runs in {result.daemon_s} s", flush=True)
    # The next start (3 s of running) compacts a file that could not give space back.
    with log_path.open("ab") as log_file:
        proc = common.spawn(
            [common.QTASKS, "run", str(config), "--ui", "plain"],
            cwd=work,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(5.0)
        finally:
            common.stop(proc, timeout=30)
    result.size_after_restart_mb = _size_mb(state)


_PRUNED = re.compile(r"pruned (\d+) (?:old run|finished run)")


def _pruned(log_path: Path) -> tuple[int, float] | None:
    for line in log_path.read_text(errors="replace").splitlines():
        found = _PRUNED.search(line)
        if found:
            return int(found.group(1)), _stamp(line)
    return None


def _stamp(line: str) -> float:
    return datetime.fromisoformat(line.split()[0]).timestamp()


def _score(result: Prune, out: Path, state: Path, start: int, end: int) -> None:
    seen: dict[tuple[str, int], list[float]] = {}
    for line in out.read_text().splitlines():
        name, stamp = line.split()
        t = float(stamp)
        second = math.floor(t)
        if start <= second < end:
            seen.setdefault((name, second), []).append(t - second)
    late: list[float] = []
    for j in range(JOBS):
        for second in range(start, end):
            starts = seen.get((configs.job_name(j), second), [])
            if not starts:
                result.missed += 1
                continue
            result.doubled += len(starts) - 1
            late.extend(starts)
    result.fires = JOBS * (end - start)
    if late:
        result.p50_ms = common.rounded(common.percentile(late, 0.5) * 1000)
        result.p99_ms = common.rounded(common.percentile(late, 0.99) * 1000)
        result.max_ms = common.rounded(max(late) * 1000)
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        low = start * 1_000_000
        high = end * 1_000_000
        recorded = {
            (job, us // 1_000_000)
            for job, us in conn.execute(
                "SELECT job, scheduled FROM runs WHERE scheduled >= ? AND scheduled < ?",
                (low, high),
            )
        }
        result.history = dict(
            conn.execute(
                "SELECT status, count(*) FROM runs WHERE scheduled >= ? AND scheduled < ?"
                " GROUP BY status",
                (low, high),
            ).fetchall()
        )
    finally:
        conn.close()
    result.unrecorded = sum(1 for key in seen if key not in recorded)


def _print(r: Prune) -> None:
    print(
        f"  prune {r.deleted_expected:,} of {r.rows:,} (file {r.auto_vacuum} auto_vacuum): "
        f"API {r.api_s} s, daemon {r.daemon_s} s; size {r.size_before_mb} MB -> API "
        f"{r.size_after_api_mb} MB, daemon {r.size_after_daemon_mb} MB, after restart "
        f"{r.size_after_restart_mb} MB; while pruning: {r.fires} fires, missed {r.missed}, "
        f"doubled {r.doubled}, unrecorded {r.unrecorded}, p50 {r.p50_ms} p99 {r.p99_ms} "
        f"max {r.max_ms} ms; history {r.history}; other load {r.other_load}"
    )


if __name__ == "__main__":
    import json
    import sys

    common.install_cleanup()
    common.OUT.mkdir(parents=True, exist_ok=True)
    found = measure(quick="--quick" in sys.argv)
    target = common.OUT / "prune.json"
    target.write_text(json.dumps(found.as_dict(), indent=2) + "\n")
    print(f"wrote {target}")
