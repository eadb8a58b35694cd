"""APScheduler 3 anchor: N jobs on an AsyncIOScheduler, as a user would write it.

Run with the anchors' venv and PYTHONPATH=bench/jobs. ``--every-second`` gives each job
CronTrigger(second='*'); ``--hourly-minute M`` gives CronTrigger(minute=M) (the idle test). The
jobs are ``benchjobs.tick``, the same coroutine qtasks runs. Default job settings (no history, no
logging configured, misfire_grace_time 1 s, coalesce, max_instances 1): APScheduler's defaults.
Prints ``ready`` once the scheduler has started; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import benchjobs
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, required=True)
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--every-second", action="store_true")
    when.add_argument("--hourly-minute", type=int)
    options = parser.parse_args()
    asyncio.run(serve(options.jobs, options.hourly_minute))


async def serve(count: int, hourly_minute: int | None) -> None:
    scheduler = AsyncIOScheduler(timezone="UTC")
    for i in range(count):
        name = f"j{i:04d}"
        if hourly_minute is None:
            trigger = CronTrigger(second="*", timezone="UTC")
        else:
            trigger = CronTrigger(minute=hourly_minute, timezone="UTC")
        scheduler.add_job(benchjobs.tick, trigger, kwargs={"name": name}, id=name)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    scheduler.start()
    print("ready", flush=True)
    await stopping.wait()
    scheduler.shutdown(wait=False)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
