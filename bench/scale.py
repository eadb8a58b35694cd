"""Start-up and memory with 10,000 jobs, against APScheduler 3 starting the same jobs.

10,000 jobs ``benchjobs:tick`` on an hourly cron at a minute half an hour away (nothing fires).
Measured, each the median of ``rounds`` runs taking turns:

- ``qtasks validate FILE``: wall time of the command;
- ``qtasks run FILE --ui plain``: from launch to its ``ready`` line, and the resident set
  (VmRSS) 3 s after it;
- APScheduler 3 (``anchors/aps_lateness.py --hourly-minute M``, ``AsyncIOScheduler``, the same
  10,000 jobs added with ``add_job``): from launch to its ``ready`` line, and VmRSS 3 s after.

    python bench/scale.py [--jobs 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import common
import configs


@dataclass(kw_only=True)
class Scale:
    jobs: int
    rounds: int
    validate_s: list[float] = field(default_factory=list)
    qtasks_ready_s: list[float] = field(default_factory=list)
    qtasks_rss_mb: list[float] = field(default_factory=list)
    aps_ready_s: list[float] = field(default_factory=list)
    aps_rss_mb: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        for key in list(found):
            if isinstance(found[key], list) and found[key]:
                found[f"{key}_median"] = round(statistics.median(found[key]), 3)
        return found


def measure(*, jobs: int = 10_000, rounds: int = 3) -> Scale:
    result = Scale(jobs=jobs, rounds=rounds)
    minute = (datetime.now(timezone.utc).minute + 30) % 60
    with common.workdir(f"scale-{jobs}") as work:
        config = configs.qtasks_ticking(work / "jobs.yaml", jobs, schedule=f"{minute} * * * *")
        env = common.bench_env(QTBENCH_OUT=str(work / "starts.txt"))
        aps_env = common.bench_env(
            QTBENCH_OUT=str(work / "starts.txt"), PYTHONPATH=str(common.JOBS_DIR)
        )
        aps = [
            common.anchor_python(),
            str(common.ANCHORS_DIR / "aps_lateness.py"),
            "--jobs",
            str(jobs),
            "--hourly-minute",
            str(minute),
        ]
        common.run([common.QTASKS, "validate", str(config)], timeout=300)  # caches warm
        for _ in range(rounds):
            began = time.perf_counter()
            common.run([common.QTASKS, "validate", str(config)], timeout=300)
            result.validate_s.append(round(time.perf_counter() - began, 3))
            for state in work.glob("state.db*"):
                state.unlink()
            ready, rss = _ready(
                [common.QTASKS, "run", str(config), "--ui", "plain"], work, env, "qtasks ready"
            )
            result.qtasks_ready_s.append(ready)
            result.qtasks_rss_mb.append(rss)
            ready, rss = _ready(aps, work, aps_env, "ready")
            result.aps_ready_s.append(ready)
            result.aps_rss_mb.append(rss)
    summary = result.as_dict()
    print(
        f"  {jobs:,} jobs: validate {summary['validate_s_median']} s; qtasks ready after "
        f"{summary['qtasks_ready_s_median']} s, RSS {summary['qtasks_rss_mb_median']} MB; "
        f"APScheduler 3 ready after {summary['aps_ready_s_median']} s, RSS "
        f"{summary['aps_rss_mb_median']} MB"
    )
    return result


def _ready(cmd: list[str], work: Path, env: dict[str, str], marker: str) -> tuple[float, float]:
    log_path = work / "output.log"
    with log_path.open("wb") as log_file:
        began = time.perf_counter()
        proc = common.spawn(cmd, cwd=work, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            common.wait_until(
                lambda: marker in log_path.read_text(errors="replace") or proc.poll() is not None,
                timeout=300,
                interval=0.01,
                what=f"{marker!r} from {cmd[0]}",
            )
            ready = round(time.perf_counter() - began, 3)
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd!r} exited early: {log_path.read_text()[-2000:]}")
            time.sleep(3.0)
            rss = round(common.rss_mb(proc.pid), 1)
        finally:
            common.stop(proc, timeout=30)
    return ready, rss


if __name__ == "__main__":
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    common.install_cleanup()
    common.OUT.mkdir(parents=True, exist_ok=True)
    found = measure(jobs=options.jobs, rounds=options.rounds)
    target = common.OUT / f"scale-{options.jobs}.json"
    target.write_text(json.dumps(found.as_dict(), indent=2) + "\n")
    print(f"wrote {target}")
