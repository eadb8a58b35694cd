"""Where a qtasks fire spends its time: a diagnostic, not part of ``run.py``.

Runs the same daemon ``qtasks run FILE --ui plain`` runs (config, SQLite store, plain log sink,
Supervisor), in this process, with N jobs firing every second, and reports per second:
how late the loop woke, how long the claim in the store took, and when the first and last job
started; then the main thread's cProfile, sorted by cumulative time.

    python bench/profile_fire.py --jobs 1000 --seconds 8 [--no-log]

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
    parser.add_argument("--no-profile", action="store_true", help="timings only, no cProfile")
    parser.add_argument("--top", type=int, default=40)
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
        if options.no_profile:
            return
        text = io.StringIO()
        stats = pstats.Stats(profile, stream=text)
        stats.sort_stats("cumulative").print_stats(options.top)
        print(text.getvalue())
        stats.sort_stats("tottime")
        text = io.StringIO()
        stats.stream = text  # type: ignore[attr-defined]
        stats.print_stats(25)
        print(text.getvalue())


async def _serve(config_path: Any, options: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    from qtasks_cli import api
    from qtasks_cli.events import EventBus
    from qtasks_cli.supervisor import Supervisor

    config = api.load(config_path)
    bus = EventBus()
    if not options.no_log:
        bus.subscribe(api.log_sink_for("plain"))
    store = api.open_state(config)
    await store.open()
    supervisor = Supervisor(config, store=store, bus=bus)
    marks: dict[str, Any] = defaultdict(list)

    fire_due = supervisor._fire_due
    claim = store.claim

    async def timed_fire_due(now: Any) -> None:
        woke = time.time()
        before = len(marks["claim"])
        await fire_due(now)
        if len(marks["claim"]) > before:
            marks["fire"].append((woke, time.time()))

    async def timed_claim(fires: Any) -> Any:
        began = time.time()
        won = await claim(fires)
        marks["claim"].append((began, time.time(), len(fires)))
        return won

    supervisor._fire_due = timed_fire_due  # type: ignore[method-assign]
    store.claim = timed_claim  # type: ignore[method-assign,assignment]
    profile = cProfile.Profile()
    task = asyncio.create_task(supervisor.run())
    await supervisor.ready.wait()
    # Skip the first fire (imports, first-use caches), then profile whole seconds.
    start = math.floor(time.time()) + 2
    await asyncio.sleep(start - time.time() - 0.3)
    if not options.no_profile:
        profile.enable()
    await asyncio.sleep(options.seconds)
    profile.disable()
    supervisor.request_stop()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(task, timeout=30)
    await store.close()
    marks["window"] = (start, start + options.seconds)
    return marks, profile


def _report(marks: dict[str, Any], out: Any, options: argparse.Namespace) -> None:
    start, end = marks["window"]
    starts: dict[int, list[float]] = defaultdict(list)
    for line in out.read_text().splitlines():
        t = float(line.split()[1])
        starts[math.floor(t)].append(t)
    claims = {math.floor(began): (began, ended, n) for began, ended, n in marks["claim"]}
    print(f"qtasks, {options.jobs} jobs every second, log {'off' if options.no_log else 'plain'}")
    print("second      woke+ms  claim ms  first start+ms  last start+ms  starts")
    for woke, _done in marks["fire"]:
        second = math.floor(woke)
        if not start <= second < end:
            continue
        began, ended, _n = claims.get(second, (math.nan, math.nan, 0))
        seen = sorted(starts.get(second, []))
        first = (seen[0] - second) * 1000 if seen else math.nan
        last = (seen[-1] - second) * 1000 if seen else math.nan
        print(
            f"{second}  {(woke - second) * 1000:7.2f}  {(ended - began) * 1000:8.2f}"
            f"  {first:14.2f}  {last:13.2f}  {len(seen):6d}"
        )


if __name__ == "__main__":
    main()
