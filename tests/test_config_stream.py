"""Jobs read one by one as the YAML reader ends them (config.jobs.JobStream) give exactly what
reading the whole file first gives: the same jobs, settings, warnings and digest, or the same
problems, for every file of the corpus and for generated files whose top-level keys come in
any order (settings or defaults after the jobs are read again the whole way)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtasks_cli.config import parse_config_text
from qtasks_cli.config.jobs import JobStream
from qtasks_cli.errors import ConfigError

HERE = Path(__file__).parent
FILES = sorted(HERE.glob("broken/*.yaml")) + sorted((HERE.parent / "examples").rglob("*.yaml"))
FILES += [HERE.parent / "jobs.example.yaml"]


def outcome(text: str, base: Path, stream: bool) -> Any:
    JobStream.BATCH = 2  # jobs read between the parser's events too, not only at the end
    try:
        config = parse_config_text(
            text, filename="jobs.yaml", base_dir=base, check_imports=False, env={}, stream=stream
        )
    except ConfigError as exc:
        return ("refused", [(p.line, p.column, p.key, p.message) for p in exc.problems])
    finally:
        JobStream.BATCH = 256
    return ("read", config.jobs, config.settings, config.warnings, config.digest)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_the_corpus_reads_the_same_streamed(path: Path) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        pytest.skip("not UTF-8: refused before YAML")
    assert outcome(text, path.parent, True) == outcome(text, path.parent, False)


_values = st.sampled_from(
    ["m:f", "'*/5 * * * *'", "'61 * * * *'", "1:30", "no", "5s", "-1", "[1, 2]", "{a: 1}",
     "~", "'@daily'", "Europe/Paris", "Mars/Base", "queue", "skip", "3", "''"]
)  # fmt: skip
_job_keys = st.sampled_from(
    ["entrypoint", "schedule", "timezone", "timeout", "overlap", "retry", "kwargs", "args",
     "enabled", "description", "bogus"]
)  # fmt: skip


@st.composite
def _files(draw: Any) -> str:
    sections = {}
    sections["settings"] = "settings:\n" + "".join(
        f"  {key}: {draw(_values)}\n"
        for key in draw(st.lists(st.sampled_from(["timezone", "max_concurrent", "keep_runs",
                                                  "odd"]), unique=True, max_size=3))
    )  # fmt: skip
    sections["defaults"] = "defaults:\n" + "".join(
        f"  {key}: {draw(_values)}\n" for key in draw(st.lists(_job_keys, unique=True, max_size=3))
    )
    jobs = []
    for i in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from([f"j{i}", "dup", "bad name"]))
        body = "".join(
            f"    {key}: {draw(_values)}\n"
            for key in draw(st.lists(_job_keys, unique=True, min_size=1, max_size=5))
        )
        if draw(st.booleans()):
            body += "    <<: {enabled: no}\n"  # a merge key: read by PyYAML's composer
        jobs.append(f"  {name}:\n{body}")
    sections["jobs"] = "jobs:\n" + (
        "".join(jobs) if jobs else "  {}\n" if draw(st.booleans()) else ""
    )
    sections["x-extra"] = "x-extra: 1\n"
    order = draw(st.permutations(list(sections)))
    kept = [key for key in order if key == "jobs" or draw(st.booleans())]
    return "".join(sections[key] for key in kept)


@settings(max_examples=200, deadline=None)
@given(_files())
def test_generated_files_read_the_same_streamed(text: str) -> None:
    base = Path("/nonexistent/base")
    assert outcome(text, base, True) == outcome(text, base, False)


_GOOD = {
    "entrypoint": ["m:f", "m:g"],
    "schedule": ["'*/5 * * * *'", "'@daily'", "'0 3 * * mon'"],
    "timezone": ["UTC", "Europe/Paris"],
    "timeout": ["5s", "1m"],
    "overlap": ["queue", "skip", "allow"],
    "retry": ["2", "{retries: 1, delay: 2s}"],
    "kwargs": ["{a: 1}", "{b: x}"],
    "description": ["hello", "''"],
}


@st.composite
def _good_files(draw: Any) -> str:
    sections = {
        "settings": "settings:\n  timezone: " + draw(st.sampled_from(["UTC", "Asia/Tokyo"])) + "\n",
        "defaults": "defaults:\n  timeout: " + draw(st.sampled_from(["2s", "1h"])) + "\n",
    }
    jobs = []
    for i in range(draw(st.integers(1, 5))):
        keys = ["entrypoint", *draw(st.lists(st.sampled_from(sorted(_GOOD)[1:]), unique=True))]
        keys = [k for k in dict.fromkeys(keys) if k != "entrypoint"] + ["entrypoint"]
        body = "".join(f"    {k}: {draw(st.sampled_from(_GOOD[k]))}\n" for k in keys)
        jobs.append(f"  j{i}:\n{body}")
    sections["jobs"] = "jobs:\n" + "".join(jobs)
    order = draw(st.permutations(list(sections)))
    return "".join(sections[key] for key in order if key == "jobs" or draw(st.booleans()))


@settings(max_examples=200, deadline=None)
@given(_good_files())
def test_valid_files_read_the_same_streamed(text: str) -> None:
    base = Path("/nonexistent/base")
    found = outcome(text, base, True)
    assert found == outcome(text, base, False)
    assert found[0] == "read", found


def test_a_settings_path_written_after_the_jobs_decides_what_is_imported(tmp_path: Path) -> None:
    """Hostile tester: with more than one batch of jobs and ``settings.path`` after ``jobs``,
    the module of the same name in the folder beside the file was imported before the path
    was known. Nothing is imported before the path is read."""
    import secrets
    import sys

    from qtasks_cli.config import load_config

    name = f"dup_{secrets.token_hex(4)}"
    (tmp_path / f"{name}.py").write_text("def f(a):\n    return 'beside'\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / f"{name}.py").write_text("def f():\n    return 'lib'\n")
    jobs = "".join(f"  a{i}: {{entrypoint: '{name}:f'}}\n" for i in range(600))
    path = tmp_path / "jobs.yaml"
    path.write_text(f"jobs:\n{jobs}settings: {{path: [lib], timezone: UTC}}\n")
    saved = list(sys.path)
    try:
        config = load_config(path)
        assert len(config.jobs) == 600
        assert sys.modules[name].f() == "lib"
    finally:
        sys.path[:] = saved
        sys.modules.pop(name, None)
