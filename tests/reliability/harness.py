"""A real ``qtasks run`` in a subprocess beside a per-second job, the history it leaves, and the
checks every case makes.

Time cannot be controlled in a real daemon, so these cases do wait on the wall clock; every wait
polls for a condition and is bounded.
"""

from __future__ import annotations

import codecs
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from conftest import QTASKS, clean_env

TICK = "tick"
SECOND = timedelta(seconds=1)
# A run counts as on time when it started within this of its scheduled time; it is the
# supervisor's own threshold (LATE_AFTER) for calling a fire late.
ON_TIME = timedelta(seconds=1)
# How far from the daemon's start and stop the per-second job's first and last fires may be.
EDGE = timedelta(seconds=2)
# How long a daemon may take to exit after SIGTERM: shutdown_grace (1-2 s in these cases), the
# supervisor's 5 s wait for cancelled runs, and slack for a loaded machine.
STOP_TIMEOUT = 15.0

# A "fired" event in the plain log (`TIME INFO job run_id fired (...)`) or the JSON log.
FIRED_LINE = re.compile(
    r"^\S+ INFO +(\S+) \w+ fired "
    r'|^\{.*?"job": "([^"]+)", "run_id": "\w+", "event": "fired"',
    re.MULTILINE,
)

TICK_YAML = """\
  tick:
    entrypoint: rel_tick:tick
    schedule: "* * * * * *"
"""
# A plain function: it runs in a thread and holds a unit of the concurrency cap, like most jobs.
TICK_MODULE = "def tick():\n    return 'tock'\n"

Row = dict[str, Any]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def write_project(
    folder: Path, jobs: str, modules: dict[str, str], settings: str = "", *, tick: bool = True
) -> Path:
    """Write ``jobs.yaml`` (settings, the tick job and ``jobs``) and modules; return the YAML."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in {"rel_tick": TICK_MODULE, **modules}.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    settings = textwrap.dedent(settings)
    if "shutdown_grace:" not in settings:
        settings = "shutdown_grace: 2s\n" + settings
    text = (
        "settings:\n"
        + textwrap.indent(settings, "  ")
        + "jobs:\n"
        + (TICK_YAML if tick else "")
        + textwrap.indent(textwrap.dedent(jobs), "  ")
    )
    path = folder / "jobs.yaml"
    path.write_text(text)
    return path


class Daemon:
    """``qtasks run --ui plain`` in its own session, stdout and stderr in files."""

    _numbers = itertools.count(1)

    def __init__(
        self,
        config: Path,
        env: dict[str, str] | None = None,
        *,
        ui: str = "plain",
        umask: int = -1,
    ) -> None:
        self.config = config
        self.folder = config.parent
        number = next(self._numbers)
        self.out_path = self.folder / f"daemon-{number}.stdout"
        self.err_path = self.folder / f"daemon-{number}.stderr"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            # A session of its own: a stray Ctrl-C of pytest does not reach it, and the group
            # (with anything its jobs spawned) can be ended at cleanup.
            self.proc = subprocess.Popen(
                [QTASKS, "run", "--ui", ui, str(config)],
                cwd=self.folder,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env or clean_env(),
                start_new_session=True,
                umask=umask,
            )
        self._read = 0
        self._text = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._counted = 0  # how much of the log fired() has scanned (whole lines)
        self._fires: Counter[str] = Counter()
        self.started = utcnow()
        self.ready_at: datetime | None = None
        self.stop_sent: datetime | None = None
        self.stop_seconds: float | None = None  # from the stop signal to the exit
        self.exit_code: int | None = None
        self.stack_dump = ""  # py-spy's stacks of a daemon that did not exit when stopped

    @property
    def log(self) -> str:
        """The daemon's stderr so far; read incrementally, since some cases write megabytes."""
        with self.err_path.open("rb") as fh:
            fh.seek(self._read)
            chunk = fh.read()
        self._read += len(chunk)
        self._text += self._decoder.decode(chunk)
        return self._text

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        """Poll the log until ``predicate(log)``; fail with the log's end if it never holds."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log
            if predicate(text):
                return text
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"qtasks run exited with {self.proc.returncode} while waiting for {what}; "
                    f"log:\n{tail(text)}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout}s; log:\n{tail(text)}")
            time.sleep(0.05)

    def wait_for_ends(self, counts: dict[str, int], timeout: float = 90) -> None:
        """Wait until the log shows at least ``counts[job]`` ends (succeeded or failed) of each
        job: a case that asserts on runs that end must not hang on how fast a busy machine
        builds them (seen: no three-million-tuple run ended within 6 ticks on CI)."""

        def enough(log: str) -> bool:
            return all(
                len(re.findall(rf"\b{re.escape(job)} \S+ (?:succeeded|failed)\b", log)) >= n
                for job, n in counts.items()
            )

        self.wait_for(enough, timeout, f"ends of {counts}")

    def wait_ready(self, timeout: float = 20) -> None:
        self.wait_for(
            lambda log: "tick next fire" in log or '"job": "tick", "event": "notice"' in log,
            timeout,
            "the daemon's start",
        )
        self.ready_at = utcnow()

    def fired(self, job: str = TICK) -> int:
        """How often ``job`` fired so far, from the plain or the JSON log."""
        text = self.log
        end = text.rfind("\n") + 1
        for match in FIRED_LINE.finditer(text, self._counted, end):
            self._fires[match.group(1) or match.group(2)] += 1
        self._counted = max(self._counted, end)
        return self._fires[job]

    def wait_fired(self, count: int, job: str = TICK, timeout: float | None = None) -> None:
        """Wait until ``job`` has fired ``count`` times in this daemon's log."""
        limit = timeout if timeout is not None else count * 2 + 10
        self.wait_for(lambda log: self.fired(job) >= count, limit, f"{count} fires of {job}")

    def send(self, sig: int) -> None:
        if self.stop_sent is None and sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
            self.stop_sent = utcnow()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Send ``sig`` and wait for the exit code; None (and SIGKILL) if it does not exit."""
        self.send(sig)
        assert self.stop_sent is not None
        try:
            self.exit_code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stack_dump = stacks_of(self.proc.pid)  # where it hung, for the failure
            self.kill()
            self.exit_code = None
        else:
            self.stop_seconds = (utcnow() - self.stop_sent).total_seconds()
        return self.exit_code

    def kill(self) -> None:
        """SIGKILL the daemon's whole process group (jobs' children included); idempotent."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def stacks_of(pid: int) -> str:
    """Every thread's Python stack in process ``pid`` (``py-spy dump``), or why there are
    none: what a daemon that hangs on its way out was doing."""
    spy = shutil.which("py-spy")
    if spy is None:
        return "(install py-spy to see where it hung)"
    try:
        done = subprocess.run(
            [spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return "(py-spy dump took over 30 s)"
    return done.stdout + done.stderr


def tail(text: str, lines: int = 60, width: int = 400) -> str:
    return "\n".join(line[:width] for line in text.splitlines()[-lines:])


def history(config: Path) -> list[Row]:
    """Every row of ``qtasks history --json`` for the job file, oldest scheduled first."""
    result = subprocess.run(
        [QTASKS, "history", "--json", "--limit", "1000000", "-c", str(config)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return sorted(rows, key=lambda r: (r["scheduled"] or r["created"] or "", r["run_id"]))


@dataclass(kw_only=True)
class Outcome:
    """What one daemon left behind."""

    name: str
    config: Path
    exit_code: int | None
    log: str
    stdout_bytes: int
    rows: list[Row]
    ready_at: datetime
    stopped_at: datetime
    stop_seconds: float | None
    stack_dump: str = ""  # where a daemon that did not exit when stopped hung (py-spy)
    error: str | None = None  # what went wrong while driving the daemon
    extra: dict[str, Any] = field(default_factory=dict)

    def of(self, job: str) -> list[Row]:
        return [r for r in self.rows if r["job"] == job]

    def ended(self, job: str) -> list[Row]:
        """``job``'s runs that ran and ended by themselves: not skipped, not still going at stop.

        On a busy machine the window may close while a slow run is still going; shutdown then
        cancels it honestly, and that row says nothing about the fault under test.
        """
        return [
            r
            for r in self.of(job)
            if r["status"] != "skipped"
            and r["error"] != "cancelled at shutdown"
            and r["started"] is not None  # a fire missed or given back never ran
        ]

    def show(self, rows: Iterable[Row] | None = None) -> str:
        return show_rows(self.rows if rows is None else rows)


def false_busy_skips(rows: Sequence[Row], settle: float = 1.0) -> list[Row]:
    """Rows skipped as "previous run still running" while no earlier run of the job was going.

    A busy machine may make a run outlast its period, and then the skip is the truth; the
    fault is a skip while every earlier run had long ended (a loop frozen on a big value used
    to do that). A run counts as going until ``settle`` seconds after its body's end: its
    outcome (the preview of its value) is recorded off the loop after that end.
    """

    def t(text: str) -> datetime:
        return datetime.fromisoformat(text)

    false: list[Row] = []
    for r in rows:
        if "previous run still running" not in (r["error"] or ""):
            continue
        at = t(r["scheduled"])
        going = [
            o
            for o in rows
            if o["job"] == r["job"]
            and o["status"] != "skipped"
            and o["started"] is not None
            and t(o["started"]) <= at
            and (o["ended"] is None or t(o["ended"]) + timedelta(seconds=settle) > at)
        ]
        if not going:
            false.append(r)
    return false


def show_rows(rows: Iterable[Row]) -> str:
    return "\n".join(
        f"{r['job']} {r['scheduled']} {r['trigger']} {r['status']} started={r['started']} "
        f"error={(r['error_type'], (r['error'] or '')[:120])}"
        for r in rows
    )


def collect(name: str, daemon: Daemon, error: BaseException | None = None, **extra: Any) -> Outcome:
    return Outcome(
        name=name,
        config=daemon.config,
        exit_code=daemon.exit_code,
        log=daemon.log,
        stdout_bytes=daemon.out_path.stat().st_size,
        rows=history(daemon.config),
        ready_at=daemon.ready_at or daemon.started,
        stopped_at=daemon.stop_sent or utcnow(),
        stop_seconds=daemon.stop_seconds,
        stack_dump=daemon.stack_dump,
        error=None if error is None else f"{type(error).__name__}: {error}",
        extra=extra,
    )


@dataclass(kw_only=True)
class Scenario:
    """One daemon: its job file, how long it runs, and what is done to it meanwhile."""

    name: str
    jobs: str
    modules: dict[str, str]
    settings: str = ""
    ticks: int = 5  # run until the per-second job fired this many times after the driver
    driver: Callable[[Daemon], Any] | None = None  # runs once the daemon is ready
    env: dict[str, str] | None = None
    ui: str = "plain"


def run_scenarios(scenarios: Sequence[Scenario], root: Path) -> dict[str, Outcome]:
    """Start every scenario's daemon at once, run its driver, let the per-second job fire
    ``ticks`` more times, stop them all with SIGTERM and read their histories.

    One scenario going wrong does not stop the others: its error is kept in its Outcome.
    """
    daemons: dict[str, Daemon] = {}
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    def drive(s: Scenario) -> None:
        d = daemons[s.name]
        try:
            d.wait_ready()
            results[s.name] = s.driver(d) if s.driver else None
            d.wait_fired(d.fired() + s.ticks, timeout=s.ticks * 1.5 + 5)
        except BaseException as exc:
            errors[s.name] = exc

    try:
        for s in scenarios:
            config = write_project(root / s.name, s.jobs, s.modules, s.settings)
            daemons[s.name] = Daemon(config, s.env, ui=s.ui)
        threads = [threading.Thread(target=drive, args=(s,), daemon=True) for s in scenarios]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        for d in daemons.values():
            d.send(signal.SIGTERM)
        for d in daemons.values():
            d.stop(timeout=STOP_TIMEOUT)
        return {
            s.name: collect(s.name, daemons[s.name], errors.get(s.name), driver=results.get(s.name))
            for s in scenarios
        }
    finally:
        for d in daemons.values():
            d.kill()


# --- checks ---------------------------------------------------------------------------------


def assert_consecutive(rows: Sequence[Row], step: timedelta = SECOND) -> list[datetime]:
    """The rows' scheduled times are distinct and ``step`` apart, without gaps."""
    times = [when(r["scheduled"]) for r in rows if r["scheduled"]]
    doubled = sorted(t for t, n in Counter(times).items() if n > 1)
    assert not doubled, f"fired twice for {doubled}:\n{show_rows(rows)}"
    times.sort()
    gaps = [(a, b) for a, b in itertools.pairwise(times) if b - a != step]
    assert not gaps, f"gaps in the scheduled times {gaps}:\n{show_rows(rows)}"
    return times


def late_rows(rows: Iterable[Row], limit: timedelta = ON_TIME) -> list[Row]:
    """Rows that did not run on time as scheduled runs."""
    return [
        r
        for r in rows
        if r["status"] != "succeeded"
        or r["trigger"] != "schedule"
        or r["started"] is None
        or when(r["started"]) - when(r["scheduled"]) > limit
    ]


def assert_tick_kept_time(out: Outcome, job: str = TICK) -> None:
    """The per-second job fired every second, on time, from the daemon's start to its stop."""
    rows = out.of(job)
    times = assert_consecutive(rows)
    assert times, f"{job} never fired; log:\n{tail(out.log)}"
    assert times[0] <= out.ready_at + EDGE, f"{job} started firing late: {times[0]}"
    assert times[-1] >= out.stopped_at - EDGE, (
        f"{job} stopped firing at {times[-1]}, the daemon was stopped at {out.stopped_at}:\n"
        f"{tail(out.log)}"
    )
    bad = late_rows(rows)
    assert not bad, f"{job} runs not on time:\n{show_rows(bad)}\nlog:\n{tail(out.log)}"


QTASKS_TRACEBACK = re.compile(
    r"Traceback \(most recent call last\):\n(?:  .*\n)*?  File \".*qtasks"
)


def assert_clean_exit(out: Outcome) -> None:
    """Exit code 0 after SIGTERM and no traceback of qtasks itself in the log."""
    assert out.error is None, f"{out.error}; log:\n{tail(out.log)}"
    assert out.exit_code is not None, (
        f"no exit within {STOP_TIMEOUT:g} s of SIGTERM; log:\n{tail(out.log)}\n"
        f"its stacks:\n{out.stack_dump}"
    )
    assert out.exit_code == 0, f"exit code {out.exit_code}; log:\n{tail(out.log)}"
    assert not QTASKS_TRACEBACK.search(out.log), f"a qtasks traceback in the log:\n{tail(out.log)}"
    assert "--- Logging error ---" not in out.log, tail(out.log)


def assert_healthy(out: Outcome) -> None:
    """What every daemon case checks besides its own fault."""
    assert_clean_exit(out)
    assert_tick_kept_time(out)


def statuses(rows: Iterable[Row]) -> Counter[str]:
    return Counter(r["status"] for r in rows)


def assert_all(
    rows: Sequence[Row],
    *,
    status: str,
    error_type: str | None = None,
    at_least: int = 1,
    **contains: str,
) -> None:
    """Every row has ``status`` (and ``error_type``) and each ``field=text`` contains the text."""
    assert len(rows) >= at_least, f"expected at least {at_least} runs:\n{show_rows(rows)}"
    for r in rows:
        assert r["status"] == status, show_rows([r])
        if error_type is not None:
            assert r["error_type"] == error_type, show_rows([r])
        for key, text in contains.items():
            assert text in (r[key] or ""), f"{key} lacks {text!r}: {r[key]!r}"
