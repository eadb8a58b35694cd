"""One run, one body at a time: a job in a child process that forks cannot hand a run a result that
is not its own, and a retry never starts beside an attempt whose thread still runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.harness import Outcome, Scenario, assert_all, assert_healthy, run_scenarios
from reliability.registry import case

FORKS = """
import os
import pickle
import stat
import time

from qtasks_cli import frames, isolation


def _wait(pid):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.01)


def copy_returns():
    pid = os.fork()
    if pid == 0:
        return "from the copy"
    _wait(pid)
    return f"parent {os.getpid()}"


def copy_writes_frames():
    pid = os.fork()
    if pid == 0:
        for call in range(64):
            frame = frames.frame("done", pickle.dumps("forged"), call=call)
            for fd in range(3, 64):
                try:
                    os.write(fd, frame)
                except OSError:
                    pass
        os._exit(0)
    _wait(pid)
    return f"parent {os.getpid()}"


def _sockets():
    for fd in range(3, 64):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                yield fd
        except OSError:
            pass


def copy_forges_the_child():
    # fork(2) from C (no at-fork hooks): frames claiming the child's pid, every call
    import ctypes

    pid = ctypes.CDLL(None).fork()
    if pid == 0:
        child = os.getppid()
        for call in range(64):
            payload = pickle.dumps("forged")
            header = frames.HEADER.pack(frames.MAGIC, child, call, 4, len(payload))
            for fd in _sockets():
                try:
                    os.write(fd, header + b"done" + payload)
                except OSError:
                    pass
        os._exit(0)
    _wait(pid)
    return f"parent {os.getpid()}"


def absurd_length():
    # the child itself writes a header announcing 2**62 bytes on its channel
    header = frames.HEADER.pack(frames.MAGIC, os.getpid(), 1, 4, 2**62)
    for fd in _sockets():
        os.write(fd, header + b"done")
    time.sleep(5)
    return "never read"
"""

ATTEMPTS = """
import threading
import time
from pathlib import Path

RELEASE = threading.Event()


def slow_first(tag):
    marks = Path(f"marks-{tag}.txt")
    count = Path(f"count-{tag}.txt")
    number = int(count.read_text()) + 1 if count.exists() else 1
    count.write_text(str(number))
    with marks.open("a") as fh:
        fh.write(f"enter {number} {time.time():.6f}\\n")
    try:
        if number == 1:
            time.sleep(1.5)  # outlives its 1 s timeout, then fails
            raise ConnectionError("late failure")
        return f"attempt {number}"
    finally:
        with marks.open("a") as fh:
            fh.write(f"exit {number} {time.time():.6f}\\n")


def hangs():
    RELEASE.wait(3600)
"""

FORK_JOBS = """
copy_returns:
  entrypoint: rel_forks:copy_returns
  isolation: process
  schedule: "*/2 * * * * *"
copy_writes_frames:
  entrypoint: rel_forks:copy_writes_frames
  isolation: process
  schedule: "*/2 * * * * *"
copy_forges_the_child:
  entrypoint: rel_forks:copy_forges_the_child
  isolation: process
  schedule: "*/2 * * * * *"
absurd_length:
  entrypoint: rel_forks:absurd_length
  isolation: process
  schedule: "*/3 * * * * *"
"""

ATTEMPT_JOBS = """
slow_first:
  entrypoint: rel_attempts:slow_first
  kwargs: {tag: sched}
  schedule: "*/4 * * * * *"
  timeout: 1s
  retry: {retries: 2, delay: 0s}
hangs_with_retries:
  entrypoint: rel_attempts:hangs
  schedule: "*/3 * * * * *"
  timeout: 500ms
  retry: {retries: 3, delay: 0s}
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    root = Path(tmp_path_factory.mktemp("attempts"))
    scenarios = [
        Scenario(name="forks", jobs=FORK_JOBS, modules={"rel_forks": FORKS}, ticks=6),
        Scenario(
            name="attempts",
            jobs=ATTEMPT_JOBS,
            modules={"rel_attempts": ATTEMPTS},
            settings="shutdown_grace: 1s\nmax_concurrent: 32\n",
            ticks=7,
        ),
    ]
    return run_scenarios(scenarios, root)


@case(
    "forked_copy_speaks",
    group="job faults (isolation: process)",
    title="a job in a child process forks; the copy returns into qtasks' code, or writes "
    "well-formed result frames for every call on every descriptor",
    checks="every run `succeeded` with the parent's own result, never `from the copy` or "
    "`forged`; the copy's frames are dropped and logged; the per-second job keeps its times",
)
def test_forked_copy_speaks(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["forks"]
    assert_healthy(out)
    for job in ("copy_returns", "copy_writes_frames"):
        rows = [r for r in out.of(job) if r["status"] != "cancelled"]
        assert_all(rows, status="succeeded", at_least=2, result="parent ")
    assert "dropped" in out.log


@case(
    "forged_child_pid",
    group="job faults (isolation: process)",
    title="a copy forked by fork(2) itself (no Python at-fork hook runs) writes result frames "
    "that carry the child's pid, for every call, on every socket it inherited",
    checks="every run `succeeded` with the parent's own result, never `forged`: the kernel "
    "names the writer of every message (SCM_CREDENTIALS) and the copy's are dropped, logged",
)
def test_forged_child_pid(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["forks"]
    assert_healthy(out)
    rows = [r for r in out.of("copy_forges_the_child") if r["status"] != "cancelled"]
    assert_all(rows, status="succeeded", at_least=2, result="parent ")
    assert "not the child, wrote on its channel" in out.log


@case(
    "frame_length_absurd",
    group="job faults (isolation: process)",
    title="a process job's child writes a frame header announcing 2**62 bytes on its channel",
    checks="nothing is allocated for it: the run `failed` with `not a qtasks frame` and the "
    "limit in its error, no qtasks traceback; the per-second job keeps its times",
)
def test_frame_length_absurd(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["forks"]
    assert_healthy(out)
    rows = [r for r in out.of("absurd_length") if r["status"] != "cancelled"]
    assert_all(rows, status="failed", at_least=1, error="not a qtasks frame")
    assert all("over the limit" in (r["error"] or "") for r in rows), rows
    assert "MemoryError" not in out.log


def _marks(path: Path) -> list[tuple[str, int, float]]:
    rows = []
    for line in path.read_text().splitlines():
        kind, number, when = line.split()
        rows.append((kind, int(number), float(when)))
    return rows


@case(
    "attempts_never_overlap",
    group="job faults (inline)",
    title="attempt 1 of a sync job outlives its `timeout: 1s` by 0.5 s, then fails; "
    "`retry: 2`. Another job hangs for good with `timeout: 500ms`, `retry: 3`",
    checks="attempt 2 starts only after attempt 1's thread has returned and succeeds; the "
    "hanging job's runs end `timed_out` after one attempt, `not retried` in the error, with "
    "one stuck thread, not four",
)
def test_attempts_never_overlap(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["attempts"]
    assert_healthy(out)
    marks = _marks(out.config.parent / "marks-sched.txt")
    exit_1 = next(t for kind, n, t in marks if kind == "exit" and n == 1)
    enter_2 = next(t for kind, n, t in marks if kind == "enter" and n == 2)
    assert enter_2 >= exit_1, marks
    assert [n for kind, n, _ in marks if kind == "enter"][:2] == [1, 2], marks
    first = out.of("slow_first")[0]
    assert first["status"] == "succeeded" and first["attempts"] == 2, first
    rows = [r for r in out.of("hangs_with_retries") if r["status"] not in ("skipped", "cancelled")]
    assert_all(rows, status="timed_out", at_least=1, error="not retried")
    assert all(r["attempts"] == 1 for r in rows), rows
