"""The operator's view across two ``qtasks run`` nodes sharing one PostgreSQL schema, through
the installed command from another shell: status lists both nodes, a pause holds on every
node and across a restart, a cancel reaches the node running the run, ``show`` names it, and
a stopped node leaves the status."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import clean_env, run_qtasks
from test_cluster import cluster, runs, schema_of  # noqa: F401  (the fixture)

JOBS = (
    "  tick:\n    entrypoint: work:tick\n    schedule: '* * * * * *'\n"
    "  slow:\n    entrypoint: work:slow\n    schedule: '* * * * * *'\n"
)


def wait_until(predicate: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def qt(path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_qtasks(
        *args, "-c", str(path), cwd=path.parent, env=clean_env(QTASKS_STATE=url), timeout=60
    )


def status(path: Path, url: str) -> tuple[int, dict[str, Any]]:
    result = qt(path, url, "status", "--json")
    return result.returncode, json.loads(result.stdout)


def test_status_pause_cancel_and_show_across_two_nodes(cluster) -> None:  # noqa: F811
    path, start, url = cluster(JOBS, node_timeout="6s", shutdown_grace="2s")
    schema = schema_of(path)
    assert qt(path, url, "status").returncode == 3  # nothing runs yet
    nodes = [start(), start()]
    for node in nodes:
        node.wait_for(lambda log: "tick next fire" in log)

    def both_up() -> dict[str, Any] | None:
        code, data = status(path, url)
        alive = {d["pid"] for d in data["daemons"] if d["alive"]}
        return data if code == 0 and alive == {n.proc.pid for n in nodes} else None

    data = wait_until(both_up, what="two nodes in status")
    assert len({d["node"] for d in data["daemons"]}) == 2
    text = qt(path, url, "status").stdout
    assert text.startswith("2 daemons up on postgresql://")
    assert all(f"pid {n.proc.pid}" in text for n in nodes)

    # A run of slow is in progress on one node: cancel it from here.
    def slow_run() -> dict[str, Any] | None:
        job = next(j for j in status(path, url)[1]["jobs"] if j["name"] == "slow")
        return job["running"][0] if job["running"] else None

    run = wait_until(slow_run, what="slow running")
    cancelled = qt(path, url, "cancel", run["run_id"])
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"@{socket.gethostname()}" in cancelled.stdout
    shown = qt(path, url, "show", run["run_id"])
    assert f"node       {run['node']}" in shown.stdout
    assert re.search(r"error +cancelled by \S+@", shown.stdout), shown.stdout

    # Pause tick: no node runs it, even after one restarts.
    assert qt(path, url, "pause", "tick").returncode == 0
    paused_at = time.time()
    assert nodes[0].stop() == 0
    nodes[0] = start()
    nodes[0].wait_for(lambda log: "tick next fire" in log)
    wait_until(
        lambda: (
            next(j for j in status(path, url)[1]["jobs"] if j["name"] == "tick")["state"]
            == "paused"
        ),
        what="tick paused in status",
    )
    time.sleep(3)
    resumed_at = time.time()
    assert qt(path, url, "resume", "tick").returncode == 0
    wait_until(
        lambda: any(
            r["job"] == "tick" and r["status"] == "succeeded"
            and r["scheduled"].timestamp() > resumed_at + 1
            for r in runs(url, schema)
        ),
        what="tick runs again after resume",
    )  # fmt: skip

    # One node stops: status shows one.
    assert nodes[1].stop() == 0
    wait_until(
        lambda: (
            [d["pid"] for d in status(path, url)[1]["daemons"] if d["alive"]] == [nodes[0].proc.pid]
        ),
        what="one node left",
    )
    assert nodes[0].stop() == 0
    assert qt(path, url, "status").returncode == 3

    rows = runs(url, schema)
    during = [
        r for r in rows
        if r["job"] == "tick" and r["scheduled"] is not None
        and paused_at + 1.5 < r["scheduled"].timestamp() < resumed_at - 1
    ]  # fmt: skip
    assert during and {(r["status"], r["error"]) for r in during} == {
        ("skipped", "skipped (paused)")
    }, during
    [cancelled_row] = [r for r in rows if r["run_id"] == run["run_id"]]
    assert cancelled_row["status"] == "cancelled" and cancelled_row["node"] == run["node"]
    keys = [(r["job"], r["scheduled"]) for r in rows if r["scheduled"] is not None]
    assert len(keys) == len(set(keys))  # still never twice
