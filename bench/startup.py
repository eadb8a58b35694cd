"""Start-up wall time of short commands: the median of repeated runs, timed with perf_counter
around subprocess.run (hyperfine is not installed). Commands run round-robin so a slow patch of
the machine spreads over all of them instead of landing on one; untimed runs come first so
byte-code caches are written."""

from __future__ import annotations

import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

import common


@dataclass(kw_only=True)
class Startup:
    label: str
    command: str
    runs: int
    median_ms: float
    min_ms: float
    p90_ms: float
    ratio_to_python: float | None = None
    anchor: bool = False  # a reference, not qtasks

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def commands(include_yacron: bool) -> list[tuple[str, list[str], bool]]:
    example = str(common.ROOT / "jobs.example.yaml")
    found: list[tuple[str, list[str], bool]] = [
        ("python -c pass", [common.PYTHON, "-c", "pass"], True),
        ("python -c 'import typer'", [common.PYTHON, "-c", "import typer"], True),
        ("qtasks --version", [common.QTASKS, "--version"], False),
        ("qtasks validate jobs.example.yaml", [common.QTASKS, "validate", example], False),
        ("qtasks list jobs.example.yaml", [common.QTASKS, "list", example], False),
    ]
    if include_yacron:
        found.append(("yacron --version", [common.anchor_bin("yacron"), "--version"], True))
    return found


def measure_all(*, quick: bool, include_yacron: bool = True) -> list[Startup]:
    runs = 3 if quick else 15
    warmups = 1 if quick else 2
    todo = commands(include_yacron)
    env = common.bench_env()
    times: dict[str, list[float]] = {label: [] for label, _, _ in todo}
    for _ in range(warmups):
        for _label, cmd, _ in todo:
            _timed(cmd, env)
    for _ in range(runs):
        for label, cmd, _ in todo:
            times[label].append(_timed(cmd, env))
    base = common.median(times["python -c pass"])
    results = []
    for label, cmd, anchor in todo:
        samples = times[label]
        median = common.median(samples)
        result = Startup(
            label=label,
            command=" ".join(cmd),
            runs=len(samples),
            median_ms=round(median * 1000, 1),
            min_ms=round(min(samples) * 1000, 1),
            p90_ms=round(common.percentile(samples, 0.9) * 1000, 1),
            ratio_to_python=round(median / base, 2),
            anchor=anchor,
        )
        results.append(result)
        print(
            f"  {label:<36} median {result.median_ms:7.1f} ms  min {result.min_ms:7.1f}  "
            f"p90 {result.p90_ms:7.1f}  x{result.ratio_to_python} of python -c pass"
        )
    return results


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run(
        cmd, cwd=common.ROOT, env=env, capture_output=True, timeout=60, check=False
    )
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)!r} exited {done.returncode}: {done.stderr.decode(errors='replace')}"
        )
    return elapsed
