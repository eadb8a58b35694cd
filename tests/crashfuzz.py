"""The crash-point fuzzer: the real daemon, SIGKILLed at seeded random instants, restarted.

Used by ``tests/test_crash_fuzz.py`` (a short run per store in CI) and by
``bench/soak_crash.py`` (the long run whose figures go in RELIABILITY.md).

The jobs record every body execution, tagged with its run id (``qtasks_cli.current_run()``)
and, for handed-over requests, a token of the test's own, in a file of their own. The
checker then holds those records against ``qtasks history --json``:

- no run id's body ran twice, and no (job, scheduled time) ran twice;
- no handed-over request's body ran twice (except a re-run that ``retry_interrupted``
  made of a run recorded ``interrupted``, which the user asked for);
- every body has a history row, and its status is true: ``succeeded`` or, when the daemon
  died meanwhile, ``interrupted`` saying it was in progress or may have run;
- no ``succeeded`` row without a body; no request lost: each ends with a row.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JOBS_MODULE = """
import json, os, time
import qtasks_cli

BODIES = os.environ["FUZZ_BODIES"]


def _record(token=None):
    run = qtasks_cli.current_run()
    line = json.dumps({
        "run_id": run.run_id if run else None,
        "job": run.job if run else None,
        "scheduled": run.scheduled.isoformat() if run and run.scheduled else None,
        "token": token,
        "pid": os.getpid(),
    })
    fd = os.open(BODIES, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)


def tick():
    _record()


def slow():
    _record()
    time.sleep(1.5)


def notify(token):
    _record(token)
    time.sleep(0.05)
"""

JOBS_YAML = """
settings:
  max_concurrent: 64
{settings}
jobs:
  tick_all:
    entrypoint: fuzzjobs:tick
    schedule: '* * * * * *'
    catch_up: all
    misfire_grace: 5s
  tick_latest:
    entrypoint: fuzzjobs:tick
    schedule: '* * * * * *'
    catch_up: latest
  overlapping:
    entrypoint: fuzzjobs:slow
    schedule: '* * * * * *'
    overlap: allow
  notify:
    entrypoint: fuzzjobs:notify
    kwargs: {{token: none}}
  notify_retry:
    entrypoint: fuzzjobs:notify
    kwargs: {{token: none}}
    retry_interrupted: true
"""


@dataclass
class Outcome:
    """What one fuzz run saw; ``problems`` is empty when the invariant held."""

    kills: int = 0
    bodies: int = 0
    requests: int = 0
    duplicates: int = 0
    lost: int = 0
    untrue: int = 0
    interrupted: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.kills} kills, {self.bodies} bodies run, {self.requests} requests, "
            f"{self.duplicates} duplicates, {self.lost} lost, {self.untrue} untrue rows, "
            f"{self.interrupted} interrupted"
        )


def _qtasks() -> str:
    beside = Path(sys.executable).with_name("qtasks")
    return str(beside) if beside.exists() else "qtasks"


def prepare(folder: Path, settings: str = "") -> Path:
    """Write the job module and file into ``folder``; return the job file's path."""
    (folder / "fuzzjobs.py").write_text(textwrap.dedent(JOBS_MODULE))
    path = folder / "jobs.yaml"
    path.write_text(JOBS_YAML.format(settings=settings))
    return path


def _env(folder: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("QTASKS_", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    env.update(extra)
    env["FUZZ_BODIES"] = str(folder / "bodies.jsonl")
    env["PYTHONPATH"] = str(folder)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(path: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    try:
        return subprocess.Popen(
            [_qtasks(), "run", "--ui", "plain", str(path)],
            cwd=path.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    finally:
        out.close()


def _wait_ready(log: Path, seen: int, proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait until the daemon's log shows it started (a plan line past offset ``seen``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_bytes()[seen:]
        if b"next fire" in text:
            return len(log.read_bytes())
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}:\n{text.decode()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"daemon did not start within {timeout}s")


def _history(path: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [_qtasks(), "history", "-c", str(path), "--json", "--limit", "10000000"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if done.returncode != 0:
        raise AssertionError(f"history failed: {done.stderr}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def fuzz(
    folder: Path,
    *,
    kills: int,
    seed: int,
    env_extra: dict[str, str] | None = None,
    settings: str = "",
    enqueue: Callable[[Path, str, str], str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Outcome:
    """Run the daemon ``kills`` times, SIGKILL each at a seeded random instant, then once
    more to drain the queue; check the records against the history."""
    rng = random.Random(seed)
    path = prepare(folder, settings)
    env = _env(folder, env_extra or {})
    log = folder / "daemon.log"
    tokens: dict[str, tuple[str, str]] = {}  # token -> (job, run id)
    seen = 0
    outcome = Outcome()
    put = enqueue or _enqueue_cli(env)
    for round_ in range(kills):
        proc = _start(path, env, log)
        try:
            seen = _wait_ready(log, seen, proc, timeout=60)
            life = rng.uniform(0.05, 1.2)
            deadline = time.monotonic() + life
            while time.monotonic() < deadline:
                if rng.random() < 0.5:
                    token = f"r{round_}-{len(tokens)}"
                    job = "notify_retry" if rng.random() < 0.2 else "notify"
                    tokens[token] = (job, put(path, job, token))
                time.sleep(rng.uniform(0.0, 0.15))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        outcome.kills += 1
        if progress is not None and (round_ + 1) % 10 == 0:
            progress(f"{round_ + 1} kills")
    # A last life: let every handed-over request end, then stop gracefully.
    proc = _start(path, env, log)
    try:
        seen = _wait_ready(log, seen, proc, timeout=60)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = _history(path, env)
            waiting = [
                r
                for r in rows
                if r["job"].startswith("notify") and r["status"] in ("queued", "claimed", "running")
            ]
            if not waiting:
                break
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    check(folder, path, env, tokens, outcome)
    return outcome


def _enqueue_cli(env: dict[str, str]) -> Callable[[Path, str, str], str]:
    def put(path: Path, job: str, token: str) -> str:
        done = subprocess.run(
            [_qtasks(), "trigger", job, "-c", str(path), "--enqueue", "--kwarg", f"token={token}"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        if done.returncode != 0:
            raise AssertionError(f"enqueue failed: {done.stderr}")
        return done.stdout.strip()

    return put


def check(
    folder: Path,
    path: Path,
    env: dict[str, str],
    tokens: dict[str, tuple[str, str]],
    outcome: Outcome,
) -> None:
    bodies_file = folder / "bodies.jsonl"
    bodies = [
        json.loads(line)
        for line in (bodies_file.read_text().splitlines() if bodies_file.exists() else [])
        if line.strip()
    ]
    rows = {r["run_id"]: r for r in _history(path, env)}
    outcome.bodies = len(bodies)
    outcome.requests = len(tokens)
    outcome.interrupted = sum(1 for r in rows.values() if r["status"] == "interrupted")
    problems = outcome.problems

    by_run = Counter(b["run_id"] for b in bodies)
    for run_id, count in by_run.items():
        if count > 1:
            outcome.duplicates += count - 1
            problems.append(f"run {run_id} ({rows.get(run_id, {}).get('job')}): body ran {count}x")
    by_fire = Counter((b["job"], b["scheduled"]) for b in bodies if b["scheduled"])
    for fire, count in by_fire.items():
        if count > 1:
            outcome.duplicates += count - 1
            problems.append(f"fire {fire}: body ran {count}x")
    by_token: dict[str, list[dict[str, Any]]] = {}
    for body in bodies:
        if body["token"] is not None:
            by_token.setdefault(body["token"], []).append(body)
    for token, runs in by_token.items():
        if len(runs) < 2:
            continue
        # A re-run is allowed only where the user asked for it and the run before it is
        # honestly recorded as interrupted.
        earlier = [rows.get(b["run_id"], {}) for b in runs[:-1]]
        allowed = (
            tokens[token][0] == "notify_retry"
            and len(runs) == 2  # re-run once, never a chain of re-runs
            and all(r.get("status") == "interrupted" for r in earlier)
        )
        if not allowed:
            outcome.duplicates += len(runs) - 1
            problems.append(f"request {token}: body ran {len(runs)}x: {earlier}")
    for body in bodies:
        row = rows.get(body["run_id"])
        if row is None:
            outcome.lost += 1
            problems.append(f"body of run {body['run_id']} has no history row")
        elif row["status"] not in ("succeeded", "interrupted", "running", "failed"):
            outcome.untrue += 1
            problems.append(f"body of run {body['run_id']} ran, but its row says {row}")
        elif row["status"] == "interrupted" and "never" in (row.get("error") or ""):
            outcome.untrue += 1
            problems.append(f"run {body['run_id']} ran, but its row says {row['error']}")
    ran = set(by_run)
    for run_id, row in rows.items():
        if row["status"] == "succeeded" and run_id not in ran:
            outcome.untrue += 1
            problems.append(f"run {run_id} recorded succeeded but its body never ran: {row}")
    for token, (job, run_id) in tokens.items():
        row = rows.get(run_id)
        if row is None:
            outcome.lost += 1
            problems.append(f"request {token} ({job}, run {run_id}) has no history row")
        elif token not in by_token and row["status"] != "interrupted":
            # Begun but killed before the body: "interrupted" is true; anything else lies.
            outcome.lost += 1
            problems.append(f"request {token} ({job}) never ran, and its row says {row}")
