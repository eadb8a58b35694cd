"""Values interpolated from ``${ENV}`` never show: not in logs (plain and JSON), ``list``,
``history``, validation errors or a failed job's traceback; ``${NAME}`` shows instead. And the
state file and its folder are owner-only."""

from __future__ import annotations

import json
import os
import re
import stat
import textwrap
from pathlib import Path

import pytest
from conftest import clean_env, run_qtasks
from reliability.harness import Daemon

SECRET = "s3cr3t-T0KEN-9f8e7d"
PLACEHOLDER = "${SHOP_TOKEN}"
ENV = clean_env(SHOP_TOKEN=SECRET)

WORK = """
import os


def leak(token, note=""):
    raise ValueError(f"bad token {token}")


def echo(token):
    return {"echo": token, "note": f"called with {token}"}


def items(token):
    yield token
    yield f"item-{token}"


def keep(item):
    return item


def hook(result):
    raise RuntimeError(f"hook got {os.environ['SHOP_TOKEN']}")


def tick():
    return "tock"
"""

JOBS = """
settings:
  shutdown_grace: 2s
jobs:
  tick:
    entrypoint: work:tick
    schedule: "* * * * * *"
  leak:
    entrypoint: work:leak
    kwargs: {token: "${SHOP_TOKEN}", note: "n"}
    schedule: "* * * * * *"
    on_failure: work:hook
  echo:
    entrypoint: work:echo
    args: ["${SHOP_TOKEN}"]
    schedule: "* * * * * *"
    description: "echoes the token"
  items:
    entrypoint: work:items
    args: ["${SHOP_TOKEN}"]
    generate_handler: work:keep
    echo: true
    schedule: "* * * * * *"
  in_child:
    entrypoint: work:leak
    kwargs: {token: "prefix-${SHOP_TOKEN}"}
    isolation: process
    schedule: "*/2 * * * * *"
"""


def project(folder: Path, jobs: str = JOBS) -> Path:
    (folder / "work.py").write_text(textwrap.dedent(WORK))
    config = folder / "jobs.yaml"
    config.write_text(textwrap.dedent(jobs))
    return config


def assert_hidden(text: str, where: str) -> None:
    assert SECRET not in text, f"the secret leaked into {where}:\n" + "\n".join(
        line[:300] for line in text.splitlines() if SECRET in line
    )


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | Path]:
    """A plain daemon and a JSON daemon (one after the other on the same state), a manual
    trigger, then every way of looking at the result."""
    folder = tmp_path_factory.mktemp("secrets")
    config = project(folder)
    logs: dict[str, str | Path] = {"config": config}
    for ui in ("plain", "json"):
        daemon = Daemon(config, ENV, ui=ui, umask=0)
        try:
            daemon.wait_ready()
            daemon.wait_for(
                lambda log, d=daemon: log.count("in_child") >= 3 and d.fired() >= 3,
                timeout=20,
                what="a few runs of every job",
            )
            assert daemon.stop() == 0, daemon.log[-3000:]
        finally:
            daemon.kill()
        logs[f"run {ui}"] = daemon.log + daemon.out_path.read_text()
    for name, args in {
        "trigger": ("trigger", "leak", "-c", str(config)),
        "trigger items": ("trigger", "items", "-c", str(config)),
        "list": ("list", str(config), "--next", "2"),
        "list --json": ("list", str(config), "--json"),
        "history": ("history", "-c", str(config), "--limit", "1000"),
        "history --json": ("history", "-c", str(config), "--json", "--limit", "1000"),
        "history --stats": ("history", "-c", str(config), "--stats"),
        "validate": ("validate", str(config)),
    }.items():
        result = run_qtasks(*args, cwd=folder, env=ENV, timeout=60)
        logs[name] = result.stdout + result.stderr
    return logs


@pytest.mark.parametrize("ui", ["plain", "json"])
def test_daemon_logs_show_the_placeholder(ran: dict[str, str | Path], ui: str) -> None:
    log = str(ran[f"run {ui}"])
    assert_hidden(log, f"the {ui} log")
    assert "bad token ${SHOP_TOKEN}" in log  # the job's error
    assert "hook got ${SHOP_TOKEN}" in log  # the hook's error
    assert "item-${SHOP_TOKEN}" in log  # an echoed item
    assert "bad token prefix-${SHOP_TOKEN}" in log  # from the child process
    if ui == "json":
        for line in log.splitlines():
            if line.startswith("{"):
                json.loads(line)


@pytest.mark.parametrize("command", ["trigger", "trigger items", "validate"])
def test_trigger_and_validate_output(ran: dict[str, str | Path], command: str) -> None:
    text = str(ran[command])
    assert_hidden(text, command)
    if command == "trigger":
        assert "bad token ${SHOP_TOKEN}" in text
    if command == "trigger items":
        assert "item-${SHOP_TOKEN}" in text


@pytest.mark.parametrize("command", ["list", "list --json"])
def test_list(ran: dict[str, str | Path], command: str) -> None:
    text = str(ran[command])
    assert_hidden(text, command)
    assert "leak" in text and "echo" in text


def test_history_text_and_stats(ran: dict[str, str | Path]) -> None:
    for command in ("history", "history --stats"):
        assert_hidden(str(ran[command]), command)
    assert "bad token ${SHOP_TOKEN}" in str(ran["history"])


def test_history_json_errors_results_and_tracebacks(ran: dict[str, str | Path]) -> None:
    text = str(ran["history --json"])
    assert_hidden(text, "history --json")
    rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    failed = [r for r in rows if r["job"] == "leak" and r["status"] == "failed"]
    assert failed, text[:2000]
    for r in failed:
        assert r["error"] == "bad token ${SHOP_TOKEN}", r
        # The traceback ends with the exception line, which carried the value.
        assert "ValueError: bad token ${SHOP_TOKEN}" in r["traceback"], r["traceback"]
        assert 'raise ValueError(f"bad token {token}")' in r["traceback"], r["traceback"]
    child = [r for r in rows if r["job"] == "in_child" and r["status"] == "failed"]
    assert child and all("prefix-${SHOP_TOKEN}" in (r["traceback"] or "") for r in child), child
    echoed = [r for r in rows if r["job"] == "echo" and r["status"] == "succeeded"]
    assert echoed and all(PLACEHOLDER in r["result"] for r in echoed), echoed
    items = [r for r in rows if r["job"] == "items" and r["status"] == "succeeded"]
    assert items and all(f"item-{PLACEHOLDER}" in r["result"] for r in items), items


def test_validation_errors_of_a_job_with_secrets(tmp_path: Path) -> None:
    config = project(
        tmp_path,
        """
        jobs:
          wrong_kwargs:
            entrypoint: work:leak
            kwargs: {token: "${SHOP_TOKEN}", nope: "${SHOP_TOKEN}"}
          too_many_args:
            entrypoint: work:echo
            args: ["${SHOP_TOKEN}", "${SHOP_TOKEN}", 3]
          bad_schedule:
            entrypoint: work:echo
            args: ["${SHOP_TOKEN}"]
            schedule: "61 * * * *"
          bad_handler:
            entrypoint: work:echo
            args: ["${SHOP_TOKEN}"]
            generate_handler: work:keep
        """,
    )
    for command in (("validate", str(config)), ("run", "--ui", "plain", str(config))):
        result = run_qtasks(*command, cwd=tmp_path, env=ENV, timeout=30)
        assert result.returncode == 2, result.stderr
        text = result.stdout + result.stderr
        assert_hidden(text, " ".join(command))
        for job in ("wrong_kwargs", "too_many_args", "bad_schedule", "bad_handler"):
            assert job in text, text
        assert "Traceback" not in text


def test_trigger_with_arguments_that_do_not_fit(ran: dict[str, str | Path]) -> None:
    config = Path(ran["config"])
    result = run_qtasks(
        "trigger", "echo", "-c", str(config), "--kwarg", "nope=1", cwd=config.parent, env=ENV
    )
    assert result.returncode == 2
    assert_hidden(result.stdout + result.stderr, "trigger --kwarg")


def test_state_file_holds_no_secret(ran: dict[str, str | Path]) -> None:
    """Manual runs record their arguments with ``${NAME}`` placeholders, not the values."""
    folder = Path(ran["config"]).parent / ".qtasks"
    for path in folder.iterdir():
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path.name


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_is_owner_only_after_run_even_with_umask_0(ran: dict[str, str | Path]) -> None:
    folder = Path(ran["config"]).parent / ".qtasks"
    assert _mode(folder) == 0o700, oct(_mode(folder))
    assert _mode(folder / "state.db") == 0o600, oct(_mode(folder / "state.db"))
    for path in folder.iterdir():
        assert _mode(path) & 0o077 == 0, (path.name, oct(_mode(path)))


def test_run_refuses_a_state_file_writable_by_others(tmp_path: Path) -> None:
    config = project(tmp_path, "jobs:\n  tick: {entrypoint: 'work:tick', schedule: '@hourly'}\n")
    state = tmp_path / ".qtasks" / "state.db"
    first = run_qtasks("history", "-c", str(config), cwd=tmp_path, env=ENV)
    assert first.returncode == 0, first.stderr
    assert state.exists()
    for mode in (0o666, 0o620):
        os.chmod(state, mode)
        result = run_qtasks("run", "--ui", "plain", str(config), cwd=tmp_path, env=ENV, timeout=20)
        assert result.returncode == 2, (oct(mode), result.stderr)
        message = result.stderr.strip()
        assert "writable by other users" in message and f"chmod 600 {state}" in message, message
        assert re.search(rf"mode 0?{oct(mode)[2:]}", message), message
        assert "Traceback" not in message
