"""The machine and software the figures were measured on."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import common

QTASKS_SIDE = ("qtasks-cli", "typer", "croniter", "rich", "tenacity", "PyYAML")
ANCHOR_SIDE = ("APScheduler", "tzlocal", "yacron", "aiohttp", "crontab", "strictyaml")


def describe() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "virtualized": _virtualized(),
        "ram_gib": round(_meminfo_kib("MemTotal") / 1024 / 1024, 1),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "packages": _versions(QTASKS_SIDE),
        "anchor_packages": _anchor_versions(),
        "anchor_python": _anchor_python_version(),
        "load_average_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "git_commit": _git_commit(),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _virtualized() -> bool:
    return " hypervisor" in Path("/proc/cpuinfo").read_text()


def _meminfo_kib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _versions(names: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _anchor_versions() -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        f"for n in {list(ANCHOR_SIDE)!r}:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = 'not installed'\n"
        "print(json.dumps(out))\n"
    )
    try:
        done = common.run([common.anchor_python(), "-c", code], timeout=60)
    except (OSError, RuntimeError):
        return {}
    found: dict[str, str] = json.loads(done.stdout)
    return found


def _anchor_python_version() -> str:
    try:
        return common.run([common.anchor_python(), "-V"], timeout=30).stdout.split()[-1]
    except (OSError, RuntimeError):
        return "missing"


def _git_commit() -> str:
    # Read-only git commands only (``describe --dirty`` and ``status`` may rewrite the index).
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("diff", "--quiet", "HEAD", "--", "qtasks_cli", check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if not head.stdout.strip():
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes" if dirty.returncode else "")


def _git(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(common.ROOT), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=check,
    )
