"""``validate`` at 10,000 jobs: the job file parsed with libyaml's parser and with PyYAML's
pure-Python one (the composer, checks and validation are the same code either way).

    python bench/validate.py [--jobs 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from configs import qtasks_ticking

from qtasks_cli import yamlload
from qtasks_cli.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    fast = yamlload._FastLoader
    with tempfile.TemporaryDirectory() as folder:
        path = qtasks_ticking(Path(folder) / "jobs.yaml", options.jobs, schedule="*/5 * * * *")
        load_config(path)  # imports and caches warmed for both
        times: dict[str, list[float]] = {"python parser": [], "libyaml parser": []}
        for _ in range(options.rounds):
            for name, loader in (("python parser", None), ("libyaml parser", fast)):
                if name == "libyaml parser" and loader is None:
                    continue
                yamlload._FastLoader = loader
                start = time.perf_counter()
                load_config(path)
                times[name].append(time.perf_counter() - start)
        yamlload._FastLoader = fast
    for name, values in times.items():
        if values:
            print(f"{name}: median {statistics.median(values):.2f} s of {len(values)} rounds")


if __name__ == "__main__":
    main()
