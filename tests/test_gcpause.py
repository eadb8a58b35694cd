"""The collector is held off while a job file is read (and a burst started), and given back as
it was: nested, from several threads at once, after an error; and what job code chose
meanwhile (``gc.disable()``, ``gc.enable()``, its own thresholds) stands."""

from __future__ import annotations

import gc
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtasks_cli import gcpause
from qtasks_cli.config import load_config


@pytest.fixture(autouse=True)
def _collector_back() -> Iterator[None]:
    was, thresholds = gc.isenabled(), gc.get_threshold()
    yield
    (gc.enable if was else gc.disable)()
    gc.set_threshold(*thresholds)


def _held() -> bool:
    return gc.get_threshold()[0] >= 1 << 30


def test_nested_and_threaded_pauses_give_the_collector_back_once() -> None:
    before = gc.get_threshold()
    inside = threading.Event()
    leave = threading.Event()

    def other() -> None:
        with gcpause.paused():
            inside.set()
            leave.wait(30)

    with gcpause.paused():
        assert _held()
        thread = threading.Thread(target=other)
        thread.start()
        assert inside.wait(30)
        with gcpause.paused():
            assert _held()
        assert _held()
    assert _held()  # the thread is still reading
    leave.set()
    thread.join(30)
    assert gc.get_threshold() == before


def test_an_error_gives_it_back_and_job_codes_choices_stand() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), gcpause.paused():
        raise RuntimeError
    assert gc.get_threshold() == before
    gc.enable()
    with gcpause.paused():
        gc.disable()  # a job's module at import
    assert not gc.isenabled()
    with gcpause.paused():
        gc.enable()
    assert gc.isenabled()
    with gcpause.paused():
        gc.set_threshold(5, 6, 7)  # a job's own thresholds
    assert gc.get_threshold() == (5, 6, 7)


@pytest.mark.parametrize("call", ["disable", "enable"])
def test_a_modules_choice_at_import_survives_the_read(tmp_path: Path, call: str) -> None:
    """Hostile tester: a module calling gc.disable() at import found the collector enabled
    once the file was read."""
    name = f"gcseen_{secrets.token_hex(4)}"
    (tmp_path / f"{name}.py").write_text(f"import gc\ngc.{call}()\ndef job():\n    pass\n")
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"settings:\n  path: [{str(tmp_path)!r}]\njobs:\n  a:\n    entrypoint: {name}:job\n"
    )
    (gc.enable if call == "disable" else gc.disable)()
    load_config(path)
    assert gc.isenabled() is (call == "enable")


def test_a_module_sees_and_sets_the_real_thresholds_at_import(tmp_path: Path) -> None:
    """Second hostile tester: a module doubling the threshold it read at import failed with
    OverflowError (it read the pause's value), and one setting the older generations' kept
    the pause's first threshold and lost its own."""
    gc.set_threshold(700, 10, 10)
    name = f"gcdbl_{secrets.token_hex(4)}"
    (tmp_path / f"{name}.py").write_text(
        "import gc\nSEEN = gc.get_threshold()\nt = gc.get_threshold()\n"
        "gc.set_threshold(t[0] * 2, 50, 60)\ndef job():\n    pass\n"
    )
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"settings:\n  path: [{str(tmp_path)!r}]\njobs:\n  a:\n    entrypoint: {name}:job\n"
    )
    load_config(path)
    import sys

    assert sys.modules[name].SEEN == (700, 10, 10)
    assert gc.get_threshold() == (1400, 50, 60)
