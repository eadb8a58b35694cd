"""Hands ``--count`` runs of the job ``handed`` to a running qtasks daemon through the public
Python API, ``qtasks_cli.enqueue(...)``, one call per run, and prints the timing as JSON.

Run by throughput.py in its own process, as a shop's code would run it."""

from __future__ import annotations

import argparse
import json
import time

import qtasks_cli


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--ids", required=True, help="file to write the run ids to")
    options = parser.parse_args()
    ids: list[str] = []
    first = time.time()
    began = time.perf_counter()
    for n in range(options.count):
        ids.append(qtasks_cli.enqueue("handed", n=n, config=options.config))
    seconds = time.perf_counter() - began
    with open(options.ids, "w") as f:
        f.write("\n".join(ids) + "\n")
    print(json.dumps({"first_wall": first, "seconds": seconds, "count": options.count}))


if __name__ == "__main__":
    main()
