"""A ``${NAME}`` secret printed, returned, yielded and raised with an invisible character
between every two of its characters (zero-width space, ANSI escapes, NUL, ...): a terminal
joins it again, so redaction must see through them (qtasks_cli.redaction)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import clean_env

from reliability.harness import Daemon, tail, write_project
from reliability.registry import case
from reliability.test_rel_trust_secrets import GROUP, qtasks, state_bytes

SPLIT_MODULE = r"""
import sys
import time

SEPARATORS = {
    "zwsp": "\u200b", "soft_hyphen": "\u00ad", "bom": "\ufeff", "joiner": "\u2060",
    "ansi": "\x1b[0m", "color": "\x1b[38;5;208m", "title": "\x1b]0;t\x07", "nul": "\x00",
    "bel": "\x07", "backspace": "\x08", "del": "\x7f",
}


def joined(token, sep):
    return SEPARATORS[sep].join(token)


def prints(token, sep):
    print("printed", joined(token, sep))
    print("error stream", joined(token, sep), file=sys.stderr)
    return {"value": joined(token, sep), "bytes": joined(token, sep).encode("utf-8")}


def raises(token, sep):
    raise ValueError("CRM said " + joined(token, sep))


def pieces(token, sep):
    # The start of the line, flushed, and its end a moment later (longer than a line is held).
    print("Bearer " + token[:5] + SEPARATORS[sep], end="", flush=True)
    time.sleep(0.6)
    print(token[5:], flush=True)


def items(token, sep):
    yield joined(token, sep)


def keep(item):
    return item
"""
SPLIT_SEPARATORS = ("zwsp", "soft_hyphen", "bom", "joiner", "ansi", "color", "title", "nul")
SPLIT_SEPARATORS += ("bel", "backspace", "del")
SPLIT_SECRET = "Zq7-hunter2-Xw9"


def _split_jobs() -> str:
    jobs = []
    for number, sep in enumerate(SPLIT_SEPARATORS):
        for kind in ("prints", "raises", "pieces", "items"):
            extra = "  generate_handler: rel_split:keep\n  echo: true\n" if kind == "items" else ""
            isolation = "  isolation: process\n" if number % 3 == 0 and kind != "items" else ""
            jobs.append(
                f"{kind}_{sep}:\n  entrypoint: rel_split:{kind}\n"
                f'  kwargs: {{token: "${{TOKEN}}", sep: {sep}}}\n'
                f'  schedule: "*/4 * * * * *"\n{extra}{isolation}'
            )
    return "".join(jobs)


def assert_unseen(text: str, where: str) -> None:
    """No part of the secret as the operator would see it: invisible characters taken out."""
    from qtasks_cli.text import visible

    seen = visible(text)[0]
    for part in (SPLIT_SECRET, "hunter2", "Zq7", "Xw9"):
        assert part not in seen, f"{part!r} shows in {where}:\n" + "\n".join(
            line[:400] for line in seen.splitlines() if part in line
        )


@case(
    "secrets_split_by_invisible_characters",
    group=GROUP,
    title="jobs print, return, yield and raise their `${TOKEN}` value with a zero-width space, "
    "soft hyphen, U+FEFF, word joiner, ANSI colour or reset, an OSC title, NUL, BEL, backspace "
    "or DEL between every two characters, and print a line whose start (the first characters "
    "and the separator) is flushed before the rest",
    checks="through `qtasks trigger`, `qtasks run`, `history`, `history --json`, `show` (text "
    "and JSON) and the state file's bytes, with every invisible character taken out (as a "
    "terminal joins the text), no part of the value shows; `${TOKEN}` does",
)
@pytest.mark.timeout(600)
def test_secrets_split_by_invisible_characters(tmp_path: Path) -> None:
    config = write_project(tmp_path, _split_jobs(), {"rel_split": SPLIT_MODULE}, tick=False)
    env = clean_env(TOKEN=SPLIT_SECRET)
    outputs: dict[str, str] = {}
    for sep in ("zwsp", "ansi", "nul"):
        for kind in ("prints", "raises", "pieces", "items"):
            result = qtasks("trigger", f"{kind}_{sep}", "-c", str(config), folder=tmp_path, env=env)
            assert result.returncode in (0, 1), result.stderr
            outputs[f"trigger {kind}_{sep}"] = result.stdout + result.stderr
    daemon = Daemon(config, env)
    try:
        daemon.wait_for(
            lambda log: all(
                f"{kind}_{sep} " in log and log.count(f"{kind}_{sep} ") >= 3
                for kind in ("prints", "raises", "pieces")
                for sep in SPLIT_SEPARATORS
            ),
            timeout=90,
            what="every job run to its end",
        )
        assert daemon.stop() == 0, tail(daemon.log)
    finally:
        daemon.kill()
    outputs["run"] = daemon.log + daemon.out_path.read_text(errors="replace")
    for args in (["history", "--limit", "1000"], ["history", "--json", "--limit", "1000"]):
        result = qtasks(*args, "-c", str(config), folder=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        outputs[" ".join(args)] = result.stdout + result.stderr
    rows = [json.loads(line) for line in outputs["history --json --limit 1000"].splitlines()]
    outputs["history --json, decoded"] = "\n".join(repr(row) for row in rows)
    for row in rows:
        if row["trigger"] != "manual" and row["job"].startswith(("prints_", "raises_", "pieces_")):
            for extra in ([], ["--json"]):
                shown = qtasks(
                    "show", row["run_id"], *extra, "-c", str(config), folder=tmp_path, env=env
                )
                assert shown.returncode == 0, shown.stderr
                outputs[f"show {row['job']} {extra}"] = shown.stdout + shown.stderr
    outputs["state file"] = state_bytes(tmp_path)
    for where, text in outputs.items():
        assert_unseen(text, where)
    assert "${TOKEN}" in outputs["history --limit 1000"]
    assert "Bearer ${TOKEN}" in outputs["show pieces_zwsp []"], outputs["show pieces_zwsp []"]


HEAVY_MODULE = r"""
import time

SECRETS = ("alphasecret0", "bravosecret1", "charliesec2", "deltasecret3")


def _split(secret):
    return "\u200b".join(secret)


def lines(*given):
    line = "".join(_split(s) + " " for s in (*SECRETS, *given)) * 50
    for _ in range(200):
        print(line)  # 1.2 MB kept with the run, redacted as it is recorded


def megabytes(*given):
    unit = "".join(_split(s) + " " for s in (*SECRETS, *given))
    time.sleep(0.2)
    print((unit * (4_000_000 // len(unit)))[:4_000_000])


def partial():
    print("progress 10%", end="")  # held, let go when the run ends: on the loop
    time.sleep(0.6)


async def hello():
    print("hello")  # from the loop, through the same tee
"""

HEAVY_JOBS = """
lines: {entrypoint: "rel_heavy:lines", schedule: "*/3 * * * * *", args: ["${A}", "${B}"]}
megabytes: {entrypoint: "rel_heavy:megabytes", schedule: "*/5 * * * * *", args: ["${C}", "${D}"]}
partial: {entrypoint: "rel_heavy:partial", schedule: "*/5 * * * * *"}
hello: {entrypoint: "rel_heavy:hello", schedule: "* * * * * *"}
"""


@pytest.mark.timeout(300)
@case(
    "redacting_heavy_output_holds_nothing_up",
    group=GROUP,
    title="four `${NAME}` secrets loaded; a job prints 200 lines (1.2 MB) of them with a "
    "zero-width space between every two characters every 3 s, another prints 4 MB of them in "
    "one write every 5 s, beside a job that leaves a partial line and an async job printing "
    "every second",
    checks="the per-second job keeps its times, every run that ran succeeds (a heavy job may "
    "truly skip its own next fire): the recorded output is "
    "redacted in a thread of the daemon's own, and the tee's lock is never held while text is "
    "redacted (the loop waited on it behind 4 MB: 14 of 20 fires missed); no secret reaches "
    "the history",
)
def test_redacting_heavy_output_holds_nothing_up(tmp_path: Path) -> None:
    from reliability.harness import (
        Scenario,
        assert_all,
        assert_healthy,
        false_busy_skips,
        run_scenarios,
    )

    env = {"A": "alphasecret0", "B": "bravosecret1", "C": "charliesec2", "D": "deltasecret3"}

    def each_ran_to_its_end(daemon: Daemon) -> None:
        # On a busy machine one of the 1.2 MB runs may take longer than the ticks below: wait
        # for an end of every job whose end is asserted, not for a count of seconds.
        daemon.wait_for(
            lambda log: all(
                re.search(rf"\b{job} \S+ (succeeded|failed)", log)
                for job in ("lines", "partial", "hello")
            ),
            timeout=90,
            what="an end of lines, partial and hello",
        )

    scenario = Scenario(
        name="heavy",
        jobs=HEAVY_JOBS,
        modules={"rel_heavy": HEAVY_MODULE},
        ticks=8,
        env=env,
        driver=each_ran_to_its_end,
    )
    out = run_scenarios([scenario], tmp_path)["heavy"]
    assert_healthy(out)
    # (the 4 MB write is redacted in its job's thread, seconds: its run may still be going at
    # the stop, and is then honestly cancelled)
    for job, least in (("lines", 1), ("megabytes", 0), ("partial", 1), ("hello", 1)):
        # A heavy job's own next fire may find it still being recorded (its 1.2 MB of output
        # redacted off the loop takes seconds): that skip is true.
        rows = out.of(job)
        assert not false_busy_skips(rows, settle=6.0), out.show(rows)
        assert_all(out.ended(job), status="succeeded", at_least=least)
    assert not [r for r in out.rows if r["status"] in ("running", "claimed")]
    for row in out.rows:
        for value in env.values():
            assert value not in json.dumps(row), (row["job"], value)
