"""Every broken job file gives one located message, exit code 2, no traceback, fast.

Each file in tests/broken/ starts with ``# expect: LINE TEXT``: the line the message must
point at and a piece of the message.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import QTASKS, clean_env

from qtasks_cli.config import load_config
from qtasks_cli.errors import ConfigError

CORPUS = Path(__file__).with_name("broken")
FILES = sorted(CORPUS.glob("*.yaml"))
EXPECT = re.compile(rb"^# expect: (\d+) (.+)$")
MEMORY_LIMIT = 512 * 1024 * 1024
# A blow-up (billion laughs, quadratic parsing) takes minutes: it runs into the subprocess's
# 30 s bound and fails on its exit code. Speed is measured in bench/, never asserted here.


def expectation(path: Path) -> tuple[int, str]:
    first = path.read_bytes().split(b"\n", 1)[0]
    match = EXPECT.match(first)
    assert match, f"{path.name} must start with '# expect: LINE TEXT'"
    return int(match.group(1)), match.group(2).decode()


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def start(path: Path) -> subprocess.Popen[str]:
    # preexec_fn is only safe without threads: every process is started from this thread.
    return subprocess.Popen(
        [QTASKS, "validate", "--no-import", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        preexec_fn=limit_memory,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float  # an upper bound: processes of a batch are reaped in order


def run_all(paths: list[Path]) -> dict[Path, Run]:
    """``qtasks validate --no-import`` on every path, a few at a time (one per CPU)."""
    workers = max(2, os.cpu_count() or 2)
    runs: dict[Path, Run] = {}
    for i in range(0, len(paths), workers):
        batch = [(path, time.perf_counter(), start(path)) for path in paths[i : i + workers]]
        for path, began, proc in batch:
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate(timeout=10)
            elapsed = time.perf_counter() - began
            runs[path] = Run(returncode=proc.returncode, stdout=out, stderr=err, seconds=elapsed)
    return runs


def test_the_corpus_is_large_and_small() -> None:
    assert len(FILES) >= 40
    assert all(path.stat().st_size < 100_000 for path in FILES)
    assert len({expectation(path) for path in FILES}) > 30  # not one mistake copied around


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_loader_points_at_the_expected_line(path: Path) -> None:
    line, text = expectation(path)
    with pytest.raises(ConfigError) as info:
        load_config(path, check_imports=False, env={})
    assert [(p.line, text in p.message) for p in info.value.problems] == [(line, True)]


def _cli_available() -> bool:
    return (Path(__file__).parents[1] / "qtasks_cli" / "cli.py").exists()


needs_cli = pytest.mark.skipif(not _cli_available(), reason="qtasks validate is not written yet")


@pytest.fixture(scope="module")
def corpus_runs() -> dict[Path, Run]:
    return run_all(FILES)


@needs_cli
@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_validate_command_reports_the_line(path: Path, corpus_runs: dict[Path, Run]) -> None:
    line, text = expectation(path)
    done = corpus_runs[path]
    assert done.returncode == 2, done.stderr
    assert f"{path}:{line}:" in done.stderr
    assert text in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@needs_cli
def test_generated_missing_and_valid_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as fh:
        fh.write(b"jobs:\n  report: {entrypoint: shop.reports:daily}\n")
        row = b"# " + b"x" * 1021 + b"\n"
        for _ in range(10 * 1024 + 1):
            fh.write(row)
    missing = tmp_path / "nope.yaml"
    good = tmp_path / "jobs.yaml"
    good.write_text("jobs:\n  a: {entrypoint: 'm:f'}\n  b: {entrypoint: 'm:g'}\n")
    runs = run_all([empty, huge, missing, good])
    for path, message in [
        (empty, f"{empty}:1:1: the file is empty; expected a mapping with a 'jobs' key"),
        (huge, f"{huge}:1:1: the file is larger than 10 MB"),
        (missing, f"{missing}: no such file"),
    ]:
        assert (runs[path].returncode, runs[path].stderr.strip()) == (2, message)
    assert (runs[good].returncode, runs[good].stdout.strip(), runs[good].stderr) == (
        0,
        "2 jobs OK",
        "",
    )
