"""What a run hands to an executor's thread is that run's output in ``qtasks show``, and no other
run's: ``loop.run_in_executor(None, ...)``, ``asyncio.to_thread``, a module-level
``ThreadPoolExecutor`` (``submit`` and ``run_in_executor``), from async and thread jobs, with
runs of several jobs overlapping on the same pools. Through the installed ``qtasks``."""

from __future__ import annotations

import json
import re

from test_operate import qt, rows, wait_until

WORK = """
import asyncio, concurrent.futures, threading, time
import qtasks_cli

POOL = concurrent.futures.ThreadPoolExecutor(2)  # made at import, outside any run

def say(tag, how):
    time.sleep(0.05)  # the runs overlap on the pools
    print(f"{tag} via {how}")

async def chatty():
    tag = qtasks_cli.current_run().run_id
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, say, tag, "default")
    await asyncio.to_thread(say, tag, "to_thread")
    await loop.run_in_executor(POOL, say, tag, "pool-loop")
    await asyncio.wrap_future(POOL.submit(say, tag, "pool-submit"))

def threaded():
    tag = qtasks_cli.current_run().run_id
    POOL.submit(say, tag, "pool-submit").result()
    helper = threading.Thread(target=lambda: POOL.submit(say, tag, "pool-from-thread").result())
    helper.start()
    helper.join()
"""

JOBS = """
jobs:
  a:
    entrypoint: work:chatty
    schedule: '* * * * * *'
  b:
    entrypoint: work:chatty
    schedule: '* * * * * *'
  t:
    entrypoint: work:threaded
    schedule: '* * * * * *'
"""

EXPECTED = {
    "a": {"default", "to_thread", "pool-loop", "pool-submit"},
    "b": {"default", "to_thread", "pool-loop", "pool-submit"},
    "t": {"pool-submit", "pool-from-thread"},
}


def test_executor_threads_print_as_the_run_that_handed_them_work(project, daemons) -> None:
    path = project(JOBS, work=WORK)
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: "qtasks ready" in log)

    def done() -> list[dict[str, object]]:
        ok = [r for r in rows(path) if r["status"] == "succeeded"]
        return ok if all(sum(r["job"] == j for r in ok) >= 4 for j in EXPECTED) else []

    finished = wait_until(done, timeout=60, what="four runs of each job")
    assert daemon.stop() == 0
    for row in finished:
        shown = json.loads(qt(path, "show", str(row["run_id"]), "--json").stdout)
        lines = shown["output"]
        seen = set()
        for line in lines:
            found = re.fullmatch(r"(\w+) via ([\w-]+)", line)
            assert found is not None, (row["job"], lines)
            assert found.group(1) == row["run_id"], ("another run's line", row["job"], lines)
            seen.add(found.group(2))
        assert seen == EXPECTED[str(row["job"])], (row["job"], lines)
