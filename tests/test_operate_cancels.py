"""Every way a run ends ``cancelled`` says so the same way, through the installed ``qtasks``
against a real daemon: one log line naming who cancelled it, the record, and one count in
``qtasks_runs_total{status="cancelled"}``. A run cancelled while it runs, while it waits for a
free max_concurrent slot, while it waits behind its job's previous run, and before any daemon
took it (reported by the daemon that starts next)."""

from __future__ import annotations

import re

from test_operate import _free_port, _scrape, qt, rows, status_json, wait_until

WORK = """
import asyncio
from pathlib import Path

async def hold(name):
    Path(f"{name}.started").write_text("x")
    await asyncio.sleep(3600)
"""


def _jobs(port: int) -> str:
    return f"""
settings:
  max_concurrent: 1
  shutdown_grace: 1s
  metrics: 127.0.0.1:{port}
jobs:
  holder:
    entrypoint: work:hold
    args: [holder]
  waiter:
    entrypoint: work:hold
    args: [waiter]
  early:
    entrypoint: work:hold
    args: [early]
  queue:
    entrypoint: work:hold
    args: [queue]
    overlap: queue
"""


def _cancelled_lines(log: str, run_id: str) -> list[str]:
    return [line for line in log.splitlines() if run_id in line and " cancelled" in line]


def test_every_cancel_path_logs_records_and_counts_once(project, daemons) -> None:
    port = _free_port()
    path = project(_jobs(port), work=WORK)
    folder = path.parent

    # Before any daemon runs: handed over, then cancelled from the store at once.
    early = qt(path, "trigger", "early", "--enqueue").stdout.strip()
    cancelled = qt(path, "cancel", early)
    assert cancelled.returncode == 0, cancelled.stderr

    daemon = daemons([str(path)], cwd=folder)
    daemon.wait_for(lambda log: "qtasks ready" in log)

    # The one slot is held: a run of another job waits for it.
    holder = qt(path, "trigger", "holder", "--enqueue").stdout.strip()
    wait_until(lambda: (folder / "holder.started").exists(), what="holder runs")
    waiter = qt(path, "trigger", "waiter", "--enqueue").stdout.strip()
    wait_until(
        lambda: any(r["run_id"] == waiter and r["status"] == "claimed" for r in rows(path)),
        what="waiter taken",
    )
    assert not (folder / "waiter.started").exists()
    assert qt(path, "cancel", waiter).returncode == 0

    # Behind its job's previous run (overlap: queue): two requests of one job.
    first = qt(path, "trigger", "queue", "--enqueue").stdout.strip()
    second = qt(path, "trigger", "queue", "--enqueue").stdout.strip()
    wait_until(
        lambda: (
            {r["run_id"] for r in rows(path, "queue") if r["status"] == "claimed"}
            == {first, second}
        ),
        what="both queue runs taken",
    )
    assert qt(path, "cancel", second).returncode == 0
    assert qt(path, "cancel", first).returncode == 0  # waiting for the slot too

    # Running: the holder itself.
    assert qt(path, "cancel", holder).returncode == 0

    ids = {"early": early, "waiter": waiter, "queue": second, "holder": holder}
    log = daemon.wait_for(
        lambda text: all(_cancelled_lines(text, run_id) for run_id in [*ids.values(), first])
    )
    for run_id in [*ids.values(), first]:
        lines = _cancelled_lines(log, run_id)
        assert len(lines) == 1, (run_id, lines)
        assert re.search(r"cancelled by \S+@", lines[0]), lines
    by_id = {r["run_id"]: r for r in rows(path)}
    for run_id in [*ids.values(), first]:
        assert by_id[run_id]["status"] == "cancelled", by_id[run_id]
        assert (by_id[run_id]["error"] or "").startswith("cancelled by ")
    metrics = _scrape(port)
    for job, count in (("early", 1), ("waiter", 1), ("queue", 2), ("holder", 1)):
        assert metrics.get(f'qtasks_runs_total{{job="{job}",status="cancelled"}}') == count, (
            job,
            {k: v for k, v in metrics.items() if "runs_total" in k},
        )
    # A second daemon start reports nothing twice.
    assert daemon.stop() == 0
    again = daemons([str(path)], cwd=folder)
    again.wait_for(lambda log: "qtasks ready" in log)
    # A status the daemon answered means its control thread has done a round since.
    wait_until(lambda: status_json(path)[1]["daemons"][0]["responsive"], what="answered")
    assert not any(_cancelled_lines(again.output, run_id) for run_id in ids.values())
    assert again.stop() == 0
