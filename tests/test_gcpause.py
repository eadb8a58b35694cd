"""The collector is held off while a job file is read, and given back as it was: nested, from
several threads at once, after an error, and left off when it was off before."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtasks_cli import gcpause
from qtasks_cli.config import load_config


@pytest.fixture(autouse=True)
def _collector_back() -> Iterator[None]:
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


def test_nested_and_threaded_pauses_give_the_collector_back_once() -> None:
    gc.enable()
    inside = threading.Event()
    leave = threading.Event()

    def other() -> None:
        with gcpause.paused():
            inside.set()
            leave.wait(30)

    with gcpause.paused():
        assert not gc.isenabled()
        thread = threading.Thread(target=other)
        thread.start()
        assert inside.wait(30)
        with gcpause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert not gc.isenabled()  # the thread is still reading
    leave.set()
    thread.join(30)
    assert gc.isenabled()


def test_an_error_gives_it_back_and_an_off_collector_stays_off() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), gcpause.paused():
        raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    with gcpause.paused():
        pass
    assert not gc.isenabled()


def test_a_file_is_read_with_the_collector_off(tmp_path: Path) -> None:
    module = tmp_path / "gcseen.py"
    module.write_text("import gc\nSEEN = gc.isenabled()\ndef job():\n    pass\n")
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"settings:\n  path: [{str(tmp_path)!r}]\njobs:\n  a:\n    entrypoint: gcseen:job\n"
    )
    gc.enable()
    load_config(path)
    import gcseen  # type: ignore[import-not-found]

    assert gcseen.SEEN is False
    assert gc.isenabled()
