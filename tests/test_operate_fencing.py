"""A final status is final across PostgreSQL nodes, end to end through the installed ``qtasks``:
a node frozen with SIGSTOP past ``node_timeout`` is presumed dead and its run concluded by the
survivor; when it is continued (SIGCONT) it learns so from its heartbeat, stops the run's body
and never rewrites the record. The same holds for a ``qtasks cancel`` asked while the node was
frozen: the survivor concludes the run cancelled (not interrupted), and it stays cancelled."""

from __future__ import annotations

import re
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from test_cluster import cluster, runs, schema_of  # noqa: F401  (the fixture)
from test_operate_cluster import qt, wait_until

WORK = """
import asyncio, os
from pathlib import Path
import qtasks_cli

async def slow():
    run_id = qtasks_cli.current_run().run_id
    Path(f"started-{os.getpid()}-{run_id}").write_text("x")
    await asyncio.sleep(3600)
    Path(f"finished-{run_id}").write_text("x")  # never: the body is stopped first
"""

JOBS = "  slow:\n    entrypoint: fenced:slow\n    schedule: '* * * * * *'\n"


def _running(folder: Path, nodes: list[Any], exclude: set[str]) -> tuple[Any, str]:
    """The node running a slow run not in ``exclude``, and that run's id."""

    def found() -> tuple[Any, str] | None:
        for path in folder.glob("started-*"):
            _, pid, run_id = path.name.split("-", 2)
            for node in nodes:
                if str(node.proc.pid) == pid and run_id not in exclude:
                    return node, run_id
        return None

    return wait_until(found, timeout=30, what="a slow run")  # type: ignore[no-any-return]


def _row(url: str, schema: str, run_id: str) -> dict[str, Any]:
    return next(r for r in runs(url, schema) if r["run_id"] == run_id)


def test_a_frozen_node_never_rewrites_what_the_survivor_concluded(cluster) -> None:  # noqa: F811
    path, start, url = cluster(JOBS, node_timeout="3s", shutdown_grace="1s")
    schema = schema_of(path)
    folder = path.parent
    (folder / "fenced.py").write_text(WORK)
    nodes = [start(), start()]
    for node in nodes:
        node.wait_for(lambda log: "qtasks ready" in log)

    # 1. Frozen while running: concluded interrupted by the survivor, and it stays so.
    victim, first = _running(folder, nodes, set())
    victim.send(signal.SIGSTOP)
    try:
        wait_until(lambda: _row(url, schema, first)["status"] == "interrupted", what="reaped")
    finally:
        victim.send(signal.SIGCONT)
    victim.wait_for(lambda log: first in log and "stopping it here" in log, timeout=30)
    assert "had been presumed dead" in victim.output
    row = _row(url, schema, first)
    assert row["status"] == "interrupted", row
    assert "presumed" in victim.output

    # 2. Frozen, then cancelled from another shell: the survivor concludes it cancelled.
    # The survivor is frozen too while the cancel is asked, so that it cannot have presumed
    # the victim dead before the request is in the store, however slow this machine is.
    victim, second = _running(folder, nodes, {first})
    survivor = next(n for n in nodes if n is not victim)
    victim.send(signal.SIGSTOP)
    survivor.send(signal.SIGSTOP)
    try:
        asked = qt(path, url, "cancel", second, "--wait", "0")
        assert asked.returncode == 0, asked.stderr
        assert "cancel requested" in asked.stdout, asked.stdout
    finally:
        survivor.send(signal.SIGCONT)
    try:
        wait_until(lambda: _row(url, schema, second)["status"] == "cancelled", what="cancelled")
    finally:
        victim.send(signal.SIGCONT)
    victim.wait_for(lambda log: second in log and "stopping it here" in log, timeout=30)
    row = _row(url, schema, second)
    assert row["status"] == "cancelled", row
    assert re.match(
        r"cancelled by \S+@\S+ \(pid \d+\); its daemon stopped (while it ran|at about its start)",
        row["error"],
    ), row
    # One node (whichever looks first) reports the cancel, once.
    reported = rf"{second} cancelled cancelled by \S+@"
    wait_until(
        lambda: sum(len(re.findall(reported, n.output)) for n in nodes) >= 1, what="reported"
    )

    # Both records stand once the nodes have stopped (every buffered write is flushed then).
    for node in nodes:
        assert node.stop() == 0
    assert sum(len(re.findall(reported, n.output)) for n in nodes) == 1
    for run_id, status in ((first, "interrupted"), (second, "cancelled")):
        assert _row(url, schema, run_id)["status"] == status
        assert not (folder / f"finished-{run_id}").exists()
    rows = runs(url, schema)
    keys = [(r["job"], r["scheduled"]) for r in rows if r["scheduled"] is not None]
    assert len(keys) == len(set(keys))  # still never twice


BRIEF = """
import os, time
from pathlib import Path
import qtasks_cli

def brief():
    run_id = qtasks_cli.current_run().run_id
    Path(f"started-{os.getpid()}-{run_id}").write_text("x")
    time.sleep(5)  # a thread job: its body ends about when the node is continued
"""


def test_a_body_that_ends_as_its_node_returns_is_not_recorded_over_the_conclusion(
    cluster,  # noqa: F811
) -> None:
    path, start, url = cluster(
        "  brief:\n    entrypoint: brief:brief\n    schedule: '* * * * * *'\n",
        node_timeout="3s",
        shutdown_grace="1s",
    )
    schema = schema_of(path)
    folder = path.parent
    (folder / "brief.py").write_text(BRIEF)
    nodes = [start(), start()]
    for node in nodes:
        node.wait_for(lambda log: "qtasks ready" in log)
    victim, run_id = _running(folder, nodes, set())
    victim.send(signal.SIGSTOP)
    try:
        wait_until(lambda: _row(url, schema, run_id)["status"] == "interrupted", what="reaped")
    finally:
        victim.send(signal.SIGCONT)
    # Whichever comes first, the heartbeat or the body's end, the record is not rewritten.
    victim.wait_for(
        lambda log: (
            run_id in log and ("stopping it here" in log or "already says interrupted" in log)
        ),
        timeout=30,
    )
    for node in nodes:
        assert node.stop() == 0
    row = _row(url, schema, run_id)
    assert row["status"] == "interrupted", row
    assert "silent since" in row["error"]


TICK = """
def tick():
    pass
"""


def test_a_frozen_node_neither_runs_nor_reports_the_claims_the_survivor_concluded(
    cluster,  # noqa: F811
) -> None:
    """Invariant: history and metrics never count a fire twice. A node frozen past
    node_timeout while it held claims written ahead of their instant comes back to find them
    concluded by the survivor: it must not run them nor say (and count) them missed."""
    jobs = "  tick:\n    entrypoint: ticking:tick\n    schedule: '* * * * * *'\n"
    path, start, url = cluster(jobs, node_timeout="3s", shutdown_grace="1s")
    schema = schema_of(path)
    (path.parent / "ticking.py").write_text(TICK)
    nodes = [start(), start()]
    for node in nodes:
        node.wait_for(lambda log: "qtasks ready" in log)
    victim, survivor = nodes
    mine = f":{victim.proc.pid}:"

    def held() -> list[str]:
        # Only claims whose instant is still ahead: a run's start mark is written after its
        # body started (buffered), so a row still "claimed" may have run already.
        ahead = datetime.now(timezone.utc) + timedelta(seconds=0.1)
        return [
            r["run_id"]
            for r in runs(url, schema)
            if r["status"] == "claimed" and mine in (r["node"] or "") and r["scheduled"] > ahead
        ]

    # Frozen while it holds a claim written ahead of its instant (read again once frozen:
    # what it holds then cannot change, and its instant was still 0.1 s away).
    claims: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if held():
            victim.send(signal.SIGSTOP)
            claims = held()
            if claims:
                break
            victim.send(signal.SIGCONT)
    assert claims, "the node never held a claim"
    try:
        before = len(victim.output)  # what it said before the freeze
        wait_until(
            lambda: all(_row(url, schema, c)["status"] == "interrupted" for c in claims),
            timeout=30,
            what="the survivor concluding the frozen node's claims",
        )
    finally:
        victim.send(signal.SIGCONT)
    victim.wait_for(lambda log: "had been presumed dead" in log, timeout=30)
    # A few more seconds of running on both nodes after the return.
    mark = len(survivor.output)
    survivor.wait_for(lambda log: log[mark:].count(" tick ") >= 6, timeout=30)
    for node in nodes:
        assert node.stop() == 0
    said = re.compile(r"\b(" + "|".join(map(re.escape, claims)) + r") (\w+)")
    events = [m.groups() for m in said.finditer(victim.output[before:])]
    # Back, the victim may say it lets them go ("run ... is interrupted in the store"),
    # never that one of them was fired, started, missed or skipped.
    assert not [e for e in events if e[1] != "of"], (events, victim.output[before:][-3000:])
    for claim in claims:
        assert _row(url, schema, claim)["status"] == "interrupted"
    rows = runs(url, schema)
    keys = [(r["job"], r["scheduled"]) for r in rows if r["scheduled"] is not None]
    assert len(keys) == len(set(keys))
