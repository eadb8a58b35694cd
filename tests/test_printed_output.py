"""What jobs print reaches the operator's terminal and the journal only safe: terminal control
stripped and ``${NAME}`` values hidden, however the job writes it (in pieces with flushes,
``writelines``, ``sys.stdout.buffer``, a ``logging.StreamHandler`` made at import, a lone
surrogate). Through the installed command: ``qtasks trigger`` and ``qtasks run --ui plain``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from conftest import QTASKS, clean_env

SECRET = "SuperSecretValue42"

WORK = r"""
import logging
import os
import sys
import time

EARLY = logging.StreamHandler()  # made at import, as many modules do
EARLY.setFormatter(logging.Formatter("early handler: %(message)s"))
LOG = logging.getLogger("shop.work")
LOG.addHandler(EARLY)
LOG.propagate = False


def noisy(token):
    sys.stdout.write("Bearer " + token[:6])
    sys.stdout.flush()
    time.sleep(0.5)  # longer than a partial line is held for: the start of a secret waits
    sys.stdout.write(token[6:] + "\n")
    sys.stdout.writelines(["lines: ", token, "\n"])
    sys.stdout.buffer.write(b"bytes: " + token.encode() + b" \xff\n")
    sys.stdout.flush()
    print("title \x1b]0;pwned\x07 clip \x1b]52;c;aGk=\x07 clear \x1b[2J c1 \x9b31m bidi \u202e end")
    print("split " + token[:5] + "\u2066" + token[5:] + " and " + token[:3] + "\x1b[0m" + token[3:])
    print("lone surrogate \ud83d here")
    LOG.warning("the token is %s", token)
    print("still printing after that")
"""

JOBS = """
jobs:
  noisy:
    entrypoint: work:noisy
    kwargs: {token: "${TOKEN}"}
"""


def _project(tmp_path: Path) -> Path:
    (tmp_path / "work.py").write_text(WORK)
    path = tmp_path / "jobs.yaml"
    path.write_text(JOBS)
    return path


def _assert_safe(text: str) -> None:
    assert SECRET not in text, text
    for part in ("\x1b", "\x9b", "\u202e", "\u2066", "\x07"):
        assert part not in text, (part, text)
    assert "${TOKEN}" in text, text
    assert "still printing after that" in text, text  # the drain survived the surrogate


def test_trigger_shows_job_prints_safe(tmp_path: Path) -> None:
    path = _project(tmp_path)
    done = subprocess.run(
        [QTASKS, "trigger", "noisy", "-c", str(path)],
        cwd=tmp_path,
        env=clean_env(TOKEN=SECRET),
        capture_output=True,
        timeout=60,
    )
    text = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert done.returncode == 0, text
    _assert_safe(text)
    assert "title" in text and "clear" in text and "end" in text


def test_run_plain_shows_job_prints_safe(tmp_path: Path) -> None:
    path = _project(tmp_path)
    (path.parent / "jobs.yaml").write_text(
        JOBS.replace("kwargs:", "schedule: '@startup'\n    kwargs:")
    )
    out = path.parent / "out.txt"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [QTASKS, "run", "--ui", "plain", str(path)],
            cwd=tmp_path,
            env=clean_env(TOKEN=SECRET),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait(lambda: b"noisy" in out.read_bytes() and b"succeeded" in out.read_bytes())
        finally:
            proc.terminate()
            assert proc.wait(timeout=30) == 0
    _assert_safe(out.read_bytes().decode("utf-8", "replace"))


def _wait(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)


def test_a_job_reading_another_jobs_secret_stores_none_of_it(tmp_path: Path) -> None:
    # `owner` has the secret in its kwargs; `reader` takes it from the environment itself.
    (tmp_path / "work.py").write_text(
        "import os\n"
        "def owner(token):\n    return 'ok'\n"
        "def reader():\n"
        "    token = os.environ['TOKEN']\n"
        "    print('reader saw', token)\n"
        "    raise ConnectionError('CRM refused ' + token)\n"
    )
    path = tmp_path / "jobs.yaml"
    path.write_text(
        "jobs:\n"
        "  owner: {entrypoint: 'work:owner', kwargs: {token: '${TOKEN}'}}\n"
        "  reader: {entrypoint: 'work:reader'}\n"
    )
    done = subprocess.run(
        [QTASKS, "trigger", "reader", "-c", str(path)],
        cwd=tmp_path,
        env=clean_env(TOKEN=SECRET),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert SECRET.encode() not in done.stdout + done.stderr
    stored = b"".join(p.read_bytes() for p in (tmp_path / ".qtasks").glob("state.db*"))
    assert SECRET.encode() not in stored
    assert b"CRM refused ${TOKEN}" in stored
