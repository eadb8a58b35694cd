"""Durable state end to end: crash recovery, catch-up after downtime, handed-over runs, the
daemon lock and ``qtasks history``, through the installed command."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conftest import run_qtasks

import qtasks_cli


def rows(path: Path) -> list[dict[str, Any]]:
    """Every run in the job file's state, read-only, as dicts."""
    db = path.parent / ".qtasks" / "state.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM runs")]
    finally:
        conn.close()


def history(path: Path, *extra: str) -> list[dict[str, Any]]:
    result = run_qtasks("history", "-c", str(path), "--json", "--limit", "100000", *extra)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def assert_no_double_fires(path: Path) -> None:
    keys = Counter((r["job"], r["scheduled"]) for r in rows(path) if r["scheduled"] is not None)
    assert [k for k, n in keys.items() if n > 1] == []


WORK = """
import time
from pathlib import Path

async def tick():
    pass

def long():
    Path("long-started").write_text("x")
    time.sleep(60)

def record(order_id):
    with open("orders.txt", "a") as f:
        f.write(f"{order_id}\\n")

def fail():
    raise RuntimeError("boom")
"""


def test_sigkill_mid_run_then_restart_marks_it_interrupted(project, daemons) -> None:
    path = project(
        """
settings:
  shutdown_grace: 1s
jobs:
  tick:
    entrypoint: work:tick
    schedule: "* * * * * *"
  long:
    entrypoint: work:long
    schedule: "@startup"
""",
        work=WORK,
    )
    first = daemons([str(path)], cwd=path.parent)
    first.wait_for(
        lambda log: (path.parent / "long-started").exists() and "tick" in log and "succeeded" in log
    )
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    second = daemons([str(path)], cwd=path.parent)
    log = second.wait_for(lambda log: "interrupted" in log and log.count("tick") > 3)
    assert "daemon stopped while the run was in progress" in log
    assert second.stop() == 0
    long_runs = [r for r in history(path, "long") if r["trigger"] == "startup"]
    assert [r["status"] for r in long_runs].count("interrupted") == 1
    assert_no_double_fires(path)


def _wait_for_phase(low: float, high: float, period: int = 5) -> None:
    """Sleep (at most one period) until the wall clock's second within the period is in range."""
    deadline = time.monotonic() + period + 1
    while time.monotonic() < deadline:
        phase = time.time() % period
        if low <= phase <= high:
            return
        time.sleep(0.05)
    raise AssertionError("clock phase never reached")


def test_downtime_catch_up_policies(project, daemons) -> None:
    jobs = "jobs:\n" + "".join(
        f"  {policy}:\n    entrypoint: work:tick\n    schedule: '*/5 * * * * *'\n"
        f"    catch_up: {policy}\n"
        for policy in ("latest", "all", "none")
    )
    path = project(jobs, work=WORK)
    first = daemons([str(path)], cwd=path.parent)
    first.wait_for(lambda log: log.count(" fired ") >= 3, timeout=10)
    assert first.stop() == 0
    stopped = time.time()
    # Stay down across at least two fires, and come back 1.5-3.5 s after a fire, so that the
    # newest missed fire is late (not on time) when the daemon starts.
    time.sleep(max(0.0, 10 - (time.time() - stopped)))
    _wait_for_phase(1.6, 3.4)
    second = daemons([str(path)], cwd=path.parent)
    second.wait_for(lambda log: "latest next fire" in log)

    def caught_up(log: str) -> bool:
        # Every missed fire of `none` has its catch-up run for `all` finished, and `latest`
        # ran its one catch-up: stopping earlier would give unstarted catch-ups back.
        missed = len(re.findall(r"^\S+ WARNING +none \w+ missed ", log, re.M))
        done = len(re.findall(r"^\S+ INFO +all \w+ succeeded ", log, re.M))
        latest = re.search(r"^\S+ INFO +latest \w+ succeeded ", log, re.M)
        return missed >= 2 and done >= missed and latest is not None

    second.wait_for(caught_up, timeout=30)
    assert second.stop() == 0
    got = {
        p: [
            (r["trigger"], r["status"])
            for r in sorted(rows(path), key=lambda r: r["scheduled"])
            if r["job"] == p
        ]
        for p in ("latest", "all", "none")
    }
    for policy, runs in got.items():
        assert runs[0] == ("schedule", "succeeded"), (policy, runs)
    gap = len(got["all"]) - 1
    assert gap >= 2, got
    assert got["all"][1:] == [("catch_up", "succeeded")] * gap
    assert got["none"][1:] == [("schedule", "missed")] * gap
    assert got["latest"][1:] == [("schedule", "missed")] * (gap - 1) + [("catch_up", "succeeded")]
    assert_no_double_fires(path)


def test_enqueued_runs_survive_a_restart_and_run_exactly_once(project, daemons) -> None:
    path = project(
        """
settings:
  max_concurrent: 32
jobs:
  notify:
    entrypoint: work:record
    overlap: allow
""",
        work=WORK,
    )
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: "notify no schedule" in log)

    def enqueue(i: int) -> str:
        # One in ten through the installed command, the rest through the Python API the
        # command calls (the same store write): 200 interpreters took most of this test's time.
        if i % 10:
            return qtasks_cli.enqueue("notify", config=str(path), order_id=i)
        result = run_qtasks(
            "trigger",
            "notify",
            "-c",
            str(path),
            "--enqueue",
            "--kwarg",
            f"order_id={i}",
            cwd=path.parent,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    with ThreadPoolExecutor(8) as pool:
        first_half = list(pool.map(enqueue, range(100)))
        assert daemon.stop() == 0  # the daemon restarts in the middle
        restarted = daemons([str(path)], cwd=path.parent)
        second_half = list(pool.map(enqueue, range(100, 200)))
    run_ids = first_half + second_half
    assert len(set(run_ids)) == 200
    deadline = time.monotonic() + 120  # a bound, not a speed target: waits on the condition
    while time.monotonic() < deadline:
        done = [r for r in rows(path) if r["status"] == "succeeded"]
        if len(done) == 200:
            break
        time.sleep(0.2)
    assert restarted.stop() == 0
    lines = (path.parent / "orders.txt").read_text().split()
    assert sorted(map(int, lines)) == list(range(200))  # each ran once, none lost
    statuses = Counter(r["status"] for r in rows(path))
    assert statuses == {"succeeded": 200}
    assert {r["trigger"] for r in rows(path)} == {"queued"}


def test_enqueue_wait_exits_with_the_runs_result(project, daemons) -> None:
    path = project(
        """
jobs:
  notify:
    entrypoint: work:record
  broken:
    entrypoint: work:fail
""",
        work=WORK,
    )
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: "broken no schedule" in log)
    ok = run_qtasks(
        "trigger",
        "notify",
        "-c",
        str(path),
        "--enqueue",
        "--wait",
        "--kwarg",
        "order_id=7",
        cwd=path.parent,
        timeout=20,
    )
    assert ok.returncode == 0, ok.stderr
    assert "succeeded" in ok.stderr
    bad = run_qtasks(
        "trigger", "broken", "-c", str(path), "--enqueue", "--wait", cwd=path.parent, timeout=20
    )
    assert bad.returncode == 1
    assert "RuntimeError: boom" in bad.stderr
    assert daemon.stop() == 0


def test_enqueue_from_python_waits_for_a_daemon(project, daemons) -> None:
    path = project("jobs:\n  notify:\n    entrypoint: work:record\n", work=WORK)
    script = (
        f"import qtasks_cli; print(qtasks_cli.enqueue('notify', order_id=42, config={str(path)!r}))"
    )
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=path.parent
    )
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip()
    assert [r["status"] for r in rows(path) if r["run_id"] == run_id] == ["queued"]
    daemon = daemons([str(path)], cwd=path.parent)  # started after the request was written
    daemon.wait_for(lambda log: f"{run_id} succeeded" in log)
    assert daemon.stop() == 0
    assert (path.parent / "orders.txt").read_text() == "42\n"


def test_second_daemon_on_the_same_state_exits_2_naming_the_pid(project, daemons) -> None:
    path = project(
        "jobs:\n  tick:\n    entrypoint: work:tick\n    schedule: '* * * * * *'\n", work=WORK
    )
    first = daemons([str(path)], cwd=path.parent)
    first.wait_for(lambda log: "tick next fire" in log)
    second = run_qtasks("run", "--ui", "plain", str(path), cwd=path.parent, timeout=20)
    assert second.returncode == 2
    assert f"pid {first.proc.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.stop() == 0


def test_history_text_json_stats_and_filters(project) -> None:
    path = project(
        """
jobs:
  good:
    entrypoint: work:record
    kwargs: {order_id: 1}
  bad:
    entrypoint: work:fail
    retry: {retries: 1, delay: 0s}
""",
        work=WORK,
    )
    for _ in range(3):
        assert run_qtasks("trigger", "good", "-c", str(path), cwd=path.parent).returncode == 0
    assert run_qtasks("trigger", "bad", "-c", str(path), cwd=path.parent).returncode == 1
    text = run_qtasks("history", "-c", str(path), cwd=path.parent)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split()[:3] == ["RUN", "JOB", "TRIGGER"]
    assert lines[1].split()[1] == "bad" and "RuntimeError: boom" in lines[1]  # newest first
    assert len(lines) == 5
    full = history(path)
    assert [r["job"] for r in full] == ["bad", "good", "good", "good"]
    bad = full[0]
    assert bad["status"] == "failed" and bad["attempts"] == 2
    assert 'raise RuntimeError("boom")' in bad["traceback"]
    assert bad["pid"] and bad["host"]
    assert [r["job"] for r in history(path, "--status", "failed")] == ["bad"]
    assert len(history(path, "good")) == 3
    stats = run_qtasks("history", "-c", str(path), "--stats", cwd=path.parent)
    assert stats.returncode == 0
    good_line = next(line for line in stats.stdout.splitlines() if line.startswith("good"))
    assert good_line.split()[1:5] == ["3", "3", "0", "100.0%"]
    bad_line = next(line for line in stats.stdout.splitlines() if line.startswith("bad"))
    assert bad_line.split()[1:5] == ["1", "0", "1", "0.0%"]
    unknown = run_qtasks("history", "nope", "-c", str(path), cwd=path.parent)
    assert unknown.returncode == 2 and "no job named 'nope'" in unknown.stderr
    bad_status = run_qtasks("history", "-c", str(path), "--status", "weird", cwd=path.parent)
    assert bad_status.returncode == 2 and "expected one of" in bad_status.stderr


def test_state_override_and_env(project, tmp_path: Path) -> None:
    path = project(
        "jobs:\n  good:\n    entrypoint: work:record\n    kwargs: {order_id: 1}\n", work=WORK
    )
    other = tmp_path / "elsewhere" / "h.db"
    assert (
        run_qtasks(
            "trigger", "good", "-c", str(path), "--state", str(other), cwd=path.parent
        ).returncode
        == 0
    )
    assert other.exists() and not (path.parent / ".qtasks").exists()
    assert len(history(path, "--state", str(other))) == 1
    assert (other.stat().st_mode & 0o777) == 0o600
    assert (other.parent.stat().st_mode & 0o777) == 0o700
    assert datetime.now(timezone.utc)  # keep the import honest


def test_a_handed_over_run_starts_within_a_second(project, daemons) -> None:
    path = project(
        "jobs:\n  stamp:\n    entrypoint: work:stamp\n",
        work=WORK
        + """
def stamp(n):
    with open(f"stamp-{n}", "w") as f:
        f.write(repr(time.time()))
""",
    )
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: "stamp no schedule" in log)
    time.sleep(1.5)  # well past the daemon's first look at the queue
    import sys

    import qtasks_cli
    from qtasks_cli import entrypoints

    # enqueue() imports the entry point here to check its signature: forget the `work`
    # modules other tests of this process imported.
    sys.modules.pop("work", None)
    entrypoints._cache.clear()

    delays = []
    for n in range(3):
        before = time.time()
        qtasks_cli.enqueue("stamp", n=n, config=str(path))
        stamp = path.parent / f"stamp-{n}"
        deadline = time.monotonic() + 10
        while not stamp.exists() or not stamp.read_text():
            assert time.monotonic() < deadline, daemon.output
            time.sleep(0.01)
        delays.append(float(stamp.read_text()) - before)
    assert daemon.stop() == 0
    assert max(delays) < 1.0, delays
