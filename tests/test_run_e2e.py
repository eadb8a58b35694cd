"""``qtasks run`` and ``qtasks trigger`` end to end, through the installed command."""

from __future__ import annotations

import itertools
import json
import re
import signal
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import run_qtasks

JOBS = """
settings:
  shutdown_grace: 10s
jobs:
  tick:
    entrypoint: work:tick
    schedule: "* * * * * *"
  slow:
    entrypoint: work:slow
    schedule: every 2s
"""

WORK = """
import time
from pathlib import Path

async def tick():
    return "tock"

def slow():
    time.sleep(1.5)
    Path("slow-finished").write_text("yes")
    return 1
"""

FIRED = re.compile(r" (\w+) \w+ fired \((\w+) (\S+)\)")


def fired(log: str, job: str) -> list[datetime]:
    return [datetime.fromisoformat(m.group(3)) for m in FIRED.finditer(log) if m.group(1) == job]


def assert_every_second(times: list[datetime]) -> None:
    assert len(times) >= 2, times
    gaps = {b - a for a, b in itertools.pairwise(times)}
    assert gaps == {timedelta(seconds=1)}, times


def test_sigterm_waits_for_running_job_and_every_fire_is_logged(project, daemons) -> None:
    path = project(JOBS, work=WORK)
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(
        lambda log: (
            len(fired(log, "tick")) >= 3
            and " slow " in log
            and "started" in log.split(" slow ", 1)[1]
        ),
        timeout=15,
    )
    # Send SIGTERM while 'slow' is still inside its 1.5 s sleep.
    daemon.wait_for(
        lambda log: log.count("slow") and re.search(r" slow \w+ started", log) is not None
    )
    assert daemon.stop(signal.SIGTERM) == 0
    log = daemon.output
    assert (path.parent / "slow-finished").exists(), log
    assert re.search(r" slow \w+ succeeded", log), log
    assert_every_second(fired(log, "tick"))
    # Every tick that fired also finished, exactly once.
    runs = re.findall(r" tick (\w+) fired", log)
    assert len(runs) == len(set(runs))
    for run_id in runs:
        assert log.count(f"tick {run_id} succeeded") == 1, run_id


def test_prints_next_fire_per_job_at_start(project, daemons) -> None:
    path = project(
        JOBS
        + """
  manual:
    entrypoint: work:tick
""",
        work=WORK,
    )
    daemon = daemons([str(path)], cwd=path.parent)
    log = daemon.wait_for(lambda log: "manual" in log)
    assert re.search(r"tick next fire \S+", log), log
    assert re.search(r"slow next fire \S+", log), log
    assert "manual no schedule; runs when triggered" in log
    assert daemon.stop() == 0


def test_sighup_with_broken_file_keeps_old_jobs(project, daemons) -> None:
    path = project(JOBS, work=WORK)
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: len(fired(log, "tick")) >= 1)
    good = path.read_text()
    path.write_text(good + "  broken:\n    entrypoint: work:nothere\n    schedul: 5\n")
    daemon.send(signal.SIGHUP)
    log = daemon.wait_for(lambda log: "reload failed" in log)
    assert "jobs.broken" in log and "did you mean 'schedule'" in log
    # The file's problems follow the record's line, one per line, not as a literal \n.
    lines = log.splitlines()
    at = next(i for i, line in enumerate(lines) if "reload failed" in line)
    assert lines[at].endswith("(the old configuration keeps running):"), lines[at]
    assert "\\n" not in lines[at] and lines[at + 1].startswith("  "), lines[at : at + 2]
    assert "jobs.broken" in lines[at + 1], lines[at : at + 2]
    before = len(fired(log, "tick"))
    daemon.wait_for(lambda log: len(fired(log, "tick")) >= before + 2)
    # A good file is taken: the new job runs.
    path.write_text(good + "  extra:\n    entrypoint: work:tick\n    schedule: '* * * * * *'\n")
    daemon.send(signal.SIGHUP)
    daemon.wait_for(lambda log: "1 added" in log and len(fired(log, "extra")) >= 1)
    assert daemon.stop() == 0
    assert_every_second(fired(daemon.output, "tick"))


def test_second_sigint_exits_130(project, daemons) -> None:
    path = project(
        """
settings:
  shutdown_grace: 60s
jobs:
  stuck:
    entrypoint: work:stuck
    schedule: "* * * * * *"
""",
        work="import time\ndef stuck():\n    time.sleep(30)\n",
    )
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: "stuck" in log and "started" in log)
    daemon.send(signal.SIGINT)
    daemon.wait_for(lambda log: "stopping" in log)
    assert daemon.stop(signal.SIGINT, timeout=10) == 130


def test_run_refuses_a_bad_file_and_starts_nothing(project) -> None:
    path = project(
        """
jobs:
  a:
    entrypoint: work:tick
    schedule: "61 * * * *"
""",
        work=WORK,
    )
    result = run_qtasks("run", "--ui", "plain", str(path), cwd=path.parent, timeout=20)
    assert result.returncode == 2
    assert "jobs.yaml:5:" in result.stderr and "minute" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (path.parent / ".qtasks").exists()


TRIGGER_JOBS = """
jobs:
  good:
    entrypoint: work:good
  flaky:
    entrypoint: work:flaky
    retry: {retries: 2, delay: 0s}
    retry_on: [ConnectionError]
  export:
    entrypoint: work:export
    generate_handler: work:handle
    echo: true
"""

TRIGGER_WORK = """
def good(order_id=1):
    return {"order": order_id}

def flaky():
    raise ConnectionRefusedError("CRM down")

def export(n=3):
    for i in range(n):
        yield i

def handle(item):
    return f"item-{item}"
"""


def test_trigger_exit_codes(project) -> None:
    path = project(TRIGGER_JOBS, work=TRIGGER_WORK)
    ok = run_qtasks("trigger", "good", "-c", str(path), "--kwarg", "order_id=42", cwd=path.parent)
    assert ok.returncode == 0, ok.stderr
    assert "succeeded" in ok.stderr
    failed = run_qtasks("trigger", "flaky", "-c", str(path), cwd=path.parent)
    assert failed.returncode == 1, failed.stderr
    assert failed.stderr.count("attempt failed") == 3
    assert "ConnectionRefusedError: CRM down" in failed.stderr
    unknown = run_qtasks("trigger", "goood", "-c", str(path), cwd=path.parent)
    assert unknown.returncode == 2
    assert "did you mean 'good'?" in unknown.stderr
    bad_args = run_qtasks("trigger", "good", "-c", str(path), "--kwarg", "nope=1", cwd=path.parent)
    assert bad_args.returncode == 2
    assert "nope" in bad_args.stderr and "Traceback" not in bad_args.stderr


def test_trigger_echoes_generator_items(project) -> None:
    path = project(TRIGGER_JOBS, work=TRIGGER_WORK)
    result = run_qtasks("trigger", "export", "-c", str(path), "--kwarg", "n=2", cwd=path.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["'item-0'", "'item-1'"]
    assert "2 item(s)" in result.stderr


def test_trigger_records_a_manual_run(project) -> None:
    path = project(TRIGGER_JOBS, work=TRIGGER_WORK)
    assert run_qtasks("trigger", "good", "-c", str(path), cwd=path.parent).returncode == 0
    hist = run_qtasks("history", "-c", str(path), "--json", cwd=path.parent)
    assert hist.returncode == 0, hist.stderr
    assert '"trigger": "manual"' in hist.stdout and '"status": "succeeded"' in hist.stdout


def test_history_of_a_job_the_file_no_longer_has_shows_its_runs(project) -> None:
    """A job removed from the file keeps its history: ``history JOB`` shows its rows (with a
    note that the file no longer has it), as ``history`` without JOB does; a name with no row
    and no job is still refused (exit 2), with the file's jobs."""
    path = project(TRIGGER_JOBS, work=TRIGGER_WORK)
    assert run_qtasks("trigger", "good", "-c", str(path), cwd=path.parent).returncode == 0
    text = path.read_text()
    path.write_text(text.replace("good:", "renamed:", 1))
    for extra in ([], ["--json"], ["--stats"]):
        shown = run_qtasks("history", "good", *extra, "-c", str(path), cwd=path.parent)
        assert shown.returncode == 0, shown.stderr
        assert "good" in shown.stdout and "is not in" in shown.stderr, (shown.stdout, shown.stderr)
    typo = run_qtasks("history", "goood", "-c", str(path), cwd=path.parent)
    assert typo.returncode == 2 and "no job named 'goood'" in typo.stderr, typo.stderr


def test_example_file_validates() -> None:
    root = Path(__file__).resolve().parent.parent
    result = run_qtasks("validate", str(root / "jobs.example.yaml"), cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4 jobs OK"


EARLY = """
import time
from pathlib import Path

async def tick_async():
    with open("starts.txt", "a") as f:
        f.write(f"{time.time():.6f}\\n")

def tick_sync():
    with open("starts.txt", "a") as f:
        f.write(f"{time.time():.6f}\\n")

async def tick_skip():  # ends a few ms before the next instant, inside the loop's lead
    import asyncio
    await asyncio.sleep(0.997 - time.time() % 1)


async def hold_slot():  # holds the only slot until a few ms before the next instant
    import asyncio
    await asyncio.sleep(0.997 - time.time() % 1)


async def hog():
    import asyncio
    await asyncio.sleep(5)


async def tick_queue():  # ends a few ms before the next instant: its fire waits behind it
    import asyncio
    with open("starts.txt", "a") as f:
        f.write(f"{time.time():.6f}\\n")
    await asyncio.sleep(0.997 - time.time() % 1)
"""


@pytest.mark.parametrize(
    ("kind", "timeout"),
    [
        ("async", ""),
        ("sync", ""),
        ("async", "    timeout: 2s\n"),
        ("sync", "    timeout: 2s\n"),
        ("queue", "    overlap: queue\n"),
        ("async", "slot"),
        ("sync", "slot"),
        ("sync", "slot    isolation: process\n"),
        ("async", "slot    timeout: 2s\n"),
    ],
)
def test_no_body_starts_before_its_instant(project, daemons, kind: str, timeout: str) -> None:
    """Invariant: a body never starts before its scheduled instant (a midnight job must see
    the new day): with or without a timeout (which runs the attempt in a task of its own), and
    when it waited behind its job's run that ended just before the instant; ``slot``: when it
    waited for the only max_concurrent slot, which a run of another job gives back a few
    milliseconds before the instant (the burst then held no run at its gate)."""
    text = f"jobs:\n  t:\n    entrypoint: early:tick_{kind}\n    schedule: '* * * * * *'\n"
    if timeout.startswith("slot"):
        text = (
            "settings:\n  max_concurrent: 1\n"
            + text
            + timeout.removeprefix("slot")
            + "  holder:\n    entrypoint: early:hold_slot\n    schedule: '* * * * * *'\n"
        )
    else:
        text += timeout
    path = project(text, early=EARLY)
    daemon = daemons([str(path)], cwd=path.parent)
    starts_file = path.parent / "starts.txt"
    daemon.wait_for(
        lambda _: starts_file.exists() and len(starts_file.read_text().split()) >= 6, timeout=30
    )
    assert daemon.stop() == 0
    starts = [float(x) for x in starts_file.read_text().split()]
    # Every fire is on a whole second; a start in the last 100 ms of a second is early.
    early = [s for s in starts if s - int(s) > 0.9]
    assert not early, [f"{s:.6f}" for s in starts]


def test_a_run_waiting_for_a_slot_never_starts_once_the_stop_began(project, daemons) -> None:
    """Invariant: after SIGTERM nothing new starts. A run still waiting for a max_concurrent
    slot when the stop begins is recorded ``cancelled at shutdown`` at once, and does not
    start when the run holding the slot ends within the grace."""
    path = project(
        "settings:\n  max_concurrent: 1\n  shutdown_grace: 30s\n"
        "jobs:\n  hog:\n    entrypoint: early:hog\n    schedule: '@startup'\n"
        "  t:\n    entrypoint: early:tick_sync\n    schedule: '* * * * * *'\n",
        early=EARLY,
    )
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: len(fired(log, "t")) >= 1, timeout=30)
    assert daemon.stop(timeout=60) == 0, daemon.output
    assert not (path.parent / "starts.txt").exists(), daemon.output  # no body of t ever ran
    listed = run_qtasks("history", "--json", "-c", str(path), cwd=path.parent)
    assert listed.returncode == 0, listed.stderr
    waiting = [r for r in map(json.loads, listed.stdout.splitlines()) if r["job"] == "t"]
    assert waiting and all(
        r["status"] == "skipped" or (r["status"] == "cancelled" and r["started"] is None)
        for r in waiting
    ), waiting
    assert any(r["error"] == "cancelled at shutdown" for r in waiting), waiting
    hog = [r for r in map(json.loads, listed.stdout.splitlines()) if r["job"] == "hog"]
    assert [r["status"] for r in hog] == ["succeeded"], hog  # it ended within the grace


def test_overlap_is_decided_on_the_instant_not_before_it(project, daemons) -> None:
    """Invariant: a job is never skipped for a run that ends before the fire's instant. The
    loop takes a fire a few milliseconds early to prepare its run; a job still running then
    is decided on the instant itself, so a skip is never recorded before it."""
    path = project(
        "jobs:\n  t:\n    entrypoint: early:tick_skip\n    schedule: '* * * * * *'\n"
        "    overlap: skip\n",
        early=EARLY,
    )
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: len(fired(log, "t")) >= 6, timeout=30)
    assert daemon.stop() == 0
    listed = run_qtasks("history", "t", "--json", "-c", str(path), cwd=path.parent)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    early = [
        r
        for r in rows
        if r["status"] == "skipped"
        and datetime.fromisoformat(r["ended"]) < datetime.fromisoformat(r["scheduled"])
    ]
    assert not early, early
