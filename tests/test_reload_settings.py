"""What a reload says about the settings it changes (reloading.settings_changes)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from qtasks_cli.models import Settings
from qtasks_cli.reloading import NEEDS_RESTART, settings_changes

CHANGED = {
    "path": (("/srv/shop",),),
    "state": ("postgresql://shop:s3cr3t-pw@db/other",),
    "timezone": ("Europe/Berlin",),
    "max_concurrent": (4,),
    "shutdown_grace": (timedelta(seconds=5),),
    "keep_runs": (None, 10),
    "keep_days": (7.0,),
    "max_catch_up": (3,),
    "node_timeout": (timedelta(seconds=90),),
    "schema": ("other",),
    "metrics": (("127.0.0.1", 9100),),
}


def test_every_setting_is_covered() -> None:
    assert set(CHANGED) == {f.name for f in dataclasses.fields(Settings)}


@given(
    st.lists(st.sampled_from(sorted(CHANGED)), unique=True, max_size=len(CHANGED)),
    st.data(),
)
def test_each_changed_setting_is_named_once_and_restart_ones_say_so(
    names: list[str], data: st.DataObject
) -> None:
    first = dataclasses.replace(Settings(), state="postgresql://db/shop")
    new = dataclasses.replace(first, **{n: data.draw(st.sampled_from(CHANGED[n])) for n in names})
    words, later = settings_changes(first, new, first)
    for name in CHANGED:
        assert words.count(f"settings.{name} ") == (name in names), (name, words)
    assert later == any(n in NEEDS_RESTART for n in names)
    for name in set(names) & set(NEEDS_RESTART):
        assert f"settings.{name} changed: it takes effect at the next start" in words
    assert "s3cr3t" not in words  # a state URL's password is never said
    assert (words == "") == (not names)


def test_a_restart_setting_put_back_as_it_was_at_the_start_says_nothing() -> None:
    """A reload compares ``path``, ``state``, ``schema`` and ``metrics`` with what the daemon
    started with: a file changed and then put back needs no restart."""
    first = dataclasses.replace(Settings(), state="postgresql://db/shop")
    changed = dataclasses.replace(first, path=(Path("/srv"),), schema="other")
    assert settings_changes(first, changed, first)[1] is True
    assert settings_changes(changed, first, first) == ("", False)


def test_schema_is_not_reported_for_sqlite() -> None:
    first = Settings()  # .qtasks/state.db
    assert settings_changes(first, dataclasses.replace(first, schema="other"), first) == (
        "",
        False,
    )
