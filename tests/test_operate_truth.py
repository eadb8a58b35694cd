"""The operator's view tells the truth, end to end through the installed ``qtasks`` against a
real SQLite daemon (found by a hostile test of issue 17):

- ``status`` from a shell that lacks the daemon's ``${NAME}`` variables, or has another
  ``$TZ``, does not say "reload pending", and no variable value reaches the state file;
- ``show`` right after ``trigger --enqueue --wait`` has every line the run printed: from its
  task, threads it starts (however deep), a pool it makes, its log records, and, for a process
  job, the child and what the child starts; a foreground ``trigger`` keeps its lines too;
- a run waiting for a ``max_concurrent`` slot, a running one, and one given up on whose thread
  still runs are told apart by ``status`` and by the metrics gauges;
- a job both disabled and paused is disabled (both visible in ``--json``);
- a metrics setting that cannot work (address, port, missing library) is a located error
  (exit 2) before anything starts.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import Any

from conftest import clean_env, run_qtasks
from test_operate import _free_port, _scrape, qt, status_json, wait_until

SECRET = "pa55-w0rd-that-must-stay-home"

WORK = """
import asyncio, concurrent.futures, os, subprocess, sys, threading, time
from pathlib import Path

import logging
logging.basicConfig(level=logging.INFO)  # at import, as scripts do: qtasks' handlers replace it
log = logging.getLogger("shop.sync")

def chatty(tag):
    print(f"{tag}: from the job")
    log.info("%s: logged", tag)
    log.debug("%s: below the level: not kept", tag)
    def deeper():
        print(f"{tag}: two threads deep")
    def first():
        print(f"{tag}: from its thread")
        inner = threading.Thread(target=deeper)
        inner.start()
        inner.join()
    t = threading.Thread(target=first)
    t.start()
    t.join()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pool.submit(print, f"{tag}: from its pool").result()
    sys.stderr.write(f"{tag}: to stderr\\n")

async def chatty_async(tag):
    chatty(tag)  # on the loop, as an async job's code is

def chatty_process(tag):
    chatty(tag)
    sys.stdout.flush()
    os.system(f"echo {tag}: from os.system")
    subprocess.run(["sh", "-c", f"echo {tag}: from a subprocess on stderr >&2"], check=True)
    os.write(1, f"{tag}: written to fd 1\\n".encode())
    print(f"{tag}: last line, no newline", end="")

async def hold(name):
    Path(f"{name}.started").write_text("x")
    while not Path(f"{name}.release").exists():
        await asyncio.sleep(0.05)

def stuck(name):
    Path(f"{name}.started").write_text("x")
    while not Path(f"{name}.release").exists():
        time.sleep(0.05)

def quick():
    print("quick ran")

def uses_token(token):
    print("token has", len(token), "characters")
"""

EXPECTED = [
    "from the job",
    "logged",
    "from its thread",
    "two threads deep",
    "from its pool",
    "to stderr",
]
PROCESS_EXPECTED = [
    *EXPECTED,
    "from os.system",
    "from a subprocess on stderr",
    "written to fd 1",
    "last line, no newline",
]


QUICK = "jobs:\n  quick:\n    entrypoint: work:quick\n"


def _line(tag: str, line: str, process: bool = False) -> str:
    if line != "logged":
        return f"{tag}: {line}"
    # In a child process the module's own logging.basicConfig() writes the record to stderr.
    return f"INFO:shop.sync:{tag}: logged" if process else f"INFO shop.sync: {tag}: logged"


def show_json(path: Path, run_id: str) -> dict[str, Any]:
    shown = qt(path, "show", run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout))


def job_of(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(j for j in data["jobs"] if j["name"] == name)


def test_status_in_another_environment_says_as_loaded_and_keeps_values_home(
    project, daemons
) -> None:
    path = project(
        """
jobs:
  sync:
    entrypoint: work:uses_token
    kwargs:
      token: "${CRM_TOKEN}"
    schedule: "0 3 * * *"
  tokyo:
    entrypoint: work:quick
    timezone: Asia/Tokyo
    schedule: "0 3 * * *"
""",
        work=WORK,
    )
    daemon_env = clean_env(CRM_TOKEN=SECRET, TZ="Europe/Berlin")
    daemon = daemons([str(path)], cwd=path.parent, env=daemon_env)
    daemon.wait_for(lambda log: "qtasks ready" in log)
    # The control thread publishes once the daemon is ready: wait for that, bounded.
    deadline = time.monotonic() + 30
    while run_qtasks("status", "-c", str(path), cwd=path.parent, env=daemon_env).returncode:
        assert time.monotonic() < deadline, "status never found the daemon"
        time.sleep(0.1)
    # The operator's shell: no CRM_TOKEN (systemd's EnvironmentFile had it), another zone.
    for env in (clean_env(TZ="UTC"), clean_env(), clean_env(CRM_TOKEN="other", TZ="Asia/Tokyo")):
        result = run_qtasks("status", "--json", "-c", str(path), cwd=path.parent, env=env)
        assert result.returncode == 0, result.stderr
        [node] = json.loads(result.stdout)["daemons"]
        assert node["reload_pending"] is False, env.get("TZ")
        text = run_qtasks("status", "-c", str(path), cwd=path.parent, env=env).stdout
        assert "job file as loaded" in text and "reload pending" not in text
    # A real change is still seen from that shell.
    path.write_text(path.read_text().replace('"0 3 * * *"', '"0 4 * * *"', 1))
    changed = run_qtasks("status", "--json", "-c", str(path), cwd=path.parent, env=clean_env())
    assert json.loads(changed.stdout)["daemons"][0]["reload_pending"] is True
    assert daemon.stop() == 0
    for stored in path.parent.joinpath(".qtasks").iterdir():
        assert SECRET.encode() not in stored.read_bytes(), stored


def test_show_right_after_trigger_wait_has_every_line_printed(project, daemons) -> None:
    path = project(
        """
jobs:
  inline:
    entrypoint: work:chatty_async
  threaded:
    entrypoint: work:chatty
  isolated:
    entrypoint: work:chatty_process
    isolation: process
""",
        work=WORK,
    )
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: "isolated no schedule" in log)
    for round_ in range(3):  # the race was lost most of the time: a few rounds suffice
        for job, expected in (
            ("inline", EXPECTED),
            ("threaded", EXPECTED),
            ("isolated", PROCESS_EXPECTED),
        ):
            tag = f"{job}{round_}"
            handed = qt(path, "trigger", job, "--enqueue", "--wait", "--arg", tag)
            assert handed.returncode == 0, handed.stderr
            run_id = handed.stdout.strip()
            output = show_json(path, run_id)["output"]  # at once: no waiting for it
            process = job == "isolated"
            assert sorted(output) == sorted(_line(tag, x, process) for x in expected), output
    # The daemon still prints them where it always did.
    assert "isolated0: from os.system" in daemon.output
    assert "isolated0: written to fd 1" in daemon.output
    assert daemon.stop() == 0


def test_a_foreground_trigger_keeps_its_output_for_show(project) -> None:
    path = project("jobs:\n  inline:\n    entrypoint: work:chatty\n", work=WORK)
    ran = qt(path, "trigger", "inline", "--arg", "fg")
    assert ran.returncode == 0, ran.stderr
    assert "fg: two threads deep" in ran.stdout  # still printed where the user looks
    [line] = qt(path, "history", "inline", "--json").stdout.splitlines()
    output = show_json(path, json.loads(line)["run_id"])["output"]
    assert sorted(output) == sorted(_line("fg", line) for line in EXPECTED), output


def test_waiting_for_a_slot_running_and_abandoned_are_told_apart(project, daemons) -> None:
    port = _free_port()
    path = project(
        f"""
settings:
  max_concurrent: 1
  metrics: 127.0.0.1:{port}
jobs:
  hold:
    entrypoint: work:hold
    args: [hold]
  stuck:
    entrypoint: work:stuck
    args: [stuck]
    timeout: 1s
  quick:
    entrypoint: work:quick
""",
        work=WORK,
    )
    here = path.parent
    daemon = daemons([str(path)], cwd=here)
    daemon.wait_for(lambda log: "metrics on http://" in log)

    def gauges() -> tuple[float, float, float, float]:
        m = _scrape(port)
        return (
            m["qtasks_running_runs"],
            m["qtasks_slot_waiting_runs"],
            m["qtasks_queued_runs"],
            m["qtasks_abandoned_runs"],
        )

    # One run holds the only slot; the next waits for it.
    held = qt(path, "trigger", "hold", "--enqueue").stdout.strip()
    wait_until(lambda: (here / "hold.started").exists(), what="hold started")
    waiting = qt(path, "trigger", "quick", "--enqueue").stdout.strip()
    code, data = wait_until(
        lambda: (s := status_json(path))[1] and job_of(s[1], "quick")["state"] == "waiting" and s,
        what="quick waiting for a slot",
    )
    assert code == 0
    assert job_of(data, "hold")["state"] == "running"
    assert job_of(data, "hold")["running"][0]["run_id"] == held
    assert job_of(data, "quick")["waiting_for_slot"] == 1
    assert job_of(data, "quick")["claimed"] == [waiting]
    assert data["daemons"][0]["running"] == 1 and data["daemons"][0]["waiting_for_slot"] == 1
    text = qt(path, "status").stdout
    assert re.search(rf"^quick +waiting for a free slot \(max_concurrent\) \(run {waiting}\)",
                     text, re.M), text  # fmt: skip
    assert gauges() == (1, 1, 0, 0)
    (here / "hold.release").write_text("x")
    wait_until(lambda: job_of(status_json(path)[1], "quick")["last"], what="quick ran")

    # A thread job times out and is given up on, but its thread goes on holding the slot.
    stuck = qt(path, "trigger", "stuck", "--enqueue", "--wait")
    assert stuck.returncode == 1 and "timed_out" in stuck.stderr
    stuck_id = stuck.stdout.strip()
    again = qt(path, "trigger", "quick", "--enqueue").stdout.strip()
    data = wait_until(
        lambda: (d := status_json(path)[1]) and job_of(d, "quick")["state"] == "waiting" and d,
        what="quick waiting behind the abandoned thread",
    )
    assert job_of(data, "stuck")["state"] == "abandoned"
    assert job_of(data, "stuck")["abandoned"] == [stuck_id]
    assert data["daemons"][0]["abandoned"] == 1 and data["daemons"][0]["running"] == 0
    text = qt(path, "status").stdout
    assert re.search(rf"^stuck +abandoned run {stuck_id} still running", text, re.M), text
    assert gauges() == (0, 1, 0, 1)
    (here / "stuck.release").write_text("x")
    data = wait_until(
        lambda: (d := status_json(path)[1])
        and job_of(d, "quick")["last"]["run_id"] == again
        and d,
        what="the slot back and quick run",
    )  # fmt: skip
    assert {j["name"]: j["state"] for j in data["jobs"]} == {
        "hold": "idle", "stuck": "idle", "quick": "idle",
    }  # fmt: skip
    assert gauges() == (0, 0, 0, 0)
    assert daemon.stop() == 0


def test_disabled_wins_over_paused_and_both_show(project) -> None:
    path = project(
        """
jobs:
  off:
    entrypoint: work:quick
    enabled: false
    schedule: "0 3 * * *"
  on:
    entrypoint: work:quick
    schedule: "0 3 * * *"
""",
        work=WORK,
    )
    for job in ("off", "on"):
        assert qt(path, "pause", job).returncode == 0
    code, data = status_json(path)
    assert code == 3  # no daemon; the jobs are still described
    off, on = job_of(data, "off"), job_of(data, "on")
    assert off["state"] == "disabled" and off["disabled"] is True and off["enabled"] is False
    assert off["paused"] is not None and off["paused"]["by"]
    assert on["state"] == "paused" and on["disabled"] is False
    text = qt(path, "status").stdout
    assert re.search(r"^off +disabled, also paused  ", text, re.M), text
    assert re.search(r"^on +paused since ", text, re.M), text
    listed = run_qtasks("list", str(path)).stdout
    assert re.search(r"^off .*\[.*, disabled, also paused\]$", listed, re.M), listed
    assert re.search(r"^on .*\[.*, paused, enabled\]$", listed, re.M), listed


def test_metrics_addresses_that_cannot_be_used_are_refused_up_front(project) -> None:
    for value, why in (
        ("no-such-host.invalid:9464", "cannot resolve host 'no-such-host.invalid'"),
        ("192.0.2.1:9464", "is it an address of this machine?"),
    ):
        path = project(f"settings:\n  metrics: '{value}'\n{QUICK}", work=WORK)
        for command in (["validate", str(path)], ["run", str(path), "--ui", "plain"]):
            result = run_qtasks(*command, cwd=path.parent, timeout=60)
            assert result.returncode == 2, (command, result.stdout, result.stderr)
            assert re.search(r"jobs\.yaml:2:12: settings\.metrics: ", result.stderr), result.stderr
            assert why in result.stderr and "Traceback" not in result.stderr
    # A port another program holds: located, exit 2, before the state is even opened.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = project(f"settings:\n  metrics: 127.0.0.1:{port}\n{QUICK}", work=WORK)
        assert run_qtasks("validate", str(path)).returncode == 0  # a running daemon may hold it
        result = run_qtasks("run", str(path), "--ui", "plain", cwd=path.parent, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.match(
        rf".*jobs\.yaml:2:12: settings\.metrics: cannot listen on 127\.0\.0\.1:{port}: "
        "the port is already in use",
        lines[0],
    ), lines
    assert not (path.parent / ".qtasks").exists()


def test_metrics_without_prometheus_client_is_a_located_error(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    import pytest

    from qtasks_cli.config import load_config
    from qtasks_cli.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "prometheus_client" else real(name, *a),
    )
    path = tmp_path / "jobs.yaml"
    path.write_text("settings:\n  metrics: 9464\njobs:\n  a:\n    entrypoint: os:getcwd\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, check_imports=True)
    assert re.search(
        r"jobs\.yaml:2:12: settings\.metrics: needs prometheus_client.*"
        r"pip install 'qtasks-cli\[metrics\]'",
        str(caught.value),
    )
    assert load_config(path, check_imports=False).settings.metrics == ("127.0.0.1", 9464)
