"""``isolation: process`` when the job forks: a copy of the child that speaks on the inherited
pipes (returns into qtasks' code, writes frames or garbage) never gives a run a result that is not
its own, and the daemon's side drops what it says."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from qtasks_cli import entrypoints
from qtasks_cli.executor import execute
from qtasks_cli.models import Isolation, JobSpec, RunResult, RunStatus, TriggerKind
from qtasks_cli.pickled import loaded
from qtasks_cli.runtime import Runtime

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="os.fork")

MODULE = "qtfork_jobs"
JOBS = '''
import os
import pickle
import time

from qtasks_cli import frames


def _wait_copy(pid):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.01)


def copy_returns(tag):
    """The copy returns too, into qtasks' code, with its own value."""
    pid = os.fork()
    if pid == 0:
        return f"copy of {tag}"
    _wait_copy(pid)
    return f"parent of {tag}"


def copy_raises(tag):
    pid = os.fork()
    if pid == 0:
        raise SystemExit(f"copy of {tag} leaves")
    _wait_copy(pid)
    return f"parent of {tag}"


def _every_fd(data):
    for fd in range(3, 256):
        try:
            os.write(fd, data)
        except OSError:
            pass


def copy_writes_frames(tag):
    """The copy writes well-formed 'done' frames for this and later calls on every fd."""
    pid = os.fork()
    if pid == 0:
        for call in range(0, 8):
            _every_fd(frames.frame("done", pickle.dumps(f"forged {call}"), call=call))
        os._exit(0)
    _wait_copy(pid)
    return f"parent of {tag} from {os.getpid()}"


def copy_forges_the_child(tag):
    """A copy made by fork(2) itself (no Python at-fork hooks run: a C library forking) writes
    frames that claim to be the child's, for this and the next calls, on every descriptor."""
    import ctypes

    from qtasks_cli import frames

    pid = ctypes.CDLL(None).fork()
    if pid == 0:
        child = os.getppid()
        for call in range(0, 8):
            payload = pickle.dumps(f"forged {call}")
            header = frames.HEADER.pack(frames.MAGIC, child, call, 4, len(payload))
            _every_fd(header + b"done" + payload)
        os._exit(0)
    _wait_copy(pid)
    return f"parent of {tag} from {os.getpid()}"


def copy_writes_garbage(tag):
    pid = os.fork()
    if pid == 0:
        _every_fd(b"garbage from a forked copy\\n" * 10)
        os._exit(0)
    _wait_copy(pid)
    return f"parent of {tag}"


def plain(tag):
    return f"plain {tag} from {os.getpid()}"
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("isolation-fork")
    (path / f"{MODULE}.py").write_text(JOBS)
    sys.path.insert(0, str(path))
    yield path
    sys.path.remove(str(path))
    sys.modules.pop(MODULE, None)
    entrypoints.clear_cache()


def spec(entry: str, name: str | None = None) -> JobSpec:
    return JobSpec(
        name=name or entry,
        entrypoint=f"{MODULE}:{entry}",
        isolation=Isolation.PROCESS,
        timeout=None,
    )


def run_all(*calls: tuple[JobSpec, str]) -> list[RunResult]:
    async def main() -> list[RunResult]:
        runtime = Runtime(8)
        try:
            results = []
            for n, (job, tag) in enumerate(calls):
                result = await execute(
                    job,
                    run_id=f"r{n}",
                    trigger=TriggerKind.MANUAL,
                    scheduled=None,
                    runtime=runtime,
                    emit=lambda _: None,
                    kwargs={"tag": tag},
                )
                results.append(replace(result, result=await loaded(result.result)))
            return results
        finally:
            runtime.shutdown()

    return asyncio.run(main())


@pytest.mark.parametrize("entry", ["copy_returns", "copy_raises"])
def test_a_copy_that_returns_into_qtasks_stays_silent(folder: Path, entry: str) -> None:
    job = spec(entry)
    results = run_all((job, "one"), (job, "two"), (job, "three"))
    assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 3, results
    assert [r.result for r in results] == ["parent of one", "parent of two", "parent of three"]


def test_frames_of_a_copy_are_dropped_and_the_child_is_not_reused(folder: Path) -> None:
    forks, after = spec("copy_writes_frames"), spec("plain", name="copy_writes_frames")
    results = run_all((forks, "one"), (after, "two"), (after, "three"), (forks, "four"))
    first, second, third, fourth = results
    assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 4, results
    assert first.result.startswith("parent of one from ")
    assert second.result.startswith("plain two from ")
    assert third.result.startswith("plain three from ")
    assert fourth.result.startswith("parent of four from ")
    pids = [int(r.result.rsplit(" ", 1)[1]) for r in results]
    # The child whose pipes a copy wrote on was retired (killed with its process group): the
    # next run had a new process; a clean child is reused as usual.
    assert pids[1] != pids[0]
    assert pids[2] == pids[1]
    assert all("forged" not in str(r.result) for r in results)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_PASSCRED is Linux's")
def test_frames_forged_with_the_childs_pid_are_dropped(folder: Path) -> None:
    forks, after = spec("copy_forges_the_child"), spec("plain", name="copy_forges_the_child")
    results = run_all((forks, "one"), (after, "two"), (forks, "three"), (after, "four"))
    assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 4, results
    assert all("forged" not in str(r.result) for r in results), results
    assert results[0].result.startswith("parent of one from ")
    assert results[1].result.startswith("plain two from ")
    assert results[2].result.startswith("parent of three from ")
    pids = [int(r.result.rsplit(" ", 1)[1]) for r in results]
    assert pids[1] != pids[0] and pids[3] != pids[2]  # a child spoken for is not reused


def test_garbage_on_the_pipe_fails_that_run_only(folder: Path) -> None:
    results = run_all(
        (spec("copy_writes_garbage"), "one"),
        (spec("plain", name="copy_writes_garbage"), "two"),
        (spec("plain", name="other"), "three"),
    )
    first, second, third = results
    # The garbage may be read before or after the real answer: the run either fails with an
    # honest reason or keeps its own result; never another's.
    if first.status is RunStatus.SUCCEEDED:
        assert first.result == "parent of one"
    else:
        assert first.status is RunStatus.FAILED
        assert "not a qtasks frame" in (first.error or ""), first
        assert "out of memory" not in (first.error or ""), first
    assert second.status is RunStatus.SUCCEEDED and second.result.startswith("plain two")
    assert third.status is RunStatus.SUCCEEDED and third.result.startswith("plain three")
