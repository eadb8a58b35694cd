"""The long crash-point fuzzer: SIGKILL the real daemon at seeded random instants, many times.

    python bench/soak_crash.py                       # 500 kills on SQLite, 200 on PostgreSQL
    python bench/soak_crash.py --kills 100 --stores sqlite
    python bench/soak_crash.py --seed 7

Each kill is followed by a restart; a last life drains the queue. The checker (tests/crashfuzz.py)
compares every body execution the jobs recorded with ``qtasks history``. The figures (kills,
bodies run, requests, duplicates, lost, untrue rows) are printed and written to
tests/reliability/soak.md, which RELIABILITY.md includes when it is regenerated. Not a test:
it prints what it saw and exits 1 when the invariant broke.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from crashfuzz import Outcome, fuzz  # noqa: E402

SOAK_MD = ROOT / "tests" / "reliability" / "soak.md"


def run_store(store: str, kills: int, seed: int) -> tuple[Outcome, float]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"qtasks-soak-{store}-") as folder:
        if store == "sqlite":
            outcome = fuzz(Path(folder), kills=kills, seed=seed, progress=print)
        else:
            from pg import fresh_schema, postgres_url

            url = postgres_url()
            with fresh_schema(url) as schema:
                outcome = fuzz(
                    Path(folder),
                    kills=kills,
                    seed=seed,
                    env_extra={"QTASKS_STATE": url},
                    settings=f"  schema: {schema}\n",
                    progress=print,
                )
    return outcome, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=None, help="kills per store")
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--seed", type=int, default=1130)
    args = parser.parse_args(argv)
    rows = []
    broken = False
    for store in args.stores.split(","):
        kills = args.kills or (500 if store == "sqlite" else 200)
        outcome, seconds = run_store(store, kills, args.seed)
        print(f"{store}: {outcome.summary()} in {seconds:.0f}s")
        for problem in outcome.problems[:20]:
            print("  ", problem)
        broken |= bool(outcome.problems)
        rows.append(
            f"| {store} | {outcome.kills} | {outcome.bodies} | {outcome.requests} | "
            f"{outcome.duplicates} | {outcome.lost} | {outcome.untrue} | {outcome.interrupted} "
            f"| {seconds:.0f} s |"
        )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    SOAK_MD.write_text(
        "## Crash-point soak\n\n"
        f"`python bench/soak_crash.py --seed {args.seed}`, run {stamp}. The real daemon is "
        "SIGKILLed at seeded random instants (0.05 to 1.2 s into each life) while per-second "
        "jobs fire and requests are handed over, then restarted; a last life drains the "
        "queue. `interrupted` rows are the runs a kill cut (in progress, or claimed at their "
        "instant and so possibly started): true rows, not losses.\n\n"
        "| store | kills | bodies run | requests | duplicates | lost | untrue rows "
        "| interrupted | time |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        + "\n".join(rows)
        + "\n"
    )
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
