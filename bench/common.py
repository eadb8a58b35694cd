"""Shared plumbing for the benchmarks: child processes that never outlive the run, /proc
readings, percentiles and the places things live."""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
JOBS_DIR = BENCH / "jobs"
ANCHORS_DIR = BENCH / "anchors"
ANCHOR_VENV = BENCH / ".venv-anchors"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The Python that runs the bench is the one whose qtasks is measured.
PYTHON = sys.executable
QTASKS = str(Path(sys.executable).with_name("qtasks"))


def anchor_python() -> str:
    """The anchors' Python: bench/.venv-anchors when it exists, else this one (installed with
    the ``bench`` extra, which brings APScheduler 3)."""
    python = ANCHOR_VENV / "bin" / "python"
    return str(python) if python.exists() else PYTHON


def has_apscheduler(python: str) -> bool:
    try:
        run([python, "-c", "import apscheduler.schedulers.asyncio"], timeout=60)
    except (OSError, RuntimeError):
        return False
    return True


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages now."""
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def anchor_bin(name: str) -> str:
    return str(ANCHOR_VENV / "bin" / name)


# --- child processes -----------------------------------------------------------------------------

_children: set[subprocess.Popen[Any]] = set()
_children_lock = threading.Lock()


def _kill_all_children() -> None:
    with _children_lock:
        procs = list(_children)
    for proc in procs:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _on_signal(signum: int, _frame: Any) -> None:
    _kill_all_children()
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Kill every child process group when the bench exits, however it exits."""
    atexit.register(_kill_all_children)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)


def spawn(
    cmd: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdout: IO[Any] | int | None = subprocess.DEVNULL,
    stderr: IO[Any] | int | None = subprocess.STDOUT,
    stdin: IO[Any] | int | None = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group, remembered so it is killed at exit."""
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=env,
        stdout=stdout,
        stderr=stderr,
        stdin=stdin,
        start_new_session=True,
    )
    with _children_lock:
        _children.add(proc)
    return proc


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    """Ask ``proc`` to stop with ``sig``; SIGKILL its group if it has not exited in time."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"  ! pid {proc.pid} ignored signal {sig} for {timeout:g}s; killing it")
    _kill_group(proc)
    with _children_lock:
        _children.discard(proc)
    return proc.returncode if proc.returncode is not None else -9


def run(
    cmd: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` with a bound, captured text output and an error that shows both."""
    try:
        done = subprocess.run(
            list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(cmd)!r} did not finish within {timeout:g}s") from None
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)!r} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done


def wait_until(predicate: Any, *, timeout: float, interval: float = 0.05, what: str = "") -> None:
    """Poll ``predicate()`` until it is true; RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what or predicate!r}")
        time.sleep(interval)


def sleep_until(wall: float) -> None:
    """Sleep until the wall clock reads ``wall`` (the schedulers fire on the wall clock)."""
    while (left := wall - time.time()) > 0:
        time.sleep(min(left, 0.5))


# --- /proc ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of every thread of ``pid`` so far."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses; the fields follow the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def status_fields(pid: int) -> dict[str, str]:
    return status_fields_path(Path(f"/proc/{pid}/status"))


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) in MiB."""
    return int(status_fields(pid)["VmHWM"].split()[0]) / 1024


def rss_mb(pid: int) -> float:
    return int(status_fields(pid)["VmRSS"].split()[0]) / 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class Switches:
    voluntary: int
    involuntary: int
    threads: int


def context_switches(pid: int) -> Switches:
    """Context switches summed over every thread (``/proc/PID/status`` alone counts only the
    main thread)."""
    voluntary = involuntary = threads = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = status_fields_path(task / "status")
        except FileNotFoundError:
            continue  # the thread ended between listing and reading
        voluntary += int(fields["voluntary_ctxt_switches"])
        involuntary += int(fields["nonvoluntary_ctxt_switches"])
        threads += 1
    return Switches(voluntary=voluntary, involuntary=involuntary, threads=threads)


def status_fields_path(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


# --- statistics ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks; ``values`` need not be sorted."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)


def rounded(value: float | None, digits: int = 2) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, digits)


# --- files ---------------------------------------------------------------------------------------


def fresh_dir(name: str) -> Path:
    """An empty folder under bench/out/work for one measurement, left behind for inspection."""
    path = OUT / "work" / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


@contextlib.contextmanager
def workdir(name: str) -> Iterator[Path]:
    yield fresh_dir(name)


def bench_env(**extra: str) -> dict[str, str]:
    """The environment for children: ours, without anything that would change their output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QTASKS_", "QTBENCH_"))}
    # Startup is measured as a user sees it: with the byte-code cache written and used.
    for name in ("PYTHONSTARTUP", "PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME"):
        env.pop(name, None)
    env.update(extra)
    return env


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    busy = sum(values[:8]) - idle  # guest time is already inside user time
    return busy / CLK_TCK


class OtherLoad:
    """Measures how many cores processes other than ``pid`` kept busy over a window, so a
    figure taken while something else ran on the machine says so."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._wall = time.monotonic()
        self._busy = machine_busy_seconds()
        self._own = cpu_seconds(pid)

    def cores(self) -> float:
        wall = time.monotonic() - self._wall
        busy = machine_busy_seconds() - self._busy
        own = cpu_seconds(self.pid) - self._own
        return round(max(busy - own, 0.0) / wall, 2) if wall > 0 else 0.0
