"""The operator's view end to end on SQLite, through the installed ``qtasks`` against a real
daemon in another process: ``status`` (exit 0/3, reload pending, a SIGKILLed daemon), ``pause``
and ``resume`` across restarts and reloads, ``cancel`` of async, thread and process runs,
``show``, the Prometheus endpoint over HTTP, and ``--watch`` / ``history --stats`` in a real
terminal (tmux)."""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import QTASKS, clean_env, run_qtasks
from test_systemd import sock_dir  # noqa: F401  (the fixture)

WORK = """
import asyncio, os, signal, sys, time
from pathlib import Path

async def tick():
    print("tick says hi")

async def hang():
    Path("hang.started").write_text("x")
    await asyncio.sleep(3600)

def hang_thread():
    Path("thread.started").write_text("x")
    time.sleep(3600)

def stubborn():
    # A process job that ignores SIGTERM: only SIGKILL after kill_grace stops it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path("stubborn.pid").write_text(str(os.getpid()))
    time.sleep(3600)

def noisy(token, n=3):
    for i in range(n):
        print(f"line {i} token={token}")
    sys.stderr.write("to stderr\\n")
    raise ConnectionError(f"CRM timed out (token={token})")

def record(order_id):
    with open("orders.txt", "a") as f:
        f.write(f"{order_id}\\n")
"""


def rows(path: Path, job: str | None = None) -> list[dict[str, Any]]:
    db = path.parent / ".qtasks" / "state.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        found = [dict(r) for r in conn.execute("SELECT * FROM runs")]
    finally:
        conn.close()
    return [r for r in found if job is None or r["job"] == job]


def wait_until(predicate: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def qt(path: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run_qtasks(*args, "-c", str(path), cwd=path.parent, timeout=timeout)


def status_json(path: Path) -> tuple[int, dict[str, Any]]:
    result = qt(path, "status", "--json")
    return result.returncode, json.loads(result.stdout)


def job_status(path: Path, job: str) -> dict[str, Any]:
    return next(j for j in status_json(path)[1]["jobs"] if j["name"] == job)


TICK = "  tick:\n    entrypoint: work:tick\n    schedule: '* * * * * *'\n"


def test_status_exit_codes_daemon_fields_reload_pending_and_a_killed_daemon(
    project, daemons
) -> None:
    path = project(f"jobs:\n{TICK}", work=WORK)
    before = qt(path, "status")
    assert before.returncode == 3
    assert "no daemon is running" in before.stderr and "Traceback" not in before.stderr

    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: re.search(r"tick \w+ succeeded", log))
    _, data = wait_until(lambda: (s := status_json(path))[0] == 0 and s, what="status up")
    [node] = data["daemons"]
    assert node["pid"] == daemon.proc.pid and node["alive"]
    assert node["version"] and node["config"] == str(path)
    assert node["reload_pending"] is False
    text = qt(path, "status")
    assert text.returncode == 0
    assert f"pid {daemon.proc.pid}" in text.stdout and "job file as loaded" in text.stdout
    assert re.search(r"^tick +idle|^tick +running", text.stdout, re.M), text.stdout

    # The file changes on disk: a reload is pending until SIGHUP.
    path.write_text(path.read_text().replace("'* * * * * *'", "'*/2 * * * * *'"))
    assert wait_until(
        lambda: status_json(path)[1]["daemons"][0]["reload_pending"], what="reload pending"
    )
    assert "reload pending" in qt(path, "status").stdout
    daemon.send(signal.SIGHUP)
    wait_until(lambda: not status_json(path)[1]["daemons"][0]["reload_pending"], what="reloaded")

    # SIGKILL: no clean goodbye, yet status soon says nobody is up (its pid is gone).
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(timeout=10)
    after = wait_until(lambda: (r := qt(path, "status")).returncode == 3 and r, what="down")
    assert "no daemon is running" in after.stdout and "gone (last heartbeat" in after.stdout


def test_pause_lasts_across_restart_and_reload_while_trigger_still_runs(project, daemons) -> None:
    path = project(f"jobs:\n{TICK}", work=WORK)
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: re.search(r"tick \w+ succeeded", log))

    paused = qt(path, "pause", "tick")
    assert paused.returncode == 0 and "paused tick" in paused.stdout
    assert "already paused" in qt(path, "pause", "tick").stdout
    unknown = qt(path, "pause", "tik")
    assert unknown.returncode == 2 and "did you mean 'tick'" in unknown.stderr
    paused_at = time.time()
    wait_until(
        lambda: any(r["error"] == "skipped (paused)" for r in rows(path, "tick")),
        what="a paused fire recorded",
    )
    listed = run_qtasks("list", str(path)).stdout.splitlines()
    assert any(line.startswith("tick") and "paused" in line for line in listed), listed
    assert json.loads(run_qtasks("list", str(path), "--json").stdout)[0]["paused"] is True
    wait_until(lambda: job_status(path, "tick")["state"] == "paused", what="status says paused")

    # Lasts across a reload and a restart.
    daemon.send(signal.SIGHUP)
    daemon.wait_for(lambda log: "reloaded" in log)
    down_at = time.time()
    assert daemon.stop() == 0
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: "tick next fire" in log)
    up_at = time.time()
    time.sleep(2.5)  # fires that must all be skipped
    # ...while trigger still runs it, in the foreground and handed over.
    manual = qt(path, "trigger", "tick")
    assert manual.returncode == 0, manual.stderr
    handed = qt(path, "trigger", "tick", "--enqueue", "--wait")
    assert handed.returncode == 0, handed.stderr
    resumed_at = time.time()
    assert "resumed tick" in qt(path, "resume", "tick").stdout
    assert "was not paused" in qt(path, "resume", "tick").stdout
    wait_until(
        lambda: any(
            r["status"] == "succeeded" and r["trigger"] == "schedule" and r["scheduled"] > 0
            and r["scheduled"] / 1e6 > resumed_at
            for r in rows(path, "tick")
        ),
        what="fires run again after resume",
    )  # fmt: skip
    assert daemon.stop() == 0
    during = [
        r for r in rows(path, "tick")
        if r["scheduled"] is not None and paused_at + 1 < r["scheduled"] / 1e6 < resumed_at - 1
    ]  # fmt: skip
    # Fires while the daemon was down are `missed` (the restart); every other one is skipped.
    assert during, during
    for r in during:
        down = down_at - 1 < r["scheduled"] / 1e6 < up_at + 1
        assert (r["status"], r["error"]) == ("skipped", "skipped (paused)") or (
            down and r["status"] == "missed"
        ), r
    ran = {r["trigger"] for r in rows(path, "tick") if r["status"] == "succeeded"}
    assert {"manual", "queued"} <= ran


def test_cancel_async_thread_and_process_runs(project, daemons) -> None:
    path = project(
        """
jobs:
  hang:
    entrypoint: work:hang
    schedule: "@startup"
  hangt:
    entrypoint: work:hang_thread
    schedule: "@startup"
  stubborn:
    entrypoint: work:stubborn
    isolation: process
    kill_grace: 1s
    schedule: "@startup"
""",
        work=WORK,
    )
    daemon = daemons([str(path)], cwd=path.parent)
    pid_file = path.parent / "stubborn.pid"
    wait_until(
        lambda: pid_file.exists() and (path.parent / "thread.started").exists(), what="started"
    )
    child = int(pid_file.read_text())

    def running_now() -> list[dict[str, Any]]:
        jobs = status_json(path)[1]["jobs"]
        return jobs if all(j["running"] for j in jobs) else []

    running = wait_until(running_now, what="three running")
    ids = {j["name"]: j["running"][0]["run_id"] for j in running}
    me = f"@{socket.gethostname()}"
    for job in ("hang", "hangt", "stubborn"):
        began = time.monotonic()
        result = qt(path, "cancel", ids[job])
        assert result.returncode == 0, (job, result.stdout, result.stderr)
        assert "cancelled" in result.stdout and me in result.stdout
        if job == "stubborn":  # SIGTERM ignored: SIGKILL after kill_grace
            assert time.monotonic() - began >= 1.0
            wait_until(lambda: not Path(f"/proc/{child}").exists(), 10, "child killed")
    recorded = {r["job"]: r for r in rows(path)}
    for job in ("hang", "hangt", "stubborn"):
        assert recorded[job]["status"] == "cancelled"
        assert recorded[job]["error"].startswith("cancelled by ") and me in recorded[job]["error"]
    for job in ("hang", "hangt", "stubborn"):  # the attempt that was stopped is on record
        shown = qt(path, "show", ids[job]).stdout
        assert "attempts (1)" in shown and re.search(r"^  1 .* cancelled", shown, re.M), shown
        assert recorded[job]["started"] is not None
    log = daemon.output
    assert "sending SIGKILL" in log  # the process job was killed after its grace
    assert "thread still running" in log  # the thread job was abandoned, as a timeout does
    # Cancelling again, or a finished run: exit 1; an unknown id: exit 2.
    again = qt(path, "cancel", ids["hang"])
    assert again.returncode == 1 and "already ended: cancelled" in again.stderr
    missing = qt(path, "cancel", "0123456789abcdef0123")
    assert missing.returncode == 2 and "no run" in missing.stderr
    assert daemon.stop() == 0


def test_cancel_a_handed_over_run_before_any_daemon_takes_it(project, daemons) -> None:
    path = project("jobs:\n  notify:\n    entrypoint: work:record\n", work=WORK)
    handed = qt(path, "trigger", "notify", "--enqueue", "--kwarg", "order_id=1")
    run_id = handed.stdout.strip()
    result = qt(path, "cancel", run_id)
    assert result.returncode == 0, result.stderr
    assert "cancelled" in result.stdout and "before it started" in result.stdout
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: "notify no schedule" in log)
    later = qt(path, "trigger", "notify", "--enqueue", "--wait", "--kwarg", "order_id=2")
    assert later.returncode == 0
    assert daemon.stop() == 0
    assert (path.parent / "orders.txt").read_text() == "2\n"  # the cancelled one never ran


def test_show_a_failed_run_in_full_without_its_secret(project, daemons) -> None:
    secret = "s3cr3t-'\"\\-value"
    path = project(
        """
jobs:
  crm_sync:
    entrypoint: work:noisy
    kwargs:
      token: ${CRM_TOKEN}
    retry: {retries: 1, delay: 0s}
""",
        work=WORK,
    )
    env = clean_env(CRM_TOKEN=secret)
    daemon = daemons([str(path)], cwd=path.parent, env=env)
    daemon.wait_for(lambda log: "crm_sync no schedule" in log)
    handed = subprocess.run(
        [QTASKS, "trigger", "crm_sync", "-c", str(path), "--enqueue", "--wait"],
        capture_output=True, text=True, timeout=30, env=env, cwd=path.parent,
    )  # fmt: skip
    assert handed.returncode == 1
    run_id = handed.stdout.strip()

    def show(*extra: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [QTASKS, "show", run_id, "-c", str(path), *extra],
            capture_output=True, text=True, timeout=30, env=env, cwd=path.parent,
        )  # fmt: skip

    shown = wait_until(lambda: "output (last" in (r := show(env=env)).stdout and r, what="output")
    text = shown.stdout
    escaped = json.dumps(secret)[1:-1]
    for form in (secret, escaped):
        assert form not in text and form not in shown.stderr
    assert "${CRM_TOKEN}" in text
    assert f"run {run_id} of job crm_sync: failed" in text
    assert "trigger    queued" in text and f"node       {socket.gethostname()}:" in text
    assert re.search(r"^  1 .* failed +ConnectionError", text, re.M), text
    assert re.search(r"^  2 .* failed +ConnectionError", text, re.M), text
    assert "traceback" in text and 'File "' in text and "in noisy" in text
    assert "line 0 token=${CRM_TOKEN}" in text and "to stderr" in text
    raw = show("--json", env=env).stdout
    data = json.loads(raw)
    assert data["kwargs"] == {"token": "${CRM_TOKEN}"} and len(data["attempt_log"]) == 2
    assert data["output"][:3] == [f"line {i} token=${{CRM_TOKEN}}" for i in range(3)]
    assert secret not in raw and escaped not in raw
    # From a shell without CRM_TOKEN (systemd's EnvironmentFile): the file still loads.
    bare = show(env=clean_env())
    assert bare.returncode == 0, bare.stderr
    assert "line 0 token=${CRM_TOKEN}" in bare.stdout
    missing = qt(path, "show", "nope")
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr
    assert daemon.stop() == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        body = response.read().decode()
    values = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_over_http(project, daemons) -> None:
    port = _free_port()
    path = project(
        f"""
settings:
  metrics: 127.0.0.1:{port}
jobs:
{TICK}  broken:
    entrypoint: work:noisy
    args: [x, 0]
    schedule: every 2s
""",
        work=WORK,
    )
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: "metrics on http://127.0.0.1" in log)
    assert qt(path, "pause", "broken").returncode == 0
    metrics = wait_until(
        lambda: (m := _scrape(port)).get('qtasks_runs_total{job="tick",status="succeeded"}', 0) >= 2
        and m.get("qtasks_paused_jobs") == 1 and m,
        what="counted runs",
    )  # fmt: skip
    now = time.time()
    assert metrics['qtasks_fire_lateness_seconds_count{job="tick"}'] >= 2
    assert metrics['qtasks_fire_lateness_seconds_bucket{job="tick",le="+Inf"}'] >= 2
    assert metrics['qtasks_run_duration_seconds_count{job="tick"}'] >= 2
    assert now - 10 < metrics['qtasks_job_last_success_timestamp_seconds{job="tick"}'] <= now
    assert now < metrics['qtasks_job_next_fire_timestamp_seconds{job="tick"}'] < now + 3
    assert metrics['qtasks_job_paused{job="broken"}'] == 1
    assert 'qtasks_job_next_fire_timestamp_seconds{job="broken"}' not in metrics
    for name in ("qtasks_running_runs", "qtasks_queued_runs", "qtasks_store_errors_total",
                 "qtasks_log_lines_dropped_total"):  # fmt: skip
        assert name in metrics
    assert daemon.stop() == 0


def test_version_does_not_import_the_operator_modules() -> None:
    code = (
        "import sys, qtasks_cli.cli as c\n"
        "heavy = [m for m in ('prometheus_client', 'qtasks_cli.metrics', 'qtasks_cli.status',"
        " 'qtasks_cli.control', 'sqlite3', 'rich') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_bad_metrics_setting_is_a_located_error(project) -> None:
    for value in ("'localhost'", "'127.0.0.1:99999'", "[1, 2]", "'a b:80'"):
        path = project(f"settings:\n  metrics: {value}\njobs:\n{TICK}", work=WORK)
        result = run_qtasks("validate", str(path))
        assert result.returncode == 2, value
        assert re.search(r"jobs\.yaml:2:\d+: settings\.metrics: expected HOST:PORT", result.stderr)


# --- a person at a terminal ----------------------------------------------------------------

needs_tmux = pytest.mark.skipif(
    subprocess.run(["which", "tmux"], capture_output=True).returncode != 0,
    reason="tmux is not installed (apt-get install tmux)",
)


@needs_tmux
def test_watch_in_a_terminal_follows_the_daemon_and_ctrl_c_leaves_it_clean(
    project, daemons, tmp_path
) -> None:
    from test_live import Terminal

    path = project(f"jobs:\n{TICK}", work=WORK)
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: re.search(r"tick \w+ succeeded", log))
    term = Terminal(path.parent)
    try:
        term.type(f"{QTASKS} status --watch -c jobs.yaml; echo EXIT=$?")
        screen = term.wait_for(
            lambda s: (
                re.search(r"^job +schedule +next", s, re.M) is not None
                and re.search(r"^tick .*every second.*✓", s, re.M) is not None
            ),
            timeout=15,
        )
        assert re.search(r"\d+ running · \d+ queued · up \d+", screen), screen
        assert "latest events" in screen and "succeeded" in screen
        assert qt(path, "pause", "tick").returncode == 0
        term.wait_for(lambda s: re.search(r"^tick .*paused", s, re.M) is not None, timeout=10)
        term.ctrl_c()
        after = term.wait_for(lambda s: "EXIT=0" in s, timeout=10)
        assert not re.search(r"^job +schedule", after, re.M), after
        raw = term.raw
        assert raw.rfind(b"\x1b[?1049l") > raw.rfind(b"\x1b[?1049h")  # the screen was left
    finally:
        term.close()
    assert daemon.stop() == 0


@needs_tmux
def test_history_stats_pictures_in_a_terminal_and_plain_when_piped(project, daemons) -> None:
    from test_live import Terminal

    path = project(f"jobs:\n{TICK}", work=WORK)
    for _ in range(3):
        assert qt(path, "trigger", "tick").returncode == 0
    term = Terminal(path.parent)
    try:
        term.type(f"{QTASKS} history --stats -c jobs.yaml; echo EXIT=$?")
        screen = term.wait_for(lambda s: "EXIT=0" in s, timeout=15)
    finally:
        term.close()
    line = next(x for x in screen.splitlines() if x.startswith("tick "))
    assert re.search(r"[▁▂▃▄▅▆▇█]{3}", line) and "■■■" in line, screen
    piped = qt(path, "history", "--stats")
    assert "■" not in piped.stdout and piped.stdout.startswith("JOB  ")
    as_json = json.loads(qt(path, "history", "--stats", "--json").stdout.splitlines()[0])
    assert as_json["job"] == "tick" and as_json["runs"] == 3


def test_a_daemon_started_as_systemd_does_is_seen_and_steered_from_another_shell(
    project,
    sock_dir,  # noqa: F811
) -> None:
    """The daemon as a Type=notify unit runs it: notify socket, watchdog, journal stream, its
    own environment (a secret the operator's shell lacks), stdin from /dev/null."""
    from test_systemd import Listener, bound

    path = project(
        f"""
jobs:
{TICK}  hang:
    entrypoint: work:hang
    schedule: "@startup"
  noisy:
    entrypoint: work:noisy
    kwargs: {{token: "${{TOKEN}}"}}
""",
        work=WORK,
    )
    address = sock_dir / "notify"
    env = clean_env(
        NOTIFY_SOCKET=str(address),
        WATCHDOG_USEC="2000000",
        INVOCATION_ID="0123456789abcdef0123456789abcdef",
        JOURNAL_STREAM="8:12345",
        TOKEN="unit-secret",
    )
    with bound(address) as receiver, (path.parent / "journal.log").open("w") as journal:
        proc = subprocess.Popen(
            [QTASKS, "run", str(path)], cwd=path.parent, env=env, stdin=subprocess.DEVNULL,
            stdout=journal, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            Listener(receiver).until(lambda t: any(m.startswith("READY=1") for m in t), 20)
            up = wait_until(lambda: (r := qt(path, "status")).returncode == 0 and r, what="up")
            assert f"pid {proc.pid}" in up.stdout  # from a shell without TOKEN
            wait_until(lambda: (path.parent / "hang.started").exists(), what="hang started")
            run_id = wait_until(lambda: job_status(path, "hang")["running"], what="running")[0][
                "run_id"
            ]
            assert qt(path, "cancel", run_id).returncode == 0
            assert qt(path, "pause", "tick").returncode == 0
            wait_until(lambda: job_status(path, "tick")["state"] == "paused", what="paused")
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    assert qt(path, "status").returncode == 3
    text = (path.parent / "journal.log").read_text()
    assert re.search(r"^<4>WARNING hang \w+ cancelled", text, re.M), text
