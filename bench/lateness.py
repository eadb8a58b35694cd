"""Fire lateness, and peak memory after the same firing: N jobs firing every second.

Each job is ``benchjobs.tick``, a coroutine that writes ``name time.time()`` the moment it
starts. A start belongs to the second it falls in (every job fires on every whole second), so its
lateness is ``start - floor(start)``; a second of the measured window with no start of a job is a
miss, a second with two is a double. A start more than a second late therefore shows up as a
miss plus a double, never as a quietly small lateness.

``measure_all`` runs, for N = 1, 100 and 1,000, four programs one after the other, and the
whole sequence three times (interleaved, so a quiet or a busy minute of the machine falls on
every program alike): the asyncio floor (``anchors/floor_lateness.py``), APScheduler 3
``AsyncIOScheduler`` (``anchors/aps_lateness.py``), and the installed ``qtasks run FILE --ui
plain`` with its history in SQLite and in PostgreSQL (``$QTASKS_BENCH_POSTGRES`` or the local
server), its log going to a file. Rows of ``round`` 0 pool the three rounds' starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import pty
import secrets
import sqlite3
import struct
import subprocess
import termios
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import common
import configs

# The programs of one round, in the order they run. With $QTBENCH_BASELINE naming another
# installed ``qtasks`` (an older version, say), it runs in every round too, as "baseline", so
# that before and after share the same minutes of the machine.
PROGRAMS = ("floor", "apscheduler", "qtasks/sqlite", "qtasks/postgres")
BASELINE_PROGRAMS = ("baseline/sqlite", "baseline/postgres")


@dataclass(kw_only=True)
class Lateness:
    scheduler: str  # "floor", "apscheduler", "qtasks", "baseline" (qtasks of $QTBENCH_BASELINE)
    jobs: int
    ui: str = ""  # qtasks only: plain or live
    store: str = ""  # qtasks only: sqlite or postgres
    round: int = 0  # 1..3; 0: the rounds pooled
    available: bool = True
    note: str = ""
    window_s: float = 0.0
    firing_s: float = 0.0  # seconds of firing before the peak RSS reading
    starts: int = 0
    expected: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    p99_rounds_ms: list[float | None] = field(default_factory=list)  # pooled rows: per round
    missed: int = 0
    doubled: int = 0
    first_fire_after_s: float | None = None  # from launch to the first job start
    cpu_s_per_s: float | None = None  # CPU seconds per wall second while firing
    other_load: float | None = None  # cores other processes kept busy during the window
    load_average: float | None = None  # 1-minute load average at the window's start
    peak_rss_mb: float | None = None
    history: dict[str, int] = field(default_factory=dict)  # qtasks: runs per status

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_all(
    *, quick: bool, counts: Sequence[int] = (1, 100, 1000), rounds: int | None = None
) -> list[Lateness]:
    """Every program at every N, interleaved, ``rounds`` times (3; 1 when quick); the pooled
    rows (round 0) first, then each run's own row."""
    window = 3.0 if quick else 10.0
    warmup = 1.0 if quick else 3.0
    rounds = rounds or (1 if quick else 3)
    url = postgres_url()
    unreachable = _pg_unreachable(url)
    runs: list[Lateness] = []
    samples: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    baseline = os.environ.get("QTBENCH_BASELINE")
    programs = PROGRAMS + (BASELINE_PROGRAMS if baseline else ())
    for number in range(1, rounds + 1):
        print(f"  -- round {number} of {rounds}", flush=True)
        for count in counts:
            for program in programs:
                scheduler, _, store = program.partition("/")
                if scheduler == "floor":
                    row, values = measure_floor(count, window=window, warmup=warmup)
                elif scheduler == "apscheduler":
                    row, values = measure_aps(count, window=window, warmup=warmup)
                elif store == "postgres" and unreachable:
                    row, values = Lateness(scheduler=scheduler, jobs=count, store=store), []
                    row.available = False
                    row.note = f"not available: PostgreSQL cannot be reached ({unreachable})"
                else:
                    row, values = measure_qtasks(
                        count,
                        ui="plain",
                        window=window,
                        warmup=warmup,
                        store=store,
                        url=url,
                        command=baseline if scheduler == "baseline" else common.QTASKS,
                    )
                    row.scheduler = scheduler
                row.round = number
                runs.append(row)
                samples[(row.scheduler, row.store, count)].extend(values)
    return _pooled(runs, samples) + runs


def postgres_url() -> str:
    return os.environ.get("QTASKS_BENCH_POSTGRES") or "postgresql://postgres@127.0.0.1:5432/test"


def _pg_unreachable(url: str) -> str:
    import cluster

    return cluster._unreachable(url)


def _pooled(
    runs: list[Lateness], samples: dict[tuple[str, str, int], list[float]]
) -> list[Lateness]:
    pooled: list[Lateness] = []
    for (scheduler, store, count), values in samples.items():
        rows = [r for r in runs if (r.scheduler, r.store, r.jobs) == (scheduler, store, count)]
        live = [r for r in rows if r.available]
        row = Lateness(scheduler=scheduler, jobs=count, store=store, ui=rows[0].ui)
        row.available = bool(live)
        row.note = "" if live else rows[0].note
        row.p99_rounds_ms = [r.p99_ms for r in rows]
        row.window_s = sum(r.window_s for r in live)
        row.expected = sum(r.expected for r in live)
        row.starts = len(values)
        row.missed = sum(r.missed for r in live)
        row.doubled = sum(r.doubled for r in live)
        if values:
            row.p50_ms = common.rounded(common.percentile(values, 0.5) * 1000)
            row.p99_ms = common.rounded(common.percentile(values, 0.99) * 1000)
            row.max_ms = common.rounded(max(values) * 1000)

        def mean(key: str, rows: list[Lateness] = live) -> float | None:
            found = [getattr(r, key) for r in rows if getattr(r, key) is not None]
            return round(sum(found) / len(found), 3) if found else None

        row.first_fire_after_s = mean("first_fire_after_s")
        row.cpu_s_per_s = mean("cpu_s_per_s")
        row.other_load = mean("other_load")
        row.load_average = mean("load_average")
        peaks = [r.peak_rss_mb for r in live if r.peak_rss_mb is not None]
        row.peak_rss_mb = max(peaks) if peaks else None
        row.firing_s = max((r.firing_s for r in live), default=0.0)
        history: dict[str, int] = defaultdict(int)
        for r in live:
            for status, n in r.history.items():
                history[status] += n
        row.history = dict(history)
        pooled.append(row)
        _print(row)
    return pooled


def live_view_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("qtasks_cli.ui.live") is not None


def measure_qtasks(
    count: int,
    *,
    ui: str,
    window: float,
    warmup: float,
    store: str = "sqlite",
    url: str = "",
    command: str = common.QTASKS,
) -> tuple[Lateness, list[float]]:
    result = Lateness(scheduler="qtasks", jobs=count, ui=ui, store=store)
    if ui == "live" and not live_view_available():
        result.available = False
        result.note = "not available: qtasks_cli/ui/live.py does not exist in this checkout"
        print(f"  qtasks N={count} --ui live: {result.note}")
        return result, []
    schema = f"qtbench_{secrets.token_hex(6)}" if store == "postgres" else None
    with common.workdir(f"lateness-qtasks-{store}-{ui}-{count}") as work, _dropped(url, schema):
        config = configs.qtasks_ticking(
            work / "jobs.yaml", count, schedule="* * * * * *", schema=schema
        )
        out = work / "starts.txt"
        cmd = [command, "run", str(config), "--ui", ui]
        extra = {"QTBENCH_OUT": str(out)}
        if schema is not None:
            extra["QTASKS_STATE"] = url
        env = common.bench_env(**extra)
        if ui == "live":
            launch: Callable[[], _Running] = lambda: _PtyRunning(cmd, work, env)  # noqa: E731
        else:
            launch = lambda: _PipeRunning(cmd, work, env)  # noqa: E731
        values = _observe(result, launch, out, count, window=window, warmup=warmup)
        if schema is None:
            result.history = _qtasks_history(work / "state.db")
        else:
            result.history = _pg_history(url, schema)
    _print(result)
    return result, values


@contextlib.contextmanager
def _dropped(url: str, schema: str | None) -> Iterator[None]:
    if schema is None:
        yield
        return
    import cluster

    with cluster._schema_dropped(url, schema):
        yield


def _pg_history(url: str, schema: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute(
            f'SELECT status, count(*) FROM "{schema}".runs GROUP BY status'
        ).fetchall()
    return {status: n for status, n in rows}


def measure_aps(count: int, *, window: float, warmup: float) -> tuple[Lateness, list[float]]:
    result = Lateness(scheduler="apscheduler", jobs=count)
    with common.workdir(f"lateness-aps-{count}") as work:
        out = work / "starts.txt"
        cmd = [
            common.anchor_python(),
            str(common.ANCHORS_DIR / "aps_lateness.py"),
            "--jobs",
            str(count),
            "--every-second",
        ]
        env = common.bench_env(QTBENCH_OUT=str(out), PYTHONPATH=str(common.JOBS_DIR))
        values = _observe(
            result,
            lambda: _PipeRunning(cmd, work, env),
            out,
            count,
            window=window,
            warmup=warmup,
        )
    _print(result)
    return result, values


def measure_floor(count: int, *, window: float, warmup: float) -> tuple[Lateness, list[float]]:
    result = Lateness(scheduler="floor", jobs=count)
    with common.workdir(f"lateness-floor-{count}") as work:
        out = work / "starts.txt"
        cmd = [common.PYTHON, str(common.ANCHORS_DIR / "floor_lateness.py"), "--jobs", str(count)]
        env = common.bench_env(QTBENCH_OUT=str(out), PYTHONPATH=str(common.JOBS_DIR))
        values = _observe(
            result,
            lambda: _PipeRunning(cmd, work, env),
            out,
            count,
            window=window,
            warmup=warmup,
        )
    _print(result)
    return result, values


# --- running a scheduler -------------------------------------------------------------------------


class _Running:
    proc: subprocess.Popen[bytes]

    def close(self) -> None:
        """Stop gracefully (SIGTERM), then SIGKILL what is left."""
        common.stop(self.proc, timeout=30)


class _PipeRunning(_Running):
    """Output to a log file, as under a service manager."""

    def __init__(self, cmd: list[str], work: Path, env: dict[str, str]) -> None:
        self._log = (work / "output.log").open("wb")
        self.proc = common.spawn(cmd, cwd=work, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def close(self) -> None:
        super().close()
        self._log.close()


class _PtyRunning(_Running):
    """Inside a 160x50 pseudo-terminal whose output is read (and kept, last 1 MB) as fast as
    it comes, like a terminal emulator would."""

    def __init__(self, cmd: list[str], work: Path, env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        env = {**env, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"}
        self.proc = common.spawn(cmd, cwd=work, env=env, stdout=slave, stderr=slave, stdin=slave)
        os.close(slave)
        self._master = master
        self.bytes_read = 0
        self._tail = bytearray()
        self._path = work / "terminal.bin"
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:
                return  # EIO: the child side closed
            if not chunk:
                return
            self.bytes_read += len(chunk)
            self._tail += chunk
            if len(self._tail) > 2_000_000:
                del self._tail[:-1_000_000]

    def close(self) -> None:
        super().close()
        self._reader.join(timeout=5)
        with contextlib.suppress(OSError):
            os.close(self._master)
        self._path.write_bytes(bytes(self._tail[-1_000_000:]))


def _observe(
    result: Lateness,
    launch: Callable[[], _Running],
    out: Path,
    count: int,
    *,
    window: float,
    warmup: float,
) -> list[float]:
    """Launch, wait for the first start, measure ``window`` seconds after ``warmup``; score the
    starts into ``result`` and return the lateness of each (seconds)."""
    launched = time.time()
    running = launch()
    pid = running.proc.pid
    try:
        common.wait_until(
            lambda: (out.exists() and out.stat().st_size > 0) or running.proc.poll() is not None,
            timeout=180,
            what=f"the first start of {result.scheduler} with {count} jobs",
        )
        if running.proc.poll() is not None:
            raise RuntimeError(f"{result.scheduler} exited early with {running.proc.returncode}")
        first = _first_start(out)
        result.first_fire_after_s = round(first - launched, 3)
        start = math.floor(time.time()) + 1 + math.ceil(warmup)
        end = start + int(window)
        common.sleep_until(start)
        cpu_before = common.cpu_seconds(pid)
        other = common.OtherLoad(pid)
        result.load_average = common.load_average()[0]
        common.sleep_until(end)
        cpu_after = common.cpu_seconds(pid)
        result.other_load = other.cores()
        # Let the last second's starts land before reading them.
        common.sleep_until(end + 1.0)
        result.peak_rss_mb = round(common.peak_rss_mb(pid), 1)
        result.firing_s = round(time.time() - first, 1)
        result.cpu_s_per_s = round((cpu_after - cpu_before) / (end - start), 3)
    finally:
        running.close()
    return _score(result, out, count, start, end)


def _first_start(out: Path) -> float:
    with out.open() as f:
        return float(f.readline().split()[1])


def _score(result: Lateness, out: Path, count: int, start: int, end: int) -> list[float]:
    per_job: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line in out.read_text().splitlines():
        name, stamp = line.split()
        t = float(stamp)
        second = math.floor(t)
        if start <= second < end:
            per_job[name][second].append(t - second)
    lateness: list[float] = []
    missed = doubled = 0
    for i in range(count):
        seconds = per_job.get(configs.job_name(i), {})
        for second in range(start, end):
            starts = seconds.get(second, [])
            if not starts:
                missed += 1
                continue
            doubled += len(starts) - 1
            lateness.extend(starts)
    result.window_s = end - start
    result.expected = count * (end - start)
    result.starts = len(lateness)
    result.missed = missed
    result.doubled = doubled
    if lateness:
        result.p50_ms = common.rounded(common.percentile(lateness, 0.5) * 1000)
        result.p99_ms = common.rounded(common.percentile(lateness, 0.99) * 1000)
        result.max_ms = common.rounded(max(lateness) * 1000)
    return lateness


def _qtasks_history(state: Path) -> dict[str, int]:
    if not state.exists():
        return {}
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
    finally:
        conn.close()
    return {status: n for status, n in rows}


def _print(r: Lateness) -> None:
    label = f"{r.scheduler}{'/' + r.store if r.store else ''} N={r.jobs}"
    label += f" round {r.round}" if r.round else " pooled"
    if not r.available:
        print(f"  {label:<30} {r.note}")
        return
    print(
        f"  {label:<30} p50 {r.p50_ms} ms  p99 {r.p99_ms} ms  max {r.max_ms} ms  "
        f"starts {r.starts}/{r.expected}  missed {r.missed}  doubled {r.doubled}  "
        f"cpu {r.cpu_s_per_s} s/s  peak RSS {r.peak_rss_mb} MB  other load {r.other_load}  "
        f"load {r.load_average}" + (f"  history {r.history}" if r.history else "")
    )
