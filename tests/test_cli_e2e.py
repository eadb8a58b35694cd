"""``qtasks validate``, ``list`` and ``--version``/``--help`` through the installed command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import clean_env, run_qtasks

JOBS = """
settings:
  timezone: Europe/Berlin
jobs:
  report:
    entrypoint: work:report
    schedule: "30 2 * * *"
    description: the owner's report
  hourly:
    entrypoint: work:report
    schedule: "@hourly"
  ny:
    entrypoint: work:report
    schedule: {hour: 9, minute: 0, day_of_week: mon-fri}
    timezone: America/New_York
  off:
    entrypoint: work:report
    schedule: every 5m
    enabled: false
  manual:
    entrypoint: work:report
"""
WORK = "def report():\n    return 1\n"


def test_validate_ok_and_every_problem_at_once(project) -> None:
    path = project(JOBS, work=WORK)
    ok = run_qtasks("validate", str(path))
    assert (ok.returncode, ok.stdout.strip(), ok.stderr) == (0, "5 jobs OK", "")
    path.write_text(
        JOBS.replace('"30 2 * * *"', '"30 25 * * *"')
        .replace("America/New_York", "America/New_Yrok")
        .replace("enabled: false", "enabeld: false")
    )
    bad = run_qtasks("validate", str(path))
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 3, bad.stderr
    assert lines[0].startswith(f"{path}:7:15: jobs.report.schedule: ") and "hour" in lines[0]
    assert lines[1].startswith(f"{path}:15:15: jobs.ny.timezone: ")
    assert "did you mean 'America/New_York'?" in lines[1]
    assert lines[2].startswith(f"{path}:19:5: jobs.off.enabeld: ")
    assert "did you mean 'enabled'?" in lines[2]
    assert "Traceback" not in bad.stderr and bad.stdout == ""


def test_validate_imports_entry_points_unless_told_not_to(project) -> None:
    path = project(
        JOBS.replace(
            'work:report\n    schedule: "@hourly"', 'work:nothere\n    schedule: "@hourly"'
        ),
        work=WORK,
    )
    bad = run_qtasks("validate", str(path))
    assert bad.returncode == 2
    assert "jobs.hourly.entrypoint" in bad.stderr and "nothere" in bad.stderr
    assert run_qtasks("validate", "--no-import", str(path)).returncode == 0


def test_config_defaults_to_env_then_jobs_yaml(project, tmp_path: Path) -> None:
    path = project(JOBS, work=WORK)
    from_cwd = run_qtasks("validate", cwd=path.parent)
    assert from_cwd.returncode == 0 and "5 jobs OK" in from_cwd.stdout
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    from_env = run_qtasks("validate", cwd=elsewhere, env=clean_env(QTASKS_CONFIG=str(path)))
    assert from_env.returncode == 0
    missing = run_qtasks("validate", cwd=elsewhere)
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "jobs.yaml" in missing.stderr and "Traceback" not in missing.stderr


def test_list_shows_words_zone_and_next_fires_across_dst(project) -> None:
    path = project(JOBS, work=WORK)
    out = run_qtasks(
        "list", str(path), "--next", "3", "--after", "2026-10-24T12:00:00+00:00", "--json"
    )
    assert out.returncode == 0, out.stderr
    jobs = {j["name"]: j for j in json.loads(out.stdout)}
    assert set(jobs["report"]) == {
        "name",
        "schedule",
        "timezone",
        "timezone_source",
        "enabled",
        "next",
        "paused",
        "in_file",
    }
    assert jobs["report"]["schedule"] == "at 02:30 every day"
    assert jobs["report"]["timezone"] == "Europe/Berlin"
    # Fall-back night in Berlin (25 Oct 2026): 02:30 happens twice, fires once.
    assert jobs["report"]["next"] == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]
    assert jobs["ny"]["next"][0] == "2026-10-26T09:00:00-04:00"  # Monday
    assert jobs["off"]["enabled"] is False and jobs["off"]["next"] == []
    assert jobs["manual"]["next"] == []
    spring = run_qtasks(
        "list", str(path), "--next", "2", "--after", "2026-03-28T12:00:00+00:00", "--json"
    )
    nexts = {j["name"]: j["next"] for j in json.loads(spring.stdout)}
    # Spring-forward night (29 Mar 2026): 02:30 does not exist, fires at 03:00 CEST once.
    assert nexts["report"] == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]


def test_list_text(project) -> None:
    path = project(JOBS, work=WORK)
    out = run_qtasks("list", str(path), "--after", "2026-01-05T00:00:00+00:00")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "report" in text and "at 02:30 every day" in text and "Europe/Berlin" in text
    assert "next: 2026-01-05T02:30:00+01:00" in text
    assert "disabled" in text and "only when triggered" in text
    bad = run_qtasks("list", str(path), "--after", "yesterday")
    assert bad.returncode == 2 and "ISO-8601" in bad.stderr


def test_version_help_and_module_entry() -> None:
    version = run_qtasks("--version")
    assert version.returncode == 0 and version.stdout.startswith("qtasks ")
    helped = run_qtasks("--help")
    assert helped.returncode == 0
    for command in ("validate", "list", "run", "trigger", "history"):
        assert command in helped.stdout
    module = subprocess.run(
        [sys.executable, "-m", "qtasks_cli", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert module.stdout == version.stdout


def test_version_and_help_do_not_import_heavy_modules() -> None:
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['qtasks', '{arg}']\n"
        "try:\n"
        "    runpy.run_module('qtasks_cli', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('rich.live', 'croniter', 'tenacity', 'asyncio', 'sqlite3', 'yaml')\n"
        "         if m in sys.modules]\n"
        "print(','.join(heavy), file=sys.stderr)\n"
    )
    for arg in ("--version", "--help"):
        out = subprocess.run(
            [sys.executable, "-c", probe.format(arg=arg)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.stderr.strip().splitlines()[-1:] in ([], [""]), (arg, out.stderr)
