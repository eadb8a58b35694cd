"""Where a qtasks fire spends its time: a diagnostic, not part of ``run.py``.

Runs the same daemon ``qtasks run FILE --ui plain`` runs (config, SQLite store, plain log sink,
Supervisor), in this process, with N jobs firing every second, and reports per second: when
the loop woke to prepare the instant's runs, when the burst's gate opened, when the first and
last job started, and the µs per run between consecutive bodies; then, unless
``--no-profile``, a cProfile of the preparing (``--profile prepare``) or of the bursts alone
(``--profile go``), sorted by own time.

    python bench/profile_fire.py --jobs 1000 --seconds 8 [--profile go|prepare] [--no-log]

Log lines go to bench/out/work/profile-N/output.log (stderr is redirected there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import math
import os
import pstats
import sys
import time
from collections import defaultdict
from typing import Any

import common
import configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--no-log", action="store_true", help="no log sink (isolates logging)")
    parser.add_argument("--profile", choices=("go", "prepare"), default="go")
    parser.add_argument("--no-profile", action="store_true", help="timings only, no cProfile")
    parser.add_argument("--top", type=int, default=30)
    options = parser.parse_args()
    with common.workdir(f"profile-{options.jobs}") as work:
        config_path = configs.qtasks_ticking(
            work / "jobs.yaml", options.jobs, schedule="* * * * * *"
        )
        out = work / "starts.txt"
        os.environ["QTBENCH_OUT"] = str(out)
        log_file = (work / "output.log").open("w")
        real_stderr = sys.stderr
        sys.stderr = log_file
        try:
            marks, profile = asyncio.run(_serve(config_path, options))
        finally:
            sys.stderr = real_stderr
            log_file.close()
        _report(marks, out, options)
        if not options.no_profile:
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(options.top)
            print(text.getvalue())


async def _serve(config_path: Any, options: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    from qtasks_cli import api, burst
    from qtasks_cli.events import EventBus
    from qtasks_cli.supervisor import Supervisor
    from qtasks_cli.ui import log as ui_log

    config = api.load(config_path)
    bus = EventBus()
    if not options.no_log:
        bus.subscribe(ui_log.sink_for("plain"))
    store = api.open_state(config)
    await store.open()
    supervisor = Supervisor(config, store=store, bus=bus)
    marks: dict[str, Any] = defaultdict(list)
    profile = cProfile.Profile()
    profiling = not options.no_profile
    go = burst.Burst.go
    start_ready = supervisor.firing.start_ready

    def timed_go(self: Any, now: Any) -> None:
        began = time.time()
        if profiling and options.profile == "go":
            profile.enable()
        go(self, now)
        if profiling and options.profile == "go":
            profile.disable()
        marks["go"].append((began, time.time(), self.gate.instant.timestamp()))

    def timed_start_ready(now: Any) -> None:
        began = time.time()
        if profiling and options.profile == "prepare":
            profile.enable()
        start_ready(now)
        if profiling and options.profile == "prepare":
            profile.disable()
        marks["woke"].append(began)

    burst.Burst.go = timed_go  # type: ignore[method-assign]
    supervisor.firing.start_ready = timed_start_ready  # type: ignore[method-assign]
    task = asyncio.create_task(supervisor.run())
    await supervisor.ready.wait()
    await asyncio.sleep(options.seconds)
    supervisor.request_stop()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(task, timeout=30)
    await store.close()
    burst.Burst.go = go  # type: ignore[method-assign]
    return marks, profile


def _report(marks: dict[str, Any], out: Any, options: argparse.Namespace) -> None:
    starts: dict[int, list[float]] = defaultdict(list)
    for line in out.read_text().splitlines():
        t = float(line.split()[1])
        starts[math.floor(t)].append(t)
    print(f"qtasks, {options.jobs} jobs every second, log {'off' if options.no_log else 'plain'}")
    print(
        "instant      woke ms  gate ms  first ms  last ms  µs/run  starts   (ms from the instant)"
    )
    for began, _ended, instant in marks["go"]:
        second = int(instant)
        woke = max((w for w in marks["woke"] if w <= began), default=math.nan)
        seen = sorted(starts.get(second, []))
        if len(seen) < options.jobs:
            continue  # a start-up or late burst
        first, last = seen[0] - instant, seen[-1] - instant
        per_run = (last - first) / max(len(seen) - 1, 1) * 1e6
        print(
            f"{second}  {(woke - instant) * 1000:8.2f} {(began - instant) * 1000:8.2f}"
            f" {first * 1000:8.2f} {last * 1000:8.2f} {per_run:7.2f} {len(seen):7d}"
        )


if __name__ == "__main__":
    main()
