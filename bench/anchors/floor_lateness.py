"""The floor: the least any Python scheduler on one asyncio loop can do to start N jobs at
every whole second.

No history, no log, no decisions: the loop sleeps until ``EARLY`` before the second, spins to
the instant on ``time.time()``, then starts every job's coroutine at once by stepping it
(``coro.send(None)``; a job that awaits something is handed to a task from there, as an
eager task start does). The jobs are ``benchjobs.tick``, the coroutine qtasks and APScheduler
run in the same bench. Standard library only; prints ``ready`` once scheduled; stops on
SIGTERM or SIGINT.

    PYTHONPATH=bench/jobs python bench/anchors/floor_lateness.py --jobs 1000
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any

import benchjobs

EARLY = 0.005  # seconds before the instant the loop wakes; the rest is a spin


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, required=True)
    options = parser.parse_args()
    asyncio.run(serve(options.jobs))


def start_eagerly(coro: Coroutine[Any, Any, Any], keep: set[asyncio.Future[Any]]) -> None:
    """Run ``coro`` up to its first suspension now; a task takes it from there."""
    try:
        first = coro.send(None)
    except StopIteration:
        return
    task = asyncio.ensure_future(_resume(coro, first))
    keep.add(task)
    task.add_done_callback(keep.discard)


async def _resume(coro: Coroutine[Any, Any, Any], first: Any) -> None:
    # Enough for the jobs of this bench (they never suspend); a general version passes the
    # yielded future up to the task (see qtasks_cli/clock.py: start_now).
    if first is not None:
        await first
    while True:
        try:
            first = coro.send(None)
        except StopIteration:
            return
        if first is not None:
            await first


async def serve(count: int) -> None:
    names = [f"j{i:04d}" for i in range(count)]
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    keep: set[asyncio.Future[Any]] = set()
    print("ready", flush=True)
    stop = asyncio.ensure_future(stopping.wait())
    while not stopping.is_set():
        instant = math.floor(time.time()) + 1
        nap = asyncio.ensure_future(asyncio.sleep(instant - EARLY - time.time()))
        await asyncio.wait({nap, stop}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            nap.cancel()
            break
        while time.time() < instant:
            pass
        tick = benchjobs.tick
        for name in names:
            start_eagerly(tick(name), keep)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
