"""Shared helpers: the installed ``qtasks`` command and job files written to a temp folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def qtasks_bin() -> str:
    """The installed console script of the Python running the tests."""
    beside = Path(sys.executable).with_name("qtasks")
    if beside.exists():
        return str(beside)
    found = shutil.which("qtasks")
    if found is None:
        raise RuntimeError("the qtasks command is not installed: pip install -e '.[test]'")
    return found


QTASKS = qtasks_bin()


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("QTASKS_", "NOTIFY_SOCKET", "JOURNAL_STREAM", "INVOCATION_ID", "WATCHDOG_")
        )
    }
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_qtasks(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 30,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``qtasks ARGS`` to completion, bounded in time."""
    return subprocess.run(
        [QTASKS, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or clean_env(),
        input=input,
    )


class Daemon:
    """A ``qtasks run`` in the background, with its stderr collected in a file."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = cwd / f"daemon-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [QTASKS, "run", "--ui", "plain", *args],
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env or clean_env(),
            text=True,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 15) -> str:
        """Poll the log until ``predicate(text)`` holds; fail with the log if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output
            if predicate(text):
                return text
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"condition not met within {timeout}s; log:\n{self.output}")

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def daemons() -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(args, cwd, env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def project(tmp_path: Path) -> Callable[..., Path]:
    """Write ``jobs.yaml`` and any modules into a temp folder; return the YAML's path."""

    def write(yaml_text: str, **modules: str) -> Path:
        for name, source in modules.items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        path = tmp_path / "jobs.yaml"
        path.write_text(textwrap.dedent(yaml_text))
        return path

    return write


@pytest.fixture(autouse=True)
def _no_secrets_from_other_tests() -> Iterator[None]:
    """Every job file loaded in a process adds its secrets to the ones hidden in text that
    belongs to no run (``redaction.remember``): in the daemon on purpose, across tests not."""
    from qtasks_cli import redaction

    saved = redaction._Known.pairs
    redaction._Known.pairs = ()
    try:
        yield
    finally:
        redaction._Known.pairs = saved
