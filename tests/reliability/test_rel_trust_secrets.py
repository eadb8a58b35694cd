"""``${NAME}`` secrets with hostile bytes (quotes, backslashes, non-ASCII, controls, escapes)
run down the paths a run can take, through the installed command; no spelling of the value may
reach a log, the terminal, the history, the state file or a hook's payload."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import QTASKS, clean_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reliability.harness import Daemon, tail, write_project
from reliability.registry import case

GROUP = "trust boundaries"
# Every secret starts and ends with a marker: if either shows anywhere, part of it leaked,
# whatever encoding or cleaning happened on the way.
START, END = "Zq7", "Xw9"
MODULE = """
import json
import os


def raw(token):
    raise ValueError(f"bad token {token}")


def reprd(token):
    raise KeyError(token)


def jsoned(token):
    raise RuntimeError(json.dumps({"token": token}))


def asciid(token):
    raise RuntimeError(ascii([token, "'\\""]))


def byted(token):
    raise ValueError(token.encode("utf-8"))


def chained(token):
    try:
        raise KeyError(token)
    except KeyError:
        raise RuntimeError("wrapped")  # the traceback shows the KeyError as its context


def returns(token):
    return {"token": token, "repr": repr(token), "list": [token, token.encode()]}


def nested(token):
    # JSON of JSON, repr of repr, JSON of a repr of JSON: each layer escapes again.
    deep = json.dumps(json.dumps({"token": token}))
    print("printed", token)  # kept for `qtasks show`, a multi-line value over several lines
    print("printed", deep, repr(repr(token)))
    return {"deep": deep, "again": json.dumps(repr(json.dumps([token])))}


def nested_fails(token):
    print("about to fail with", json.dumps({"t": token}))
    raise RuntimeError(repr(json.dumps({"t": repr(token)}, ensure_ascii=False)))


def items(token):
    yield token
    yield {"t": token}


def keep(item):
    return item


def hook(result):
    with open(os.environ["HOOK_OUT"], "a", encoding="utf-8", errors="backslashreplace") as f:
        f.write(repr(result) + "\\n")
"""
FAILING = ("raw", "reprd", "jsoned", "asciid", "byted", "chained", "nested_fails")
JOBS = (
    "".join(
        f"""\
{name}:
  entrypoint: rel_secret:{name}
  kwargs: {{token: "${{TOKEN}}"}}
  schedule: "* * * * * *"
  on_failure: rel_secret:hook
  on_success: rel_secret:hook
"""
        for name in (*FAILING, "returns", "nested")
    )
    + """\
items:
  entrypoint: rel_secret:items
  args: ["${TOKEN}"]
  generate_handler: rel_secret:keep
  echo: true
  schedule: "* * * * * *"
in_child:
  entrypoint: rel_secret:reprd
  kwargs: {token: "${TOKEN}"}
  isolation: process
  schedule: "* * * * * *"
  on_failure: rel_secret:hook
"""
)

HANDED_OVER = """\
api:
  entrypoint: rel_secret:returns
  kwargs: {token: "${TOKEN}"}
  on_success: rel_secret:hook
"""

hostile = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "'",
                '"',
                "\\",
                "\\'",
                "é",
                "€",
                "\u202e",
                "\x1b[2J",
                "\n",
                "\t",
                "\x7f",
                "\x9b",
                "%s",
                "{}",
                "$",
            ]
        ),
        st.characters(codec="utf-8", exclude_characters="\x00"),
    ),
    min_size=2,  # 8 characters at least: hidden wherever it occurs (redaction's rule)
    max_size=10,
).map(lambda parts: START + "".join(parts) + END)


def assert_hidden(text: str, where: str) -> None:
    for marker in (START, END):
        assert marker not in text, f"part of the secret reached {where}:\n" + "\n".join(
            line[:400] for line in text.splitlines() if marker in line
        )


def qtasks(*args: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [QTASKS, *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        errors="backslashreplace",
    )


def state_bytes(folder: Path) -> str:
    return "".join(
        p.read_bytes().decode("utf-8", "backslashreplace")
        for p in sorted((folder / ".qtasks").glob("state.db*"))
    )


@case(
    "secrets_never_leave",
    group=GROUP,
    title="a `${TOKEN}` value with quotes, backslashes, non-ASCII, line breaks, controls and "
    "escapes (generated) raised as is, as repr, ascii, bytes, JSON, nested (JSON of JSON, a "
    "repr of a repr) and in a chained traceback, returned, yielded, echoed and printed, in a "
    "thread and in a child process",
    checks="through `qtasks run` (plain and JSON logs, and what the jobs printed), `qtasks "
    "trigger`, `history`, `history --json`, `history --stats`, `show` (text and JSON), `list`, "
    "`validate`, the state file's bytes and the hooks' payloads, no part of the value shows "
    "(a marker at each end must never appear)",
)
@pytest.mark.timeout(900)  # three examples of about 40 commands each: minutes on a busy machine
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(secret=hostile)
def test_secrets_never_leave(secret: str) -> None:
    folder = Path(tempfile.mkdtemp(prefix="qtasks-secret-"))
    try:
        config = write_project(folder, JOBS, {"rel_secret": MODULE}, tick=False)
        hook_out = folder / "hook.txt"
        env = clean_env(TOKEN=secret, HOOK_OUT=str(hook_out))
        outputs: dict[str, str] = {}
        for job in ("raw", "returns", "items", "in_child"):
            result = qtasks("trigger", job, "-c", str(config), folder=folder, env=env)
            assert result.returncode in (0, 1), result.stderr
            outputs[f"trigger {job}"] = result.stdout + result.stderr
        for ui in ("plain", "json"):
            daemon = Daemon(config, env, ui=ui)
            try:
                daemon.wait_for(
                    lambda log: all(
                        log.count(f"{name} ") + log.count(f'"{name}"') >= 3
                        for name in (*FAILING, "returns", "nested", "items", "in_child")
                    ),
                    timeout=60,
                    what="every job run to its end",
                )
                assert daemon.stop() == 0, tail(daemon.log)
            finally:
                daemon.kill()
            outputs[f"run --ui {ui}"] = daemon.log + daemon.out_path.read_text(errors="replace")
        for args in (
            ["history", "--limit", "1000"],
            ["history", "--json", "--limit", "1000"],
            ["history", "--stats"],
            ["list"],
            ["validate"],
        ):
            result = qtasks(
                *args,
                "-c" if args[0] == "history" else str(config),
                *([str(config)] if args[0] == "history" else []),
                folder=folder,
                env=env,
            )
            assert result.returncode == 0, result.stderr
            outputs[" ".join(args)] = result.stdout + result.stderr
        history_rows = [
            json.loads(line) for line in outputs["history --json --limit 1000"].splitlines()
        ]
        assert {row["job"] for row in history_rows} >= {
            *FAILING,
            "returns",
            "nested",
            "items",
            "in_child",
        }
        outputs["history --json, decoded"] = repr(history_rows)
        # A daemon's run in full: its arguments, traceback, result and the lines it printed.
        for job in ("nested", "nested_fails", "items"):
            run_id = next(
                row["run_id"]
                for row in history_rows
                if row["job"] == job and row["trigger"] != "manual"
            )
            for extra in ([], ["--json"]):
                shown = qtasks("show", run_id, *extra, "-c", str(config), folder=folder, env=env)
                assert shown.returncode == 0, shown.stderr
                assert "${TOKEN}" in shown.stdout, shown.stdout
                outputs[f"show {job} {extra}"] = shown.stdout + shown.stderr
        assert "printed" in outputs["show nested []"]
        outputs["hook payloads"] = hook_out.read_text()
        assert outputs["hook payloads"].count("RunResult(") >= 3
        outputs["state file"] = state_bytes(folder)
        for where, text in outputs.items():
            assert_hidden(text, where)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@case(
    "secrets_not_stored_for_enqueue",
    group=GROUP,
    title="`API_TOKEN=... qtasks trigger api --enqueue` with `kwargs: {token: ${API_TOKEN}}`",
    checks="the queued row in the state file holds `${API_TOKEN}`, never the value",
)
def test_secrets_not_stored_for_enqueue(tmp_path: Path) -> None:
    config = write_project(tmp_path, HANDED_OVER, {"rel_secret": MODULE}, tick=True)
    env = clean_env(TOKEN=START + "'\"\\é" + END)
    result = qtasks("trigger", "api", "--enqueue", "-c", str(config), folder=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert_hidden(result.stdout + result.stderr, "trigger --enqueue")
    assert_hidden(state_bytes(tmp_path), "the state file")


@case(
    "secrets_never_leave_postgres",
    group=GROUP,
    title="the generated `${TOKEN}` values of `secrets_never_leave` on the PostgreSQL store: "
    "foreground triggers of failing, returning and yielding jobs, then a daemon's runs",
    checks="no part of the value in the commands' output, `history --json` or any column of "
    "the `runs` and `attempts` tables",
)
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(secret=hostile)
def test_secrets_never_leave_postgres(secret: str) -> None:
    import psycopg
    from pg import fresh_schema, postgres_url

    url = postgres_url()
    folder = Path(tempfile.mkdtemp(prefix="qtasks-secret-pg-"))
    try:
        with fresh_schema(url) as schema:
            config = write_project(
                folder,
                JOBS,
                {"rel_secret": MODULE},
                settings=f"state: {url}\nschema: {schema}\n",
                tick=False,
            )
            env = clean_env(TOKEN=secret, HOOK_OUT=str(folder / "hook.txt"))
            outputs: dict[str, str] = {}
            for job in ("raw", "reprd", "returns", "items"):
                result = qtasks("trigger", job, "-c", str(config), folder=folder, env=env)
                assert result.returncode in (0, 1), result.stderr
                outputs[f"trigger {job}"] = result.stdout + result.stderr
            daemon = Daemon(config, env)
            try:
                daemon.wait_for(
                    lambda log: all(log.count(f"{name} ") >= 3 for name in FAILING),
                    timeout=60,
                    what="every failing job run",
                )
                assert daemon.stop() == 0, tail(daemon.log)
            finally:
                daemon.kill()
            outputs["run"] = daemon.log
            result = qtasks("history", "--json", "-c", str(config), folder=folder, env=env)
            assert result.returncode == 0, result.stderr
            outputs["history --json"] = result.stdout + repr(
                [json.loads(line) for line in result.stdout.splitlines()]
            )
            with psycopg.connect(url, autocommit=True) as conn:
                for table in ("runs", "attempts"):
                    rows = conn.execute(f'SELECT * FROM "{schema}".{table}').fetchall()
                    outputs[f"table {table}"] = repr(rows)
            assert "CRM" not in outputs["table runs"]  # the dump is real text
            assert "ValueError" in outputs["table runs"]
            for where, text in outputs.items():
                assert_hidden(text, where)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@case(
    "secrets_not_stored_for_enqueue_api",
    group=GROUP,
    title="the shop's code calls `qtasks_cli.enqueue('api', config=...)` for a job with "
    "`kwargs: {token: ${TOKEN}}`, with `TOKEN` set",
    checks="the queued row, the daemon's log and the run's history hold no part of the value "
    "(today enqueue() without arguments hands over `{}`, which replaces the job's `kwargs`, so "
    "the run fails for want of `token`: the request builder of issue 14 decides that)",
)
def test_secrets_not_stored_for_enqueue_api(tmp_path: Path) -> None:
    import sys

    config = write_project(tmp_path, HANDED_OVER, {"rel_secret": MODULE}, tick=True)
    env = clean_env(TOKEN=START + "'\"\\é" + END, HOOK_OUT=str(tmp_path / "hook.txt"))
    code = f"import qtasks_cli; print(qtasks_cli.enqueue('api', config={str(config)!r}))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    assert_hidden(state_bytes(tmp_path), "the state file")
    daemon = Daemon(config, env)
    try:
        # Today enqueue() without arguments hands over `{}`, which replaces the job's kwargs,
        # so the run fails for want of `token` (the request builder of issue 14 decides); either
        # way no part of the secret may show.
        daemon.wait_for(
            lambda log: f"{run_id} succeeded" in log or f"{run_id} failed" in log,
            30,
            "the queued run's end",
        )
        assert daemon.stop() == 0, tail(daemon.log)
    finally:
        daemon.kill()
    assert_hidden(daemon.log, "the daemon's log")
    assert_hidden(state_bytes(tmp_path), "the state file")
    hook = tmp_path / "hook.txt"
    assert_hidden(hook.read_text() if hook.exists() else "", "the hook's payload")


@case(
    "secrets_in_live_output",
    group=GROUP,
    title="`qtasks run --ui live` on a terminal (a pty) while a job prints its `${TOKEN}` value "
    "(two lines, with quotes, a backslash and an escape) to stdout and stderr, and fails with "
    "it",
    checks="the table's events area shows `${TOKEN}`; no part of the value reaches the terminal",
)
def test_secrets_in_live_output(tmp_path: Path) -> None:
    import fcntl
    import os
    import pty
    import signal
    import struct
    import termios
    import time

    from reliability.test_rel_trust_terminal import _read_pty

    module = MODULE + (
        "\n\ndef loud(token):\n"
        "    import sys\n"
        "    print('printed', token, flush=True)\n"
        "    print('to stderr', repr(token), file=sys.stderr, flush=True)\n"
        "    raise ValueError(token)\n"
    )
    jobs = 'loud:\n  entrypoint: rel_secret:loud\n  kwargs: {token: "${TOKEN}"}\n'
    jobs += '  schedule: "* * * * * *"\n'
    config = write_project(tmp_path, jobs, {"rel_secret": module}, tick=False)
    secret = START + "'\"\\\x1b[1m\nsecond line" + END  # over two lines
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(tmp_path)
        env = clean_env(TOKEN=secret, TERM="xterm-256color")
        os.execve(QTASKS, [QTASKS, "run", "--ui", "live", str(config)], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 300, 0, 0))
    buffer = bytearray()
    try:
        _read_pty(
            fd,
            time.monotonic() + 30,
            lambda data: data.count(b"${TOKEN}") >= 3 and b"to stderr" in data,
            buffer,
        )
    finally:
        os.kill(pid, signal.SIGTERM)
        _read_pty(fd, time.monotonic() + 15, lambda data: False, buffer)
        os.waitpid(pid, 0)
        os.close(fd)
    screen = bytes(buffer).decode("utf-8", "replace")
    assert "printed ${TOKEN}" in screen and "to stderr" in screen, screen[-3000:]
    assert_hidden(screen, "the live table")


def _status(folder: Path, job: str) -> str | None:
    import sqlite3

    db = sqlite3.connect(f"file:{folder / '.qtasks' / 'state.db'}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute("SELECT status FROM runs WHERE job = ?", (job,)).fetchone()
    finally:
        db.close()
    return None if row is None else str(row[0])


@case(
    "secrets_in_interrupted_rerun",
    group=GROUP,
    title="a job with `retry_interrupted: true` and a `${TOKEN}` argument is running when the "
    "daemon is SIGKILLed; the next daemon re-runs it, and the re-run fails with the value",
    checks="the re-run happens, and no part of the value reaches either daemon's log, "
    "`history --json` or the state file",
)
def test_secrets_in_interrupted_rerun(tmp_path: Path) -> None:
    import signal

    module = MODULE + (
        "\n\ndef slow(token):\n"
        "    import os, time\n"
        "    if not os.path.exists('started'):\n"
        "        open('started', 'w').close()\n"
        "        time.sleep(60)\n"
        "    raise ValueError(repr(token))\n"
    )
    jobs = (
        'slow:\n  entrypoint: rel_secret:slow\n  kwargs: {token: "${TOKEN}"}\n'
        '  schedule: "0 0 1 1 *"\n  retry_interrupted: true\n'
    )
    config = write_project(tmp_path, jobs, {"rel_secret": module}, tick=True)
    env = clean_env(TOKEN=START + "'\"\\\x1b" + END)
    first = Daemon(config, env)
    try:
        first.wait_ready()
        result = qtasks("trigger", "slow", "--enqueue", "-c", str(config), folder=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        first.wait_for(lambda log: (tmp_path / "started").exists(), 30, "the slow run's start")
        # Kill once the store says `running` (its start is written in batches): a kill before
        # that is a different case, where the request may go back to the queue.
        first.wait_for(lambda log: _status(tmp_path, "slow") == "running", 30, "`running` stored")
        first.stop(signal.SIGKILL)
    finally:
        first.kill()
    second = Daemon(config, env)
    try:
        second.wait_for(
            lambda log: "re-run as" in log and "slow" in log and " failed " in log,
            30,
            "the re-run's failure",
        )
        assert second.stop() == 0, tail(second.log)
    finally:
        second.kill()
    history = qtasks("history", "--json", "-c", str(config), folder=tmp_path, env=env)
    assert history.returncode == 0, history.stderr
    for where, text in {
        "the first daemon's log": first.log,
        "the second daemon's log": second.log,
        "history --json": history.stdout,
        "the state file": state_bytes(tmp_path),
    }.items():
        assert_hidden(text, where)
    assert "${TOKEN}" in second.log


@case(
    "secrets_redaction_rewrites_nothing_else",
    group=GROUP,
    title="`REGION=eu` (a value too short to be a secret) and `TOKEN` (a long one with quotes "
    "and a backslash) as `${NAME}` arguments of a job that returns JSON with `eu` inside other "
    "words, keys and values, and the token inside a string",
    checks="`qtasks validate` warns about `${REGION}`; `history --json` holds the result "
    "preview as valid JSON, equal to the returned value with only the token's string changed "
    "to `${TOKEN}`; no part of the token in the state file",
)
def test_secrets_redaction_rewrites_nothing_else(tmp_path: Path) -> None:
    module = (
        "def regional(region, token):\n"
        '    return {"neutral": region, "queue": [1, "reuse", True], region: {"t": token},'
        ' "json": \'{"a": "eu"}\'}\n'
    )
    jobs = (
        "regional:\n  entrypoint: rel_regional:regional\n"
        '  kwargs: {region: "${REGION}", token: "${TOKEN}"}\n'
    )
    config = write_project(tmp_path, jobs, {"rel_regional": module}, tick=False)
    env = clean_env(REGION="eu", TOKEN=START + "'\"\\é" + END)
    validated = qtasks("validate", str(config), folder=tmp_path, env=env)
    assert validated.returncode == 0, validated.stderr
    assert "${REGION} is shorter than 4 characters" in validated.stderr, validated.stderr
    result = qtasks("trigger", "regional", "-c", str(config), folder=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    history = qtasks("history", "--json", "-c", str(config), folder=tmp_path, env=env)
    assert history.returncode == 0, history.stderr
    (row,) = [json.loads(line) for line in history.stdout.splitlines()]
    assert json.loads(row["result"]) == {
        "neutral": "eu",
        "queue": [1, "reuse", True],
        "eu": {"t": "${TOKEN}"},
        "json": '{"a": "eu"}',
    }
    assert_hidden(state_bytes(tmp_path) + history.stdout + result.stdout, "the state or output")
