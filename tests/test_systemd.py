"""sd_notify against real datagram sockets, the watchdog and STATUS= under a controlled clock,
the unit file, and the installed daemon talking to a socket the test binds."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import QTASKS, clean_env, run_qtasks

from qtasks_cli import systemd
from qtasks_cli.events import KINDS, Event, EventKind
from qtasks_cli.models import JobView, Snapshot

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="qtn", dir="/tmp") as name:
        yield Path(name)


def bound(path: Path | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path) if isinstance(path, Path) else path)
    sock.settimeout(2)
    return sock


def job(name: str, next_in: float | None, *, enabled: bool = True, running: int = 0) -> JobView:
    return JobView(
        name=name,
        schedule="every 1h",
        enabled=enabled,
        next_fire=NOW + timedelta(seconds=next_in) if next_in is not None else None,
        running=running,
        pending=0,
        max_attempts=1,
    )


def snapshot(*jobs: JobView, queued: int = 0) -> Snapshot:
    return Snapshot(
        now=NOW,
        started_at=NOW,
        jobs=jobs,
        running=sum(j.running for j in jobs),
        queued=queued,
        state="/srv/.qtasks/state.db",
    )


# --- the notifier ------------------------------------------------------------------------------


def test_notify_address_forms() -> None:
    assert systemd.notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert systemd.notify_address("@qtasks/notify") == b"\0qtasks/notify"
    assert systemd.notify_address("relative/path") is None
    assert systemd.notify_address("vsock:2:1234") is None
    assert systemd.notify_address("@") is None


def test_notifier_sends_one_datagram_to_a_path_socket(sock_dir: Path) -> None:
    path = sock_dir / "notify"
    with bound(path) as receiver:
        notifier = systemd.Notifier.from_env({"NOTIFY_SOCKET": str(path)})
        assert notifier is not None
        assert notifier.send("READY=1", "STATUS=3 jobs, 0 running")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=3 jobs, 0 running"
        notifier.close()


def test_notifier_speaks_to_an_abstract_socket() -> None:
    name = f"qtasks-test-{os.getpid()}-{time.monotonic_ns()}"
    with bound(b"\0" + name.encode()) as receiver:
        notifier = systemd.Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier is not None
        assert notifier.send("WATCHDOG=1")
        assert receiver.recv(4096) == b"WATCHDOG=1"
        notifier.close()


def test_a_missing_socket_is_reported_once_and_never_raises(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = systemd.Notifier(str(sock_dir / "nobody-listens"))
    with caplog.at_level(logging.WARNING, logger="qtasks_cli.systemd"):
        assert notifier.send("READY=1") is False
        assert notifier.send("WATCHDOG=1") is False
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1
    assert "nobody-listens" in warnings[0].getMessage()
    notifier.close()


def test_from_env_without_or_with_an_unusable_socket(caplog: pytest.LogCaptureFixture) -> None:
    assert systemd.Notifier.from_env({}) is None
    assert systemd.Notifier.from_env({"NOTIFY_SOCKET": ""}) is None
    with caplog.at_level(logging.WARNING, logger="qtasks_cli.systemd"):
        assert systemd.Notifier.from_env({"NOTIFY_SOCKET": "run/notify"}) is None
    assert "'run/notify'" in caplog.text


def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid_only() -> None:
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "1000000"}, 42) == 0.5
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 15
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "7"}, 42) is None
    assert systemd.watchdog_interval({}, 42) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "soon"}, 42) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None


def test_agent_from_env_takes_the_variables_away_from_jobs(sock_dir: Path) -> None:
    env = {
        "NOTIFY_SOCKET": str(sock_dir / "n"),
        "WATCHDOG_USEC": "2000000",
        "WATCHDOG_PID": "99",
        "HOME": "/root",
    }
    agent = systemd.agent_from_env(env, pid=99)
    assert agent is not None
    assert agent.watchdog == 1.0
    assert env == {"HOME": "/root"}
    agent.notifier.close()
    assert systemd.agent_from_env({"WATCHDOG_USEC": "1"}, pid=1) is None


# --- STATUS= -------------------------------------------------------------------------------------


def test_status_line_names_the_soonest_job() -> None:
    snap = snapshot(
        job("hourly", 3 * 3600),
        job("daily_report", 2 * 3600 + 59),
        job("off", 5, enabled=False),
        job("manual", None),
        job("sync", 7200 + 600, running=1),
    )
    assert systemd.status_line(snap) == "5 jobs, 1 running, next: daily_report in 2h"
    assert systemd.status_line(snapshot(job("a", 0.3))) == "1 job, 0 running, next: a in 1s"
    assert systemd.status_line(snapshot(job("a", -2))) == "1 job, 0 running, next: a now"
    assert (
        systemd.status_line(snapshot(job("a", 190), queued=2))
        == "1 job, 0 running, 2 queued, next: a in 3m"
    )
    assert systemd.status_line(snapshot(job("m", None))) == "1 job, 0 running, nothing scheduled"


# --- the agent, under a controlled clock ------------------------------------------------------


class Recorder(systemd.Notifier):
    """A notifier that records (time, fields) instead of sending."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.sent: list[tuple[float, tuple[str, ...]]] = []
        self._clock = clock

    def send(self, *fields: str) -> bool:
        self.sent.append((self._clock(), fields))
        return True

    def messages(self, prefix: str) -> list[float]:
        return [t for t, fields in self.sent if any(f.startswith(prefix) for f in fields)]


class Stop(Exception):
    pass


class FakeTime:
    """A clock and a ``wait`` that jumps time forward, running scheduled calls on the way."""

    def __init__(self, until: float) -> None:
        self.now = 0.0
        self.until = until
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def at(self, when: float, call: Callable[[], None]) -> None:
        self.calls.append((when, call))
        self.calls.sort(key=lambda c: c[0])

    async def wait(self, timeout: float, wake: asyncio.Event | None) -> None:
        end = self.now + timeout
        while self.calls and self.calls[0][0] <= end:
            when, call = self.calls.pop(0)
            self.now = max(self.now, when)
            call()
            if wake is not None and wake.is_set():
                return
        self.now = end
        if self.now >= self.until:
            raise Stop


def event(kind: EventKind) -> Event:
    # A reload's outcome always says what changed (or why it was refused).
    said = {"message": "m"} if kind in (EventKind.RELOADED, EventKind.RELOAD_FAILED) else {}
    return KINDS[kind](time=NOW, job="sync", run_id="r1", **said)


def run_agent(agent: systemd.SystemdAgent) -> None:
    with pytest.raises(Stop):
        asyncio.run(agent.run())


def test_watchdog_pings_at_its_interval_and_status_is_throttled_to_one_a_second() -> None:
    fake = FakeTime(until=10.2)
    recorder = Recorder(lambda: fake.now)
    running = [0]

    def snap() -> Snapshot:
        return snapshot(job("sync", 60 - fake.now, running=running[0]))

    agent = systemd.SystemdAgent(
        recorder, watchdog=0.5, snapshot=snap, clock=lambda: fake.now, wait=fake.wait
    )
    # 10 events a second for 3 seconds, each changing what STATUS= says.
    for i in range(30):

        def change(i: int = i) -> None:
            running[0] = i % 2
            agent.on_event(event(EventKind.STARTED))

        fake.at(2.0 + i / 10, change)
    run_agent(agent)

    pings = recorder.messages("WATCHDOG=1")
    assert pings[0] == 0.0
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(pings)}
    assert gaps == {0.5}, pings
    assert len(pings) == 21  # 0 s to 10 s

    statuses = recorder.messages("STATUS=")
    # 30 changes between 2.0 and 4.9 s: one update at once, then one a second, the last
    # carrying the final state; then the countdown's own refresh 5 s later.
    assert statuses == [2.0, 3.0, 4.0, 5.0, 10.0], recorder.sent
    final = next(f for t, fields in recorder.sent if t == 5.0 for f in fields if "STATUS" in f)
    assert final.startswith("STATUS=1 job, 1 running")  # change 29 left one run going


def test_status_without_events_still_follows_the_countdown() -> None:
    fake = FakeTime(until=12.0)
    recorder = Recorder(lambda: fake.now)

    def snap() -> Snapshot:
        return snapshot(job("report", 7200 - fake.now * 600))  # 10 minutes pass per second

    agent = systemd.SystemdAgent(recorder, snapshot=snap, clock=lambda: fake.now, wait=fake.wait)
    run_agent(agent)
    texts = [f for _, fields in recorder.sent for f in fields]
    assert "WATCHDOG=1" not in texts  # no watchdog was asked for
    assert texts == [
        "STATUS=1 job, 0 running, next: report in 1h",  # at 5 s: 4,200 s to go
        "STATUS=1 job, 0 running, next: report in 20m",  # at 10 s: 1,200 s to go
    ]


def test_life_cycle_events_become_ready_reloading_and_stopping() -> None:
    recorder = Recorder(time.monotonic)
    agent = systemd.SystemdAgent(recorder, snapshot=lambda: snapshot(job("a", 30)))
    before = systemd.monotonic_usec()
    agent.on_event(event(EventKind.READY))
    agent.on_event(event(EventKind.RELOADING))
    after = systemd.monotonic_usec()
    agent.on_event(event(EventKind.RELOADED))
    agent.on_event(event(EventKind.RELOADING))
    agent.on_event(event(EventKind.RELOAD_FAILED))
    agent.on_event(event(EventKind.STOPPING))
    sent = [fields for _, fields in recorder.sent]
    assert sent[0] == ("READY=1", "STATUS=1 job, 0 running, next: a in 30s")
    assert sent[1][0] == "RELOADING=1"
    usec = int(sent[1][1].removeprefix("MONOTONIC_USEC="))
    assert before <= usec <= after
    assert sent[2][0] == "READY=1"
    assert sent[3][0] == "RELOADING=1"
    assert sent[4][0] == "READY=1"  # a failed reload keeps the old jobs: ready again
    assert sent[5] == ("STOPPING=1", "STATUS=stopping, 0 running")
    assert len(sent) == 6


def test_monotonic_usec_is_clock_monotonic() -> None:
    a = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    b = systemd.monotonic_usec()
    c = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert a <= b <= c


# --- the unit file -------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_render_unit_for_the_system_manager() -> None:
    text = systemd.render_unit(
        executable=Path("/srv/shop/.venv/bin/qtasks"),
        config=Path("/srv/shop/jobs.yaml"),
        working_directory=Path("/srv/shop"),
        shutdown_grace=timedelta(seconds=30),
        name="shop-jobs",
        user="shop",
    )
    s = unit_settings(text)
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == ["/srv/shop/.venv/bin/qtasks run /srv/shop/jobs.yaml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["WorkingDirectory"] == ["/srv/shop"]
    assert s["User"] == ["shop"]
    assert s["Restart"] == ["on-failure"]
    assert s["TimeoutStopSec"] == ["45s"]
    assert s["WatchdogSec"] == ["30s"]
    assert s["KillMode"] == ["mixed"]
    assert s["Environment"] == ["PYTHONUNBUFFERED=1"]
    assert s["WantedBy"] == ["multi-user.target"]
    assert "--ui" not in text
    sections = re.findall(r"^\[(\w+)\]$", text, re.M)
    assert sections == ["Unit", "Service", "Install"]
    assert "/etc/systemd/system/shop-jobs.service" in text
    assert "systemctl daemon-reload && systemctl enable --now shop-jobs" in text


def test_render_unit_for_a_user_manager_has_no_user_line() -> None:
    text = systemd.render_unit(
        executable=Path("/home/ann/.venv/bin/qtasks"),
        config=Path("/home/ann/jobs.yaml"),
        working_directory=Path("/home/ann"),
        shutdown_grace=timedelta(seconds=1.5),
        user="ann",
        user_unit=True,
    )
    s = unit_settings(text)
    assert "User" not in s
    assert s["WantedBy"] == ["default.target"]
    assert s["TimeoutStopSec"] == ["17s"]  # 1.5 s + 15 s, rounded up
    assert "After" not in s  # network-online.target is not a user-manager unit
    assert "~/.config/systemd/user/qtasks.service" in text
    assert "systemctl --user daemon-reload && systemctl --user enable --now qtasks" in text


def test_render_unit_quotes_paths_that_systemd_would_split_or_expand() -> None:
    text = systemd.render_unit(
        executable=Path("/opt/my tools/bin/qtasks"),
        config=Path("/srv/100% jobs/$HOME.yaml"),
        working_directory=Path("/srv/100% jobs"),
        shutdown_grace=timedelta(seconds=30),
    )
    s = unit_settings(text)
    assert s["ExecStart"] == ['"/opt/my tools/bin/qtasks" run "/srv/100%% jobs/$$HOME.yaml"']
    assert s["WorkingDirectory"] == ["/srv/100%% jobs"]


def test_systemd_unit_command_prints_a_unit_for_this_environment(project) -> None:
    path = project(
        "settings:\n  shutdown_grace: 20s\njobs:\n  a:\n    entrypoint: work:f\n",
        work="def f():\n    return 1\n",
    )
    result = run_qtasks("systemd-unit", str(path), cwd=path.parent)
    assert result.returncode == 0, result.stderr
    s = unit_settings(result.stdout)
    exe, word, config = s["ExecStart"][0].split(" ")
    assert exe == str(Path(QTASKS).absolute())  # the qtasks beside the running interpreter
    assert Path(exe).is_absolute() and os.access(exe, os.X_OK)
    assert (word, config) == ("run", str(path.resolve()))
    assert s["WorkingDirectory"] == [str(path.parent.resolve())]
    assert s["TimeoutStopSec"] == ["35s"]
    assert s["User"] and s["User"][0]
    assert s["WantedBy"] == ["multi-user.target"]

    user = run_qtasks("systemd-unit", str(path), "--user", "--name", "shop", cwd=path.parent)
    assert user.returncode == 0, user.stderr
    s = unit_settings(user.stdout)
    assert "User" not in s and s["WantedBy"] == ["default.target"]
    assert s["SyslogIdentifier"] == ["shop"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_accepts_the_unit_even_with_odd_paths(tmp_path: Path) -> None:
    folder = tmp_path / "my jobs 100%"
    folder.mkdir()
    (folder / "jobs.yaml").write_text("jobs:\n  a:\n    entrypoint: work:f\n")
    unit = run_qtasks("systemd-unit", str(folder / "jobs.yaml"), "--name", "odd", cwd=tmp_path)
    assert unit.returncode == 0, unit.stderr
    path = tmp_path / "odd.service"
    path.write_text(unit.stdout)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=30
    )
    assert verify.returncode == 0, verify.stderr


def test_systemd_unit_refuses_a_bad_name_or_a_missing_file(tmp_path: Path) -> None:
    bad = run_qtasks("systemd-unit", "--name", "my jobs", str(tmp_path / "x.yaml"), cwd=tmp_path)
    assert bad.returncode == 2
    assert "'my jobs' is not a unit name" in bad.stderr
    missing = run_qtasks("systemd-unit", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert missing.returncode == 2
    assert "nope.yaml" in missing.stderr and "Traceback" not in missing.stderr


# --- end to end: the installed daemon and a socket bound here -------------------------------------

JOBS = """
settings:
  shutdown_grace: 5s
jobs:
  tick:
    entrypoint: work:tick
    schedule: "* * * * * *"
  report:
    entrypoint: work:tick
    schedule: "59 23 * * *"
"""

WORK = """
async def tick():
    return "tock"

def boom():
    raise ValueError("no such order: 42")
"""


class Listener:
    """Collects datagrams from a bound socket, with the monotonic time each arrived."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(0.05)
        self.got: list[tuple[float, str]] = []

    def until(self, predicate: Callable[[list[str]], bool], timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.texts):
                return self.texts
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.got.append((time.monotonic(), data.decode()))
        raise AssertionError(f"not received within {timeout}s: {self.texts}")

    @property
    def texts(self) -> list[str]:
        return [text for _, text in self.got]


def test_daemon_speaks_sd_notify_to_a_real_socket(project, sock_dir: Path) -> None:
    path = project(JOBS, work=WORK)
    address = sock_dir / "notify"
    log = (path.parent / "daemon.log").open("w")
    with bound(address) as receiver:
        env = clean_env(NOTIFY_SOCKET=str(address), WATCHDOG_USEC="1000000")
        proc = subprocess.Popen(
            [QTASKS, "run", str(path)],
            cwd=path.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            listen = Listener(receiver)
            listen.until(lambda t: any(m.startswith("READY=1") for m in t), timeout=15)
            ready_at = next(t for t, m in listen.got if m.startswith("READY=1"))
            listen.until(lambda t: sum(m == "WATCHDOG=1" for m in t) >= 5, timeout=5)
            pings = [t for t, m in listen.got if m == "WATCHDOG=1" and t >= ready_at]
            span = pings[-1] - pings[0]
            assert len(pings) >= 3 and 0.35 <= span / (len(pings) - 1) <= 0.75, pings
            status = [m for m in listen.texts if "STATUS=" in m]
            assert status, listen.texts
            assert re.search(r"STATUS=2 jobs, \d running, next: \w+ (in \d+\w|now)", status[0])

            seen = len(listen.got)
            before = systemd.monotonic_usec()
            proc.send_signal(signal.SIGHUP)
            texts = listen.until(
                lambda t: (
                    any(m.startswith("READY=1") for m in t[seen:])
                    and any(m.startswith("RELOADING=1") for m in t[seen:])
                ),
                timeout=10,
            )[seen:]
            reloading = next(i for i, m in enumerate(texts) if m.startswith("RELOADING=1"))
            ready = next(i for i, m in enumerate(texts) if m.startswith("READY=1"))
            assert reloading < ready, texts
            usec = int(re.search(r"MONOTONIC_USEC=(\d+)", texts[reloading]).group(1))
            assert before <= usec <= systemd.monotonic_usec()

            seen = len(listen.got)
            proc.send_signal(signal.SIGTERM)
            listen.until(lambda t: any(m.startswith("STOPPING=1") for m in t[seen:]), timeout=10)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            log.close()
    output = (path.parent / "daemon.log").read_text()
    assert "NOTIFY_SOCKET" not in output


def test_under_systemd_the_log_has_priority_prefixes_and_no_timestamps(project) -> None:
    path = project(
        JOBS + "  boom:\n    entrypoint: work:boom\n    schedule: '* * * * * *'\n", work=WORK
    )
    log_path = path.parent / "journal.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [QTASKS, "run", str(path)],  # no --ui: under systemd the journal format is automatic
            cwd=path.parent,
            env=clean_env(INVOCATION_ID="0123456789abcdef0123456789abcdef"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                text = log_path.read_text()
                if "<3>ERROR boom" in text and "<6>INFO tick" in text:
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    text = log_path.read_text()
    assert "<3>ERROR boom" in text and "ValueError: no such order: 42" in text, text
    assert re.search(r"^<6>INFO tick \w+ succeeded", text, re.M), text
    lines = [line for line in text.splitlines() if line]
    assert all(re.match(r"<[0-7]>[A-Z]+ ", line) for line in lines), text
    assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (INFO|ERROR)", text)


def test_systemd_unit_stop_timeout_covers_the_longest_kill_grace(project) -> None:
    # A stop waits for a process job's child: SIGTERM, SIGKILL after kill_grace, the reap.
    # systemd must not SIGKILL the daemon before that run is recorded.
    path = project(
        "settings:\n  shutdown_grace: 20s\njobs:\n"
        "  a: {entrypoint: 'work:f', isolation: process, kill_grace: 40s}\n"
        "  b: {entrypoint: 'work:f', isolation: process}\n"
        "  c: {entrypoint: 'work:f', kill_grace: 90s}\n",  # inline: its kill_grace is unused
        work="def f():\n    return 1\n",
    )
    result = run_qtasks("systemd-unit", str(path), cwd=path.parent)
    assert result.returncode == 0, result.stderr
    assert unit_settings(result.stdout)["TimeoutStopSec"] == ["75s"]  # 20 s + 40 s + 15 s
