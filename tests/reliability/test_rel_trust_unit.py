"""``qtasks systemd-unit`` on job files in folders with hostile names: the unit it prints is
what the README pipes into /etc/systemd/system, so a name must never add a directive."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_qtasks

from reliability.registry import case

GROUP = "trust boundaries"
JOBS = "jobs:\n  a:\n    entrypoint: work:f\n    schedule: '@daily'\n"
INJECTION = "x\nExecStartPre=/bin/sh -c 'touch /tmp/qtasks-pwned'\n#"
EXPRESSIBLE = [
    "my jobs 100%",
    'say "hi"',
    "it's",
    "back\\slash",
    "$HOME and ${PATH}",
    "semi;colon",
    "ünïcødé ✓",
    "-leading-dash",
    "%n%i",
    "trailing\\",
]
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "s": " "}


def exec_words(value: str) -> list[str]:
    """An ``ExecStart=`` value split as systemd.service(5) "Command lines" says: words split on
    white space, double or single quotes group, C escapes inside, ``$$`` and ``%%`` are ``$``
    and ``%`` (the reference the unit's quoting is checked against)."""
    words: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] == " ":
            i += 1
        if i >= n:
            break
        word, quote = "", None
        while i < n and (quote or value[i] != " "):
            c = value[i]
            if quote and c == quote:
                quote = None
            elif not quote and c in "\"'":
                quote = c
            elif c == "\\" and i + 1 < n:
                i += 1
                word += _ESCAPES.get(value[i], value[i])
            elif c in "$%" and value[i + 1 : i + 2] == c:
                word += c
                i += 1
            else:
                word += c
            i += 1
        words.append(word)
    return words


@case(
    "systemd_unit_injection",
    group=GROUP,
    title="`qtasks systemd-unit` on a job file in a folder named "
    "`x\\nExecStartPre=/bin/sh -c '...'\\n#` (and with `\\r`, U+2028)",
    checks="exit 2 with one line naming the value and the rule (systemd.syntax(7)); nothing "
    "on stdout, so nothing reaches /etc/systemd/system",
)
@pytest.mark.parametrize("name", [INJECTION, "x\rExecStartPre=/bin/true", "x\u2028y"])
def test_systemd_unit_injection(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    folder.mkdir(parents=True)  # the name's slashes make folders, as in the attack
    (folder / "jobs.yaml").write_text(JOBS)
    result = run_qtasks("systemd-unit", str(folder / "jobs.yaml"), cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be written into a systemd unit" in lines[0], lines
    assert "Traceback" not in result.stderr


@case(
    "systemd_unit_hostile_names",
    group=GROUP,
    title="`qtasks systemd-unit` in folders named with spaces, quotes, backslashes, `$`, `%` "
    "specifiers, `;`, non-ASCII, a leading dash and a trailing backslash",
    checks="exit 0 (or exit 2 for the trailing backslash, which a bare value cannot hold); "
    "one directive per line; `ExecStart=` splits back to exactly [qtasks, run, the job file]; "
    "`systemd-analyze verify` accepts the unit where it is installed",
)
def test_systemd_unit_hostile_names(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    for number, name in enumerate(EXPRESSIBLE):
        folder = tmp_path / name
        folder.mkdir()
        config = folder / "jobs.yaml"
        config.write_text(JOBS)
        result = run_qtasks("systemd-unit", str(config), "--name", f"hostile{number}", cwd=tmp_path)
        if name.endswith("\\"):
            assert result.returncode == 2 and "line continuation" in result.stderr, result
            continue
        assert result.returncode == 0, (name, result.stderr)
        unit = result.stdout
        settings = [line for line in unit.splitlines() if line and not line.startswith(("#", "["))]
        assert all(re.fullmatch(r"[A-Za-z]+=.*", line) for line in settings), settings
        assert len(settings) == len({line.split("=", 1)[0] for line in settings}), settings
        exec_start = next(line for line in settings if line.startswith("ExecStart="))
        words = exec_words(exec_start.removeprefix("ExecStart="))
        assert words[1:] == ["run", str(config.resolve())], (name, exec_start, words)
        working = next(line for line in settings if line.startswith("WorkingDirectory="))
        assert working.removeprefix("WorkingDirectory=").replace("%%", "%") == str(folder.resolve())
        if analyze is not None:
            path = tmp_path / f"hostile{number}.service"
            path.write_text(unit)
            verify = subprocess.run(
                [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60
            )
            assert verify.returncode == 0, (name, unit, verify.stderr)
