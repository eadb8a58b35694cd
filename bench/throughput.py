"""Handed-over work: ``qtasks_cli.enqueue(...)`` called many times from another process against
a running daemon whose job is a coroutine that records which request it ran.

Reports the enqueue rate, the time from the first enqueue until every run is recorded as
succeeded in the history (read from the SQLite file, read-only), and checks that every request
ran exactly once: once in the job's own record, and once, succeeded, in the history.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import common
import configs


@dataclass(kw_only=True)
class Throughput:
    count: int
    enqueue_s: float | None = None
    enqueue_per_s: float | None = None
    all_succeeded_after_s: float | None = None  # from the first enqueue
    runs_per_s: float | None = None  # count / all_succeeded_after_s
    ran_once: int = 0
    ran_twice_or_more: int = 0
    never_ran: int = 0
    history_succeeded: int = 0
    history_other: dict[str, int] | None = None
    exactly_once: bool = False
    daemon_cpu_s: float | None = None
    other_load: float | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(*, quick: bool) -> Throughput:
    count = 2_000 if quick else 10_000
    result = Throughput(count=count)
    with common.workdir("throughput") as work:
        config = configs.qtasks_handed(work / "jobs.yaml")
        out = work / "ran.txt"
        state = work / "state.db"
        log_path = work / "output.log"
        env = common.bench_env(QTBENCH_OUT=str(out))
        with log_path.open("wb") as log:
            daemon = common.spawn(
                [common.QTASKS, "run", str(config), "--ui", "plain"],
                cwd=work,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                common.wait_until(
                    lambda: (
                        "runs when triggered" in log_path.read_text(errors="replace")
                        or daemon.poll() is not None
                    ),
                    timeout=60,
                    what="the qtasks daemon to start",
                )
                time.sleep(1.0)
                cpu0 = common.cpu_seconds(daemon.pid)
                other = common.OtherLoad(daemon.pid)
                ids_path = work / "run_ids.txt"
                client = common.run(
                    [
                        common.PYTHON,
                        str(common.BENCH / "enqueue_client.py"),
                        "--config",
                        str(config),
                        "--count",
                        str(count),
                        "--ids",
                        str(ids_path),
                    ],
                    timeout=600,
                    cwd=work,
                    env=env,
                )
                timing = json.loads(client.stdout.strip().splitlines()[-1])
                result.enqueue_s = round(timing["seconds"], 3)
                result.enqueue_per_s = round(count / timing["seconds"], 1)
                done_at = _wait_all_succeeded(state, count, timeout=300)
                if done_at is None:
                    result.note = "not every run was recorded as succeeded within 300 s"
                else:
                    result.all_succeeded_after_s = round(done_at - timing["first_wall"], 3)
                    result.runs_per_s = round(count / result.all_succeeded_after_s, 1)
                result.daemon_cpu_s = round(common.cpu_seconds(daemon.pid) - cpu0, 2)
                result.other_load = other.cores()
            finally:
                common.stop(daemon)
        _check(result, out, state, ids_path, count)
    print(
        f"  enqueue x{count}: {result.enqueue_per_s}/s ({result.enqueue_s} s); all succeeded "
        f"after {result.all_succeeded_after_s} s ({result.runs_per_s} runs/s); ran once "
        f"{result.ran_once}, twice+ {result.ran_twice_or_more}, never {result.never_ran}; "
        f"history succeeded {result.history_succeeded} other {result.history_other}; "
        f"daemon CPU {result.daemon_cpu_s} s; other load {result.other_load}"
        + (f"  ({result.note})" if result.note else "")
    )
    return result


def _connect_ro(state: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=10)


def _wait_all_succeeded(state: Path, count: int, *, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state.exists():
            conn = _connect_ro(state)
            try:
                done = conn.execute(
                    "SELECT count(*) FROM runs WHERE job = 'handed' AND status = 'succeeded'"
                ).fetchone()[0]
            except sqlite3.OperationalError:
                done = 0  # the schema is not there yet
            finally:
                conn.close()
            if done >= count:
                return time.time()
        time.sleep(0.02)
    return None


def _check(result: Throughput, out: Path, state: Path, ids_path: Path, count: int) -> None:
    ran = Counter(line.split()[0] for line in out.read_text().splitlines()) if out.exists() else {}
    result.ran_once = sum(1 for n in range(count) if ran.get(f"h{n}", 0) == 1)
    result.ran_twice_or_more = sum(1 for n in range(count) if ran.get(f"h{n}", 0) > 1)
    result.never_ran = sum(1 for n in range(count) if ran.get(f"h{n}", 0) == 0)
    ids = set(ids_path.read_text().split()) if ids_path.exists() else set()
    conn = _connect_ro(state)
    try:
        rows = conn.execute("SELECT run_id, status, attempts FROM runs WHERE job = 'handed'")
        statuses: Counter[str] = Counter()
        for run_id, status, attempts in rows:
            ok = run_id in ids and status == "succeeded" and attempts == 1
            statuses["succeeded" if ok else f"{status} (attempts {attempts})"] += 1
    finally:
        conn.close()
    result.history_succeeded = statuses.pop("succeeded", 0)
    result.history_other = dict(statuses)
    result.exactly_once = (
        result.ran_once == count and result.history_succeeded == count and not statuses
    )
