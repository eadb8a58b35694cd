"""yacron anchor: job files in yacron's format (yacron runs shell commands at minute resolution)."""

from __future__ import annotations

from pathlib import Path


def write_config(path: Path, jobs: list[tuple[str, str, str]]) -> Path:
    """A yacron file of (name, schedule, shell command) jobs, in UTC, output not captured."""
    lines = ["jobs:"]
    for name, schedule, command in jobs:
        lines += [
            f"  - name: {name}",
            f"    command: {_quoted(command)}",
            f"    schedule: {_quoted(schedule)}",
            "    utc: true",
            "    captureStdout: false",
            "    captureStderr: false",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _quoted(text: str) -> str:
    # yacron reads its file with strictyaml: a single-quoted scalar keeps shell quotes intact.
    return "'" + text.replace("'", "''") + "'"
