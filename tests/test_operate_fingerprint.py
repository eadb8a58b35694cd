"""The job file's fingerprint (``Config.digest``, shown by ``qtasks status`` against the one a
daemon loaded) depends on the file alone: never on the environment it was read in (variables
one shell has and another lacks, their values, ``$TZ``), and no variable value reaches what
is hashed. Attacked with generated environments; the end-to-end case is in test_operate.py."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtasks_cli.config import load_config
from qtasks_cli.digests import definition as _definition
from qtasks_cli.digests import fingerprint

FILE = """
jobs:
  a:
    entrypoint: m:a
    schedule: "0 3 * * *"
    kwargs:
      token: "${TOKEN}"
      url: "https://${HOST:-example.org}/x?k=${TOKEN}"
      literal: "$${TOKEN}"
    args: ["${USER_NAME}", 1, "plain"]
  b:
    entrypoint: m:b
    schedule: "*/5 * * * *"
    timezone: Asia/Tokyo
  c:
    entrypoint: m:c
"""

NAMES = ("TOKEN", "HOST", "USER_NAME")
# Values chosen to collide with the file's own text: a secret that is also a word of it.
values = st.one_of(
    st.sampled_from(["", "1", "a", "m", "x", "example.org", "plain", "${TOKEN}", "0 3"]),
    st.text(min_size=0, max_size=12),
)
zones = st.sampled_from([None, "", "UTC", "Europe/Berlin", ":America/New_York", "Asia/Tokyo"])


def environment(found: dict[str, str | None], tz: str | None) -> dict[str, str]:
    env = {name: value for name, value in found.items() if value is not None}
    if tz is not None:
        env["TZ"] = tz
    return env


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    daemon=st.fixed_dictionaries({n: st.one_of(st.none(), values) for n in NAMES}),
    shell=st.fixed_dictionaries({n: st.one_of(st.none(), values) for n in NAMES}),
    daemon_tz=zones,
    shell_tz=zones,
)
def test_the_digest_is_the_same_in_any_environment(
    tmp_path: Path,
    daemon: dict[str, str | None],
    shell: dict[str, str | None],
    daemon_tz: str | None,
    shell_tz: str | None,
) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(FILE)
    # The daemon reads it with its variables; an operator's shell may lack some of them.
    loaded = load_config(
        path, check_imports=False, env=environment(daemon, daemon_tz), variables_required=False
    )
    seen = load_config(
        path, check_imports=False, env=environment(shell, shell_tz), variables_required=False
    )
    assert loaded.digest == seen.digest
    # A job whose zone the file names keeps its per-job fingerprint across shells too.
    assert fingerprint(loaded.jobs["b"]) == fingerprint(seen.jobs["b"])
    # Nothing hashed holds a value a variable had (a value that is also text of the file,
    # such as "plain", is the file's own and may stay).
    # The oracle: what is hashed with no variable set at all. A value found in the daemon's
    # hashed text but not there came from the environment.
    bare = load_config(
        path, check_imports=False, env=environment({}, daemon_tz), variables_required=False
    )
    for job in loaded.jobs.values():
        hashed = json.dumps(_definition(job), ensure_ascii=False)
        alone = json.dumps(_definition(bare.jobs[job.name]), ensure_ascii=False)
        assert hashed == alone, job.name


def test_a_change_of_the_file_still_changes_the_digest(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(FILE)
    before = load_config(path, check_imports=False, env={}, variables_required=False)
    for old, new in [
        ('${TOKEN}"', '${TOKEN2}"'),
        ("0 3 * * *", "0 4 * * *"),
        ("timezone: Asia/Tokyo", "timezone: Europe/Paris"),
        ("  c:\n    entrypoint: m:c", "  c:\n    entrypoint: m:c\n    timezone: UTC"),
    ]:
        assert old in FILE, old
        path.write_text(FILE.replace(old, new, 1))
        after = load_config(path, check_imports=False, env={}, variables_required=False)
        assert after.digest != before.digest, (old, new)


def test_an_edit_of_the_settings_changes_the_digest_but_the_state_location_does_not(
    tmp_path: Path,
) -> None:
    # `status` says "reload pending" for a settings edit too (a reload applies them).
    path = tmp_path / "jobs.yaml"
    base = "settings:\n  keep_runs: 1000\n  state: a.db\njobs:\n  j: {entrypoint: m:f}\n"
    path.write_text(base)
    before = load_config(path, check_imports=False, env={}, variables_required=False)
    for old, new in [("keep_runs: 1000", "keep_runs: 1"), ("keep_runs: 1000", "max_catch_up: 1")]:
        path.write_text(base.replace(old, new))
        after = load_config(path, check_imports=False, env={}, variables_required=False)
        assert after.digest != before.digest, new
    path.write_text(base.replace("state: a.db", "state: ./a.db"))
    same = load_config(path, check_imports=False, env={}, variables_required=False)
    assert same.digest == before.digest
