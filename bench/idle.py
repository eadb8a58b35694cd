"""Idle cost: 100 hourly jobs, none due during the measurement; CPU seconds and wake-ups.

CPU is utime+stime of the whole process from /proc/PID/stat; wake-ups are voluntary context
switches summed over every thread (/proc/PID/task/*/status). Afterwards, and outside the CPU
window because tracing costs CPU itself, ``strace -f`` lists the waiting system calls: those that
ended by timing out are timer wake-ups, the periodic kind the target is about.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import common
import configs
from anchors import yacron_config

JOBS = 100
# The waits a scheduler idles in; what each call count means is explained in BENCHMARKS.md.
WAIT_CALLS = (
    "epoll_wait",
    "epoll_pwait",
    "select",
    "pselect6",
    "poll",
    "ppoll",
    "futex",
    "clock_nanosleep",
    "nanosleep",
)


@dataclass(kw_only=True)
class Idle:
    scheduler: str
    jobs: int = JOBS
    window_s: float = 0.0
    cpu_s: float | None = None  # from /proc/PID/stat: 10 ms ticks
    cpu_s_per_min: float | None = None  # from perf's task-clock when perf works, else ticks
    cpu_source: str = ""  # "perf task-clock" or "/proc/PID/stat ticks"
    perf_cpu_ms: float | None = None
    wakeups_per_s: float | None = None  # voluntary context switches, all threads
    involuntary_per_s: float | None = None
    threads: int | None = None
    rss_mb: float | None = None
    peak_rss_mb: float | None = None
    other_load: float | None = None
    syscalls_per_s: dict[str, float] = field(default_factory=dict)  # waits, from strace -f
    timer_wakeups_per_s: float | None = None  # waits that ended by timing out
    strace_s: float = 0.0
    settle_s: float = 0.0  # seconds between start-up and the window
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_all(*, quick: bool, include_yacron: bool = True) -> list[Idle]:
    window = 4.0 if quick else 60.0
    trace = 2.0 if quick else 10.0
    # qtasks' wake-ups are counted over five minutes (issue 16): its slowest periodic one,
    # the control thread's publication, comes once a minute.
    own_trace = 2.0 if quick else 300.0
    settle = 1.5 if quick else 3.0
    # A minute half an hour away: no job fires during the measurement.
    minute = (datetime.now(timezone.utc).minute + 30) % 60
    results = [
        _measure("qtasks", _qtasks_cmd, minute, window, own_trace, settle),
        _measure("apscheduler", _aps_cmd, minute, window, trace, settle),
    ]
    if include_yacron:
        results.append(_measure("yacron", _yacron_cmd, minute, window, trace, settle))
    return results


def _qtasks_cmd(work: Path, minute: int) -> tuple[list[str], dict[str, str], str]:
    config = configs.qtasks_ticking(work / "jobs.yaml", JOBS, schedule=f"{minute} * * * *")
    env = common.bench_env(QTBENCH_OUT=str(work / "starts.txt"))
    return [common.QTASKS, "run", str(config), "--ui", "plain"], env, "next fire"


def _aps_cmd(work: Path, minute: int) -> tuple[list[str], dict[str, str], str]:
    cmd = [
        common.anchor_python(),
        str(common.ANCHORS_DIR / "aps_lateness.py"),
        "--jobs",
        str(JOBS),
        "--hourly-minute",
        str(minute),
    ]
    env = common.bench_env(QTBENCH_OUT=str(work / "starts.txt"), PYTHONPATH=str(common.JOBS_DIR))
    return cmd, env, "ready"


def _yacron_cmd(work: Path, minute: int) -> tuple[list[str], dict[str, str], str]:
    jobs = [(configs.job_name(i), f"{minute} * * * *", "true") for i in range(JOBS)]
    config = yacron_config.write_config(work / "yacron.yaml", jobs)
    return [common.anchor_bin("yacron"), "-c", str(config)], common.bench_env(), ""


def _measure(
    name: str, build: Any, minute: int, window: float, trace: float, settle: float
) -> Idle:
    result = Idle(scheduler=name)
    with common.workdir(f"idle-{name}") as work:
        cmd, env, ready_text = build(work, minute)
        log_path = work / "output.log"
        with log_path.open("wb") as log:
            proc = common.spawn(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                if ready_text:
                    common.wait_until(
                        lambda: (
                            ready_text in log_path.read_text(errors="replace")
                            or proc.poll() is not None
                        ),
                        timeout=60,
                        what=f"{name} to start",
                    )
                # Start-up work (imports, first writes) is done once the CPU time stops moving.
                _wait_quiet(proc.pid, timeout=30)
                time.sleep(settle)
                result.settle_s = settle
                if proc.poll() is not None:
                    shown = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} exited early with {proc.returncode}: {shown}")
                pid = proc.pid
                perf = _PerfClock(pid, work)
                cpu0, sw0 = common.cpu_seconds(pid), common.context_switches(pid)
                other = common.OtherLoad(pid)
                t0 = time.monotonic()
                time.sleep(window)
                elapsed = time.monotonic() - t0
                cpu1, sw1 = common.cpu_seconds(pid), common.context_switches(pid)
                result.perf_cpu_ms = perf.stop()
                result.other_load = other.cores()
                result.window_s = round(elapsed, 1)
                result.cpu_s = round(cpu1 - cpu0, 3)
                if result.perf_cpu_ms is not None:
                    result.cpu_source = "perf task-clock"
                    result.cpu_s_per_min = round(result.perf_cpu_ms / 1000 * 60 / elapsed, 4)
                else:
                    result.cpu_source = "/proc/PID/stat ticks"
                    result.cpu_s_per_min = round((cpu1 - cpu0) * 60 / elapsed, 4)
                result.wakeups_per_s = round((sw1.voluntary - sw0.voluntary) / elapsed, 2)
                result.involuntary_per_s = round((sw1.involuntary - sw0.involuntary) / elapsed, 2)
                result.threads = sw1.threads
                result.rss_mb = round(common.rss_mb(pid), 1)
                result.peak_rss_mb = round(common.peak_rss_mb(pid), 1)
                (
                    result.syscalls_per_s,
                    result.strace_s,
                    result.timer_wakeups_per_s,
                    result.note,
                ) = _strace(pid, trace, work)
            finally:
                common.stop(proc)
    print(
        f"  {name:<12} {result.jobs} hourly jobs, {result.window_s:g}s idle: "
        f"CPU {result.cpu_s} s in ticks, {result.perf_cpu_ms} ms by perf "
        f"({result.cpu_s_per_min} s/min)  "
        f"wake-ups {result.wakeups_per_s}/s (timer {result.timer_wakeups_per_s}/s)  "
        f"threads {result.threads}  "
        f"RSS {result.rss_mb} MB  waits/s {result.syscalls_per_s}  other load {result.other_load}"
        + (f"  ({result.note})" if result.note else "")
    )
    return result


def _wait_quiet(pid: int, *, timeout: float) -> None:
    """Until the process's CPU time stops moving; at once when it has exited (the caller
    then says so, with its output)."""
    deadline = time.monotonic() + timeout
    try:
        last = common.cpu_seconds(pid)
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = common.cpu_seconds(pid)
            if now == last:
                return
            last = now
    except (FileNotFoundError, ProcessLookupError):
        return


class _PerfClock:
    """``perf stat -e task-clock`` attached to ``pid``: its CPU time to the nanosecond, where
    /proc counts 10 ms ticks. ``stop`` returns milliseconds, or None where perf cannot run."""

    def __init__(self, pid: int, work: Path) -> None:
        self._out = work / "perf.csv"
        perf = shutil.which("perf")
        self._proc = None
        if perf is not None:
            self._proc = common.spawn(
                [perf, "stat", "-x", ",", "-e", "task-clock", "-o", str(self._out), "-p", str(pid)],
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.2)  # attached before the window starts
            if self._proc.poll() is not None:
                self._proc = None

    def stop(self) -> float | None:
        if self._proc is None:
            return None
        common.stop(self._proc, sig=2, timeout=10)
        if not self._out.exists():
            return None
        for line in self._out.read_text().splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2].startswith("task-clock"):
                if fields[0] == "<not counted>":
                    return 0.0  # the process was never on a CPU while perf watched
                try:
                    return round(float(fields[0]), 3)
                except ValueError:
                    return None  # "<not supported>"
        return None


def _strace(
    pid: int, seconds: float, work: Path
) -> tuple[dict[str, float], float, float | None, str]:
    """Waiting system calls per second, and how many of them ended by timing out (a timer
    wake-up, as opposed to being woken by an event), from ``strace -f`` for ``seconds``."""
    strace = shutil.which("strace")
    if strace is None:
        return {}, 0.0, None, "strace not installed"
    out = work / "strace.txt"
    proc = common.spawn(
        [strace, "-f", "-e", f"trace={','.join(WAIT_CALLS)}", "-o", str(out), "-p", str(pid)],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(seconds)
    common.stop(proc, sig=2, timeout=10)
    if not out.exists():
        return {}, 0.0, None, "strace could not attach (ptrace not permitted?)"
    calls: Counter[str] = Counter()
    timeouts = 0
    for call in _strace_calls(out.read_text().splitlines()):
        match = re.match(r"(\w+)\((.*)\)\s+=\s+(-?\d+)(.*)$", call)
        if not match:
            continue
        name, args, ret, rest = match.groups()
        calls[name] += 1
        if name == "futex":
            timeouts += "ETIMEDOUT" in rest
        elif ret == "0" and not args.rstrip().endswith((", 0", ", -1", "NULL")):
            timeouts += 1  # a wait with a timeout that returned nothing: the timer fired
    per_s = {name: round(n / seconds, 2) for name, n in sorted(calls.items())}
    return per_s, seconds, round(timeouts / seconds, 2), ""


def _strace_calls(lines: list[str]) -> list[str]:
    """``strace -f`` lines as whole calls: a call interrupted by another thread's line is
    printed as ``... <unfinished ...>`` and later ``<... name resumed> ...``."""
    pending: dict[str, str] = {}
    calls = []
    for line in lines:
        pid, _, body = line.partition(" ")
        body = body.lstrip()
        if body.endswith("<unfinished ...>"):
            pending[pid] = body[: -len("<unfinished ...>")].rstrip()
        elif body.startswith("<..."):
            rest = body.split(">", 1)[1] if ">" in body else ""
            calls.append(pending.pop(pid, "") + rest)
        else:
            calls.append(body)
    return calls


def main(argv: list[str] | None = None) -> None:
    """``python bench/idle.py [--window S] [--label L]``: the qtasks daemon alone (no anchors
    needed), for before/after figures of one change; prints one line and the JSON."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--trace", type=float, default=10.0, help="seconds under strace")
    parser.add_argument("--label", default="qtasks")
    args = parser.parse_args(argv)
    minute = (datetime.now(timezone.utc).minute + 30) % 60
    result = _measure(args.label, _qtasks_cmd, minute, args.window, args.trace, 3.0)
    print(json.dumps(result.as_dict(), indent=2))


if __name__ == "__main__":
    main()
