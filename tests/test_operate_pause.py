"""A pause is stored in the state by the job's name and lasts until ``qtasks resume``: a reload
that removes the job keeps it, and the job comes back paused. ``status``, ``list`` and the
metrics agree on it at every step, through the installed ``qtasks`` against a real daemon."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from conftest import run_qtasks
from test_operate import _free_port, _scrape, qt, rows, status_json, wait_until

WORK = """
async def tick():
    pass
"""

TICK = "  tick:\n    entrypoint: work:tick\n    schedule: '* * * * * *'\n"
OTHER = "  other:\n    entrypoint: work:tick\n    schedule: '0 0 1 1 *'\n"


def _views(path: Path, port: int) -> dict[str, Any]:
    """What status, list and the metrics say of tick's pause."""
    _, status = status_json(path)
    [tick] = [j for j in status["jobs"] if j["name"] == "tick"] or [None]
    listed = json.loads(run_qtasks("list", str(path), "--json", cwd=path.parent).stdout)
    [entry] = [e for e in listed if e["name"] == "tick"] or [None]
    metrics = _scrape(port)
    return {
        "status": None if tick is None else (tick["state"], tick["in_file"]),
        "list": None if entry is None else (entry["paused"], entry["in_file"]),
        "gauge": metrics.get("qtasks_paused_jobs"),
        "job_gauge": metrics.get('qtasks_job_paused{job="tick"}'),
    }


def test_a_pause_outlives_the_jobs_removal_and_everyone_says_so(project, daemons) -> None:
    port = _free_port()
    head = f"settings:\n  metrics: 127.0.0.1:{port}\njobs:\n"
    path = project(head + TICK + OTHER, work=WORK)
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: "qtasks ready" in log)
    assert qt(path, "pause", "tick").returncode == 0
    paused_in_file = {"status": ("paused", True), "list": (True, True), "gauge": 1.0,
                      "job_gauge": 1.0}  # fmt: skip
    wait_until(lambda: _views(path, port) == paused_in_file, what="paused everywhere")
    ran_before = sum(r["status"] == "succeeded" for r in rows(path, "tick"))

    # Removed from the file: still paused, by everyone's account.
    path.write_text(head + OTHER)
    daemon.send(signal.SIGHUP)
    daemon.wait_for(lambda log: "1 removed" in log)
    gone = {"status": ("paused", False), "list": (True, False), "gauge": 1.0, "job_gauge": 1.0}
    wait_until(lambda: _views(path, port) == gone, what="paused out of the file")
    text = qt(path, "status").stdout
    assert "not in the job file (qtasks resume tick lifts it)" in text
    listed = run_qtasks("list", str(path), cwd=path.parent).stdout
    assert "not in the job file  [paused: `qtasks resume tick` lifts it]" in listed

    # Back in the file: paused, and its fires are recorded skipped (paused).
    path.write_text(head + TICK + OTHER)
    daemon.send(signal.SIGHUP)
    daemon.wait_for(lambda log: "1 added" in log)
    wait_until(lambda: _views(path, port) == paused_in_file, what="paused when back")
    wait_until(
        lambda: sum(r["error"] == "skipped (paused)" for r in rows(path, "tick")) >= 2,
        what="fires skipped while paused",
    )
    assert sum(r["status"] == "succeeded" for r in rows(path, "tick")) == ran_before

    # Resumed: nobody says paused any more.
    assert qt(path, "resume", "tick").returncode == 0
    resumed = {"status": ("idle", True), "list": (False, True), "gauge": 0.0, "job_gauge": 0.0}
    wait_until(
        lambda: (
            {**(v := _views(path, port)), "status": ("idle", True)} == resumed
            and v["status"][0] in ("idle", "running")
        ),
        what="resumed everywhere",
    )
    assert daemon.stop() == 0
