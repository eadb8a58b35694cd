"""Jobs with ``isolation: process`` that hang, spin, crash or hit a resource limit, in one daemon
beside the per-second job."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reliability.harness import (
    Daemon,
    Outcome,
    Scenario,
    assert_all,
    assert_healthy,
    run_scenarios,
    show_rows,
)
from reliability.registry import case

GROUP = "job faults (isolation: process)"

CHILD = """
import ctypes
import os
import resource
import threading
from pathlib import Path


def hangs():
    Path(f"hang-{os.getpid()}.pid").write_text(str(os.getpid()))
    threading.Event().wait()


def spins():
    Path(f"spin-{os.getpid()}.pid").write_text(str(os.getpid()))
    while True:
        pass


def _count(name):
    path = Path(name)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n


def crashes_every_other_run():
    if _count("segfault-runs") % 2 == 1:
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return os.getpid()


def allocates():
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (256 * 1024 * 1024, hard))
    try:
        chunks = []
        while True:
            chunks.append(bytearray(32 * 1024 * 1024))
    finally:
        chunks = None
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def burns_cpu():
    used = resource.getrusage(resource.RUSAGE_SELF)
    limit = int(used.ru_utime + used.ru_stime) + 1
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(resource.RLIMIT_CPU, (limit, hard))
    while True:
        pass
"""

JOBS = """
hangs:
  entrypoint: rel_child:hangs
  isolation: process
  schedule: "*/2 * * * * *"
  timeout: 1s
  kill_grace: 500ms
spins:
  entrypoint: rel_child:spins
  isolation: process
  schedule: "*/2 * * * * *"
  timeout: 1s
  kill_grace: 500ms
segfaults:
  entrypoint: rel_child:crashes_every_other_run
  isolation: process
  schedule: "* * * * * *"
allocates:
  entrypoint: rel_child:allocates
  isolation: process
  schedule: "*/2 * * * * *"
  timeout: 10s
  overlap: skip
burns_cpu:
  entrypoint: rel_child:burns_cpu
  isolation: process
  schedule: "*/3 * * * * *"
  timeout: 120s
  overlap: skip
"""


def gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    match = re.search(r"^State:\s+(\w)", status, re.MULTILINE)
    return match is not None and match.group(1) in ("Z", "X")


def check_killed_children(daemon: Daemon) -> dict[str, bool]:
    """Once two runs of each stuck job timed out, the first one's child is gone, while the daemon
    still runs (so it was killed on timeout, not at exit)."""
    for job, prefix in (("hangs", "hang"), ("spins", "spin")):
        daemon.wait_for(
            lambda log, job=job: len(re.findall(rf" {job} \w+ timed out ", log)) >= 2,
            timeout=60,
            what=f"two timed-out runs of {job}",
        )
        # On a busy machine a run can time out before its new child reached the job: wait
        # until two children started it (the first one's run ended before the second began).
        daemon.wait_for(
            lambda log, prefix=prefix: len(list(daemon.folder.glob(f"{prefix}-*.pid"))) >= 2,
            timeout=90,
            what=f"two children that started {job}",
        )
    # The CPU limit kills after 1-2 s of CPU time, which is many seconds of wall time when
    # other processes keep both cores busy: wait for it rather than assume a quiet machine.
    daemon.wait_for(
        lambda log: re.search(r" burns_cpu \w+ failed ", log) is not None,
        timeout=120,
        what="a run of burns_cpu killed by its CPU limit",
    )
    folder = daemon.folder

    def oldest_first(pattern: str) -> list[Path]:  # not by name: pid 10000 sorts before 9999
        return sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime_ns)

    files = oldest_first("hang-*.pid") + oldest_first("spin-*.pid")
    return {p.name: gone(int(p.read_text())) for p in files}


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    scenario = Scenario(
        name="process",
        jobs=JOBS,
        modules={"rel_child": CHILD},
        settings="shutdown_grace: 2s\n",
        driver=check_killed_children,
        ticks=4,
    )
    return run_scenarios([scenario], tmp_path_factory.mktemp("process-faults"))["process"]


def _children(out: Outcome) -> dict[str, bool]:
    found: dict[str, bool] = out.extra.get("driver") or {}
    return found


@case(
    "hang_sync_process",
    group=GROUP,
    title="a sync job waits forever in its child process, `timeout: 1s`, `kill_grace: 500ms`",
    checks="each run `timed_out`; the child is gone (SIGTERM, then SIGKILL) while the daemon "
    "still runs, and the next run gets a new child",
)
def test_hang_sync_process(out: Outcome) -> None:
    assert_healthy(out)
    rows = out.of("hangs")
    assert_all(rows, status="timed_out", error_type="TimeoutError", at_least=2, error="1s")
    children = {k: v for k, v in _children(out).items() if k.startswith("hang-")}
    assert len(children) >= 2, children  # a new child per run
    # Every child but the newest was killed before the daemon stopped.
    assert all(list(children.values())[:-1]), children


@case(
    "busy_loop_process",
    group=GROUP,
    title="a job spins on the CPU in its child process, `timeout: 1s`, every 2 s",
    checks="each run `timed_out`; the spinning child is killed; the per-second job keeps its "
    "times while a core is busy",
)
def test_busy_loop_process(out: Outcome) -> None:
    assert_healthy(out)
    # A busy machine can make a run (1 s, then the kill and a fresh child) outlast the 2 s
    # between fires: that fire is honestly skipped, as overlap: skip says.
    rows = [r for r in out.of("spins") if "previous run still running" not in (r["error"] or "")]
    assert_all(rows, status="timed_out", at_least=2, error="1s")
    children = {k: v for k, v in _children(out).items() if k.startswith("spin-")}
    assert len(children) >= 2 and all(list(children.values())[:-1]), children


@case(
    "segfault_process",
    group=GROUP,
    title="a job segfaults (`ctypes.string_at(0)`) in its child on every other run",
    checks="the crashing runs `failed` with `child exited with signal 11 (SIGSEGV)`, the others "
    "`succeeded`, each in a fresh child",
)
def test_segfault_process(out: Outcome) -> None:
    assert_healthy(out)
    rows = out.of("segfaults")
    crashed = [r for r in rows if r["status"] == "failed"]
    fine = [r for r in rows if r["status"] == "succeeded"]
    # A busy machine can make a fresh child's run last past the next second: that fire is
    # honestly skipped, as overlap: skip says.
    skipped = [r for r in rows if "previous run still running" in (r["error"] or "")]
    assert len(crashed) >= 2 and len(fine) >= 2, out.show(rows)
    assert len(crashed) + len(fine) + len(skipped) == len(rows), out.show(rows)
    for r in crashed:
        assert "signal 11" in r["error"] and "SIGSEGV" in r["error"], show_rows([r])
    pids = [r["result"] for r in fine]
    assert len(set(pids)) == len(pids), f"a crashed child was reused: {pids}"


@case(
    "memory_limit_process",
    group=GROUP,
    title="a job in a child allocates 32 MB chunks under a 256 MB address-space limit",
    checks="each run `failed` with MemoryError (or the child's death named in the error); "
    "the daemon's memory is untouched and later runs still start",
)
def test_memory_limit_process(out: Outcome) -> None:
    assert_healthy(out)
    rows = [r for r in out.of("allocates") if r["status"] != "skipped"]
    assert len(rows) >= 2, out.show(rows)
    for r in rows:
        assert r["status"] == "failed", show_rows([r])
        assert r["error_type"] == "MemoryError" or "child" in (r["error"] or ""), show_rows([r])


@case(
    "cpu_limit_kill_process",
    group=GROUP,
    title="a job in a child sets `RLIMIT_CPU` to 1 s more than it used, then spins",
    checks="the kernel kills the child with SIGXCPU; the run `failed` with `child exited with "
    "signal 24 (SIGXCPU)`; the next run gets a new child",
)
def test_cpu_limit_kill_process(out: Outcome) -> None:
    assert_healthy(out)
    # Fires while a run still burns are `skipped` (overlap: skip) and the run under way at the
    # stop is `cancelled`: how many of each depends on how busy the machine is.
    rows = [r for r in out.of("burns_cpu") if r["status"] not in ("skipped", "cancelled")]
    assert_all(rows, status="failed", at_least=1, error="signal 24 (SIGXCPU)")
