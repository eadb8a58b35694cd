"""``isolation: process``: jobs in reused child processes, through ``execute`` and the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import run_qtasks

from qtasks_cli import entrypoints
from qtasks_cli.events import Event, EventKind
from qtasks_cli.executor import execute
from qtasks_cli.models import Isolation, JobSpec, RetryPolicy, RunResult, RunStatus, TriggerKind
from qtasks_cli.pickled import loaded
from qtasks_cli.runtime import Runtime

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups and signals")

MODULE = "qtiso_jobs"
SECRET = "hunter2-sekret"
GRACE = timedelta(seconds=0.5)

JOBS = """
import asyncio
import ctypes
import os
import resource
import signal
import sys
import threading
from pathlib import Path

HERE = Path(__file__).parent
with (HERE / "imports.log").open("a") as log:
    log.write(f"{os.getpid()}\\n")


class Flaky(ConnectionError):
    pass


def pid():
    return os.getpid()


async def async_pid():
    await asyncio.sleep(0)
    return os.getpid()


def returns_awaitable():
    return async_pid()


def add(a, b=0, *, scale=1):
    return (a + b) * scale


def _unpickled_in(path, pid):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\\n")
    return Marked(path, pid)


class Marked:
    # Notes in its path the pid of every process that unpickles it.

    def __init__(self, path, pid):
        self.path, self.pid = path, pid

    def __reduce__(self):
        return (_unpickled_in, (self.path, self.pid))

    def __repr__(self):
        return f"Marked(made in {self.pid})"


def marked(path, token=""):
    return {"token": token, "value": Marked(path, os.getpid())}


def hook_sees(result):
    with open(result.result["value"].path + ".hook", "w") as f:
        f.write(type(result.result["value"]).__name__)


def unpicklable():
    return threading.Lock()


def die(how=None):
    if how == "segfault":
        ctypes.string_at(0)
    elif how == "exit3":
        os._exit(3)
    elif how == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def memory_error():
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, hard))
    try:
        return len(bytearray(8 * 1024**3))
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def vandal(phase):
    if phase == "break":
        sys.stdout.close()
        os.close(1)
        os.close(2)
        os.close(0)
        os.chdir("/")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return os.getpid()
    print("the next call can print", flush=True)
    sys.stderr.write("and write to stderr\\n")
    handler = signal.getsignal(signal.SIGTERM)
    return os.getpid(), os.getcwd(), handler not in (signal.SIG_IGN, signal.SIG_DFL)


def busy(pidfile):
    Path(pidfile).write_text(str(os.getpid()))
    while True:
        pass


def stubborn(pidfile):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    busy(pidfile)


def count(n):
    for i in range(n):
        yield {"i": i, "pid": os.getpid()}


async def acount(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield {"i": i, "pid": os.getpid()}


def closable(marker):
    try:
        for i in range(3):
            yield (i, os.getpid())
    finally:
        Path(marker).write_text(str(os.getpid()))


def yields_a_lock(marker):
    try:
        yield 1
        yield threading.Lock()
    finally:
        Path(marker).write_text("closed")


def in_parent(item):
    return {**item, "handled_in": os.getpid()}


async def in_parent_async(item):
    await asyncio.sleep(0)
    return {**item, "handled_in": os.getpid()}


def handler_fails(item):
    if item[0] == 1:
        raise ValueError(f"cannot handle item {item[0]}")
    return item


def fails(token):
    inner(token)


def inner(token):
    raise ValueError(f"bad token {token}")


def exits():
    sys.exit(4)


def flaky(counter):
    path = Path(counter)
    n = int(path.read_text()) if path.exists() else 0
    path.write_text(str(n + 1))
    raise Flaky(f"attempt {n + 1}")


def fork_then_exit(pidfile):
    grandchild = os.fork()
    if grandchild == 0:  # inherits the pipe to the daemon and keeps it open
        import time

        time.sleep(300)
        os._exit(0)
    Path(pidfile).write_text(str(grandchild))
    os._exit(3)


def crash_once(marker):
    if not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        ctypes.string_at(0)
    return os.getpid()


def sleep_then_pid(seconds):
    import time

    time.sleep(seconds)
    return os.getpid()
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A module of jobs on sys.path; children get the parent's sys.path."""
    path = tmp_path_factory.mktemp("isolation")
    (path / f"{MODULE}.py").write_text(JOBS)
    sys.path.insert(0, str(path))
    yield path
    sys.path.remove(str(path))
    sys.modules.pop(MODULE, None)
    entrypoints.clear_cache()


def spec(entry: str, **fields: Any) -> JobSpec:
    fields.setdefault("name", entry)
    fields.setdefault("kill_grace", GRACE)
    return JobSpec(entrypoint=f"{MODULE}:{entry}", isolation=Isolation.PROCESS, **fields)


async def no_sleep(seconds: float) -> None:
    pass


async def run_in(
    runtime: Runtime, job: JobSpec, events: list[Event] | None = None, **kwargs: Any
) -> RunResult:
    result = await execute(
        job,
        run_id="r1",
        trigger=TriggerKind.MANUAL,
        scheduled=None,
        runtime=runtime,
        emit=(events if events is not None else []).append,
        sleep=no_sleep,
        **kwargs,
    )
    # The daemon keeps a process job's value pickled (pickled.py): these tests look inside.
    return replace(result, result=await loaded(result.result))


def run_all(*jobs: JobSpec, events: list[Event] | None = None) -> list[RunResult]:
    """Run the jobs one after the other in one runtime, then shut it down."""

    async def main() -> list[RunResult]:
        runtime = Runtime(8)
        try:
            return [await run_in(runtime, job, events) for job in jobs]
        finally:
            runtime.shutdown()

    return asyncio.run(main())


def exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def idle_pids(runtime: Runtime) -> list[int]:
    return [w.pid for ws in runtime.workers._idle.values() for w in ws]


# --- calls, results, reuse -----------------------------------------------------------------------


def test_runs_in_a_reused_child_that_imports_the_module_once(folder: Path) -> None:
    async def main() -> tuple[list[RunResult], list[int]]:
        runtime = Runtime(8)
        try:
            results = [await run_in(runtime, spec("pid")) for _ in range(3)]
            return results, idle_pids(runtime)
        finally:
            runtime.shutdown()

    results, idle = asyncio.run(main())
    assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 3
    child = results[0].result
    assert isinstance(child, int) and child != os.getpid()
    assert [r.result for r in results] == [child] * 3
    assert idle == [child]
    imports = (folder / "imports.log").read_text().split()
    assert imports.count(str(child)) == 1
    assert not exists(child)  # shutdown stopped and reaped it


def test_a_reused_child_is_reset_before_each_call(folder: Path) -> None:
    # A job that closed the child's stdio, changed directory and ignored SIGTERM must not
    # break or change the next call in the same child.
    results = run_all(
        spec("vandal", kwargs={"phase": "break"}), spec("vandal", kwargs={"phase": "check"})
    )
    assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 2, results
    child, cwd, handled = results[1].result
    assert child == results[0].result  # the same child, reused
    assert cwd == os.getcwd() and handled  # the directory the child started in


def test_arguments_cross_and_async_results_are_awaited(folder: Path) -> None:
    async def main() -> list[RunResult]:
        runtime = Runtime(8)
        try:
            return [
                await run_in(runtime, spec("add", args=(2,), kwargs={"b": 3, "scale": 10})),
                await run_in(runtime, spec("add"), args=(3, 4), kwargs={"scale": 2}),
                await run_in(runtime, spec("async_pid")),
                await run_in(runtime, spec("returns_awaitable")),
            ]
        finally:
            runtime.shutdown()

    from_job, given, awaited, awaitable = asyncio.run(main())
    assert from_job.result == 50 and from_job.result_preview == "50"
    assert given.result == 14
    for result in (awaited, awaitable):
        assert result.status is RunStatus.SUCCEEDED
        assert isinstance(result.result, int) and result.result != os.getpid()


def test_large_arguments_and_results_cross(folder: Path) -> None:
    big = "x" * 3_000_000

    async def main() -> RunResult:
        runtime = Runtime(8)
        try:
            return await run_in(runtime, spec("add"), args=(big, big))
        finally:
            runtime.shutdown()

    result = asyncio.run(main())
    assert result.status is RunStatus.SUCCEEDED
    assert result.result == big * 2


def test_the_daemon_never_unpickles_a_result_only_to_record_it(
    folder: Path, tmp_path: Path
) -> None:
    # Unpickling holds the GIL (3 million tuples: about 0.4 s of a frozen loop): the preview is
    # made in the child, with the secrets hidden, and the value is unpickled only for a hook.
    marks = tmp_path / "unpickled"
    job = spec("marked", kwargs={"path": str(marks), "token": SECRET})
    job = replace(job, secrets=((SECRET, "${TOKEN}"),))

    async def main() -> tuple[RunResult, RunResult]:
        runtime = Runtime(8)
        try:
            plain = await execute(
                job,
                run_id="r1",
                trigger=TriggerKind.MANUAL,
                scheduled=None,
                runtime=runtime,
                emit=lambda _: None,
            )
            hooked = await execute(
                replace(job, on_success=f"{MODULE}:hook_sees"),
                run_id="r2",
                trigger=TriggerKind.MANUAL,
                scheduled=None,
                runtime=runtime,
                emit=lambda _: None,
            )
            await runtime.settle_hooks(None)  # the hook runs on its own after the run
            return plain, hooked
        finally:
            runtime.shutdown()

    plain, hooked = asyncio.run(main())
    assert plain.status is RunStatus.SUCCEEDED, plain
    preview = plain.result_preview or ""
    assert SECRET not in preview and "${TOKEN}" in preview and "Marked(made in" in preview
    assert hooked.status is RunStatus.SUCCEEDED, hooked
    assert (tmp_path / "unpickled.hook").read_text() == "Marked"  # the hook got the value
    # Once, here, for the hook: the first run's value was never unpickled in the daemon.
    assert marks.read_text().split() == [str(os.getpid())]


def test_unpicklable_result_fails_the_run_and_the_child_serves_on(folder: Path) -> None:
    bad, good = run_all(spec("unpicklable", name="j"), spec("pid", name="j"))
    assert bad.status is RunStatus.FAILED
    assert bad.error_type == "TypeError"
    assert bad.error is not None
    assert f"the result of {MODULE}:unpicklable cannot be pickled" in bad.error
    assert "lock" in bad.error
    assert good.status is RunStatus.SUCCEEDED


def test_unpicklable_argument_fails_the_run_clearly(folder: Path) -> None:
    async def main() -> RunResult:
        runtime = Runtime(8)
        try:
            return await run_in(runtime, spec("add"), args=(threading.Lock(),))
        finally:
            runtime.shutdown()

    result = asyncio.run(main())
    assert result.status is RunStatus.FAILED
    assert result.error_type == "TypeError"
    assert result.error is not None
    assert "the arguments of job 'add' cannot be pickled" in result.error


# --- crashes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("segfault", "child exited with signal 11 (SIGSEGV)"),
        ("exit3", "child exited with code 3"),
        ("killed", "child was killed (SIGKILL), possibly out of memory"),
    ],
)
def test_a_dying_child_fails_the_run_and_the_next_run_gets_a_new_one(
    folder: Path, how: str, reason: str
) -> None:
    first, crashed, after = run_all(spec("die"), spec("die", kwargs={"how": how}), spec("die"))
    assert crashed.status is RunStatus.FAILED
    assert crashed.error == reason
    assert crashed.error_type == "qtasks_cli.isolation.ChildCrashed"
    assert after.status is RunStatus.SUCCEEDED
    assert after.result != first.result
    assert not exists(first.result)


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may wait for a PID 1 that never reaps)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_crash_is_seen_even_when_a_forked_process_holds_the_pipe(
    folder: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "grandchild"
    began = time.monotonic()
    (result,) = run_all(spec("fork_then_exit", kwargs={"pidfile": str(pidfile)}))
    # Far less than the grandchild's 300 s, with room for a machine busy on both cores.
    assert time.monotonic() - began < 60
    assert result.status is RunStatus.FAILED
    assert result.error == "child exited with code 3"
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 30
    while running(grandchild) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not running(grandchild)  # killed with the child's process group


def test_memory_error_is_an_ordinary_exception(folder: Path) -> None:
    (result,) = run_all(spec("memory_error"))
    assert result.status is RunStatus.FAILED
    assert result.error_type == "MemoryError"


@pytest.mark.parametrize("retry_on", [(), ("qtasks_cli.isolation:ChildCrashed",)])
def test_retries_go_on_in_a_fresh_child_after_a_crash(
    folder: Path, tmp_path: Path, retry_on: tuple[str, ...]
) -> None:
    marker = tmp_path / "crashed"
    policy = RetryPolicy(retries=1, on=retry_on, delay=GRACE)
    job = spec("crash_once", kwargs={"marker": str(marker)}, retry=policy)
    (result,) = run_all(job)
    assert result.status is RunStatus.SUCCEEDED
    assert result.attempts == 2
    assert [a.status for a in result.attempt_log] == [RunStatus.FAILED, RunStatus.SUCCEEDED]
    assert result.attempt_log[0].error == "child exited with signal 11 (SIGSEGV)"
    assert result.result != int(marker.read_text())


# --- timeouts and cancellation -------------------------------------------------------------------


def _wait_for_pid(path: Path, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.01)
    return int(path.read_text())


@pytest.mark.parametrize("entry", ["busy", "stubborn"])
def test_timeout_stops_the_child_sigterm_then_sigkill(
    folder: Path, tmp_path: Path, entry: str
) -> None:
    pidfile = tmp_path / "pid"
    job = spec(entry, kwargs={"pidfile": str(pidfile)}, timeout=timedelta(seconds=0.5))

    async def main() -> tuple[RunResult, float, bool | None]:
        runtime = Runtime(8)
        try:
            began = time.monotonic()
            result = await run_in(runtime, job)
            took = time.monotonic() - began
            # On a busy machine the 0.5 s can pass before the child has even started the job.
            started = pidfile.exists() and pidfile.read_text() != ""
            return result, took, exists(int(pidfile.read_text())) if started else None
        finally:
            runtime.shutdown()

    result, took, still_there = asyncio.run(main())
    assert result.status is RunStatus.TIMED_OUT
    assert result.error == "timed out after 500ms"
    assert not still_there  # gone (and reaped) when the run ends, not only at shutdown
    # Whatever the child was doing, the traceback shows only the job's own frames (none when
    # the job had not started yet).
    assert "qtasks_cli" not in (result.traceback or "")
    if still_there is None:
        assert result.traceback is None, result.traceback
    elif entry == "busy":
        # SIGTERM stopped it: the stack it reported (below) is only sent from the SIGTERM
        # handler. The bound only says it ended at all; time is not the point under load.
        assert took < 60
        assert result.traceback is not None
        assert "while True" in result.traceback or "write_text" in result.traceback
        assert "the child process was here when stopped" in result.traceback
    else:
        assert took >= 0.5 + GRACE.total_seconds()  # it ignored SIGTERM: SIGKILL after the grace
        assert took < 60


def test_cancelling_the_run_kills_the_child(folder: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    events: list[Event] = []

    async def main() -> None:
        runtime = Runtime(8)
        try:
            task = asyncio.create_task(
                run_in(runtime, spec("stubborn", kwargs={"pidfile": str(pidfile)}), events)
            )
            while not pidfile.exists() or not pidfile.read_text():
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not exists(int(pidfile.read_text()))
        finally:
            runtime.shutdown()

    asyncio.run(main())
    assert events[-1].status is RunStatus.CANCELLED


def test_the_loop_keeps_running_while_a_process_job_burns_cpu(folder: Path, tmp_path: Path) -> None:
    async def main() -> tuple[RunResult, int]:
        runtime = Runtime(8)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        job = spec("busy", kwargs={"pidfile": str(tmp_path / "pid")}, timeout=timedelta(seconds=1))
        tick_task = asyncio.create_task(ticker())
        try:
            return await run_in(runtime, job), ticks
        finally:
            tick_task.cancel()
            runtime.shutdown()

    result, ticks = asyncio.run(main())
    assert result.status is RunStatus.TIMED_OUT
    assert ticks >= 30  # ~100 possible in a second of busy loop


# --- generators ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "handler"),
    [("count", "in_parent"), ("acount", "in_parent_async"), ("count", None)],
)
def test_generators_stream_items_to_a_handler_in_the_parent(
    folder: Path, entry: str, handler: str | None
) -> None:
    events: list[Event] = []
    job = spec(
        entry,
        kwargs={"n": 3},
        generate_handler=f"{MODULE}:{handler}" if handler else None,
        echo=True,
    )
    (result,) = run_all(job, events=events)
    assert result.status is RunStatus.SUCCEEDED
    assert result.items == 3
    assert [item["i"] for item in result.result] == [0, 1, 2]
    child = result.result[0]["pid"]
    assert child != os.getpid()
    if handler:
        assert {item["handled_in"] for item in result.result} == {os.getpid()}
    items = [e for e in events if e.kind is EventKind.ITEM]
    assert [e.items for e in items] == [1, 2, 3]
    assert items[0].item is not None and "'i': 0" in items[0].item


def test_empty_generator_gives_an_empty_list(folder: Path) -> None:
    (result,) = run_all(spec("count", kwargs={"n": 0}))
    assert result.status is RunStatus.SUCCEEDED
    assert result.result == [] and result.items == 0


def test_handler_failure_closes_the_generator_in_the_child_which_serves_on(
    folder: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "closed"
    failed, after = run_all(
        spec(
            "closable", kwargs={"marker": str(marker)}, generate_handler=f"{MODULE}:handler_fails"
        ),
        spec("closable", kwargs={"marker": str(marker)}),
    )
    assert failed.status is RunStatus.FAILED
    assert failed.error == (
        f"generate_handler '{MODULE}:handler_fails' failed: cannot handle item 1"
    )
    assert failed.items == 1
    assert after.status is RunStatus.SUCCEEDED
    # Closed (its finally ran) in the child, which then served the next run.
    assert {pid for _, pid in after.result} == {int(marker.read_text())}


def test_unpicklable_item_fails_the_run_and_closes_the_generator(
    folder: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "closed"
    (result,) = run_all(spec("yields_a_lock", kwargs={"marker": str(marker)}))
    assert result.status is RunStatus.FAILED
    assert result.error_type == "TypeError"
    assert result.error is not None
    assert f"item 2 of {MODULE}:yields_a_lock cannot be pickled" in result.error
    assert result.items == 1
    assert marker.read_text() == "closed"


# --- exceptions and retries ----------------------------------------------------------------------


def test_exception_in_the_child_fails_with_the_users_traceback_redacted(folder: Path) -> None:
    job = spec("fails", kwargs={"token": SECRET}, secrets=((SECRET, "${TOKEN}"),))
    (result,) = run_all(job)
    assert result.status is RunStatus.FAILED
    assert result.error_type == "ValueError"
    assert result.error == "bad token ${TOKEN}"
    tb = result.traceback or ""
    assert "in fails" in tb and "in inner" in tb and f"{MODULE}.py" in tb
    assert SECRET not in tb and "${TOKEN}" in tb
    assert "qtasks_cli" not in tb and "runpy" not in tb


def test_system_exit_in_the_child_fails_the_run_and_is_not_retried(folder: Path) -> None:
    job = spec("exits", retry=RetryPolicy(retries=2, delay=timedelta(0)))
    result, after = run_all(job, job)
    assert result.status is RunStatus.FAILED
    assert result.error_type == "SystemExit"
    assert result.error == "4"
    assert result.attempts == 1
    assert "sys.exit(4)" in (result.traceback or "")
    assert after.error == "4"  # the child caught it and served on


@pytest.mark.parametrize(
    ("retry_on", "attempts"),
    [(("ConnectionError",), 3), ((f"{MODULE}:Flaky",), 3), (("OSError",), 3), (("KeyError",), 1)],
)
def test_retry_on_matches_the_childs_exception_by_its_classes(
    folder: Path, tmp_path: Path, retry_on: tuple[str, ...], attempts: int
) -> None:
    counter = tmp_path / "counter"
    policy = RetryPolicy(retries=2, on=retry_on, delay=timedelta(0))
    (result,) = run_all(spec("flaky", kwargs={"counter": str(counter)}, retry=policy))
    assert result.status is RunStatus.FAILED
    assert result.error_type == f"{MODULE}.Flaky"
    assert result.attempts == attempts
    assert counter.read_text() == str(attempts)


def test_a_missing_entry_point_fails_like_inline(folder: Path) -> None:
    (result,) = run_all(spec("nothere"))
    assert result.status is RunStatus.FAILED
    assert result.error_type == "qtasks_cli.errors.EntryPointError"
    assert result.error is not None and "has no attribute 'nothere'" in result.error


# --- the pool ------------------------------------------------------------------------------------


def test_overlapping_runs_get_their_own_children_then_both_are_reused(folder: Path) -> None:
    async def main() -> tuple[list[RunResult], list[RunResult]]:
        runtime = Runtime(8)
        job = spec("sleep_then_pid", args=(0.3,))
        try:
            together = await asyncio.gather(run_in(runtime, job), run_in(runtime, job))
            again = await asyncio.gather(run_in(runtime, job), run_in(runtime, job))
            return list(together), list(again)
        finally:
            runtime.shutdown()

    together, again = asyncio.run(main())
    pids = {r.result for r in together}
    assert len(pids) == 2
    assert {r.result for r in again} == pids


def test_an_idle_child_that_was_killed_is_replaced_without_failing_a_run(folder: Path) -> None:
    async def main() -> tuple[RunResult, RunResult]:
        runtime = Runtime(8)
        try:
            first = await run_in(runtime, spec("pid"))
            (worker,) = runtime.workers._idle[("pid", f"{MODULE}:pid")]
            os.kill(first.result, signal.SIGKILL)  # as the OOM killer might, between runs
            await asyncio.wait_for(worker.exited, timeout=10)
            return first, await run_in(runtime, spec("pid"))
        finally:
            runtime.shutdown()

    first, second = asyncio.run(main())
    assert second.status is RunStatus.SUCCEEDED
    assert second.result != first.result


def test_after_shutdown_no_child_starts(folder: Path) -> None:
    async def main() -> RunResult:
        runtime = Runtime(8)
        runtime.shutdown()
        return await run_in(runtime, spec("pid"))

    result = asyncio.run(main())
    assert result.status is RunStatus.FAILED
    assert result.error is not None and "shut down" in result.error


# --- through the installed command ---------------------------------------------------------------

CLI_JOBS = """
jobs:
  hello:
    entrypoint: work:hello
    isolation: process
  export:
    entrypoint: work:export
    isolation: process
    generate_handler: work:handle
    echo: true
  crash:
    entrypoint: work:crash
    isolation: process
"""

CLI_WORK = """
import ctypes
import os
from pathlib import Path

def hello():
    Path("child.pid").write_text(str(os.getpid()))
    print("printed by the child", flush=True)
    return {"parent": os.getppid()}

def export(n=2):
    for i in range(n):
        yield i

def handle(item):
    return f"item-{item}-handled-in-{os.getpid()}"

def crash():
    ctypes.string_at(0)
"""


def test_trigger_runs_a_process_job_and_leaves_no_child(project: Any) -> None:
    path = project(CLI_JOBS, work=CLI_WORK)
    result = run_qtasks("trigger", "hello", "-c", str(path), cwd=path.parent)
    assert result.returncode == 0, result.stderr
    assert "succeeded" in result.stderr
    assert "printed by the child" in result.stdout
    assert not exists(int((path.parent / "child.pid").read_text()))

    export = run_qtasks("trigger", "export", "-c", str(path), cwd=path.parent)
    assert export.returncode == 0, export.stderr
    lines = export.stdout.split()
    assert [line.split("-handled-in-")[0] for line in lines] == ["'item-0", "'item-1"]

    crash = run_qtasks("trigger", "crash", "-c", str(path), cwd=path.parent)
    assert crash.returncode == 1
    assert "child exited with signal 11 (SIGSEGV)" in crash.stderr
    assert "Fatal Python error: Segmentation fault" in crash.stderr  # faulthandler's stack


DAEMON_JOBS = """
settings:
  shutdown_grace: 1s
jobs:
  quick:
    entrypoint: work:quick
    schedule: "* * * * * *"
    isolation: process
  stuck:
    entrypoint: work:stuck
    schedule: "@startup"
    isolation: process
    kill_grace: 500ms
"""

DAEMON_WORK = """
import os
import signal
from pathlib import Path

def quick():
    Path(f"quick-{os.getpid()}.pid").touch()

def stuck():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(f"stuck-{os.getpid()}.pid").touch()
    while True:
        pass
"""


def test_run_leaves_no_child_process_behind(project: Any, daemons: Any) -> None:
    path = project(DAEMON_JOBS, work=DAEMON_WORK)
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: " quick " in log and "succeeded" in log.split(" quick ", 1)[1])
    daemon.wait_for(lambda log: any(path.parent.glob("stuck-*.pid")))
    assert daemon.stop(signal.SIGTERM, timeout=20) == 0
    pids = [int(p.name.split("-")[1].split(".")[0]) for p in path.parent.glob("*-*.pid")]
    assert len(pids) >= 2
    assert [pid for pid in pids if exists(pid)] == []
    assert "sending SIGKILL" in daemon.output


def test_a_module_planted_in_the_working_directory_is_never_run(tmp_path: Path) -> None:
    # Another user can write the folder qtasks is started from: their pickle.py must not run
    # in the child (the child's sys.path does not start with the working directory).
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "pjob.py").write_text("import os\ndef pid():\n    return os.getpid()\n")
    (jobs / "jobs.yaml").write_text("jobs:\n  p: {entrypoint: 'pjob:pid', isolation: process}\n")
    planted = tmp_path / "cwd"
    planted.mkdir()
    marker = tmp_path / "planted-ran"
    for name in ("pickle", "struct", "runpy", "qtasks_cli"):
        (planted / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write('{name}')\n")
    done = run_qtasks("trigger", "p", "-c", str(jobs / "jobs.yaml"), cwd=planted, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), marker.read_text()
