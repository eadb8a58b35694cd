"""The installed package holds every module: ``pip install .`` (the README's first command)
builds from the package list in pyproject.toml, which an editable install never reads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def test_every_package_under_qtasks_cli_goes_into_the_wheel() -> None:
    from setuptools import find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = config["packages"]
    assert isinstance(packages, dict), "a list written by hand misses the packages added later"
    found = set(find_packages(str(ROOT), **packages["find"]))
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "qtasks_cli").rglob("__init__.py")
    }
    folders = {
        ".".join(py.parent.relative_to(ROOT).parts)
        for py in (ROOT / "qtasks_cli").rglob("*.py")
        if "__pycache__" not in py.parts
    }
    assert folders <= on_disk, (
        f"folders of modules without __init__.py: {sorted(folders - on_disk)}"
    )
    assert on_disk <= found, f"left out of the wheel: {sorted(on_disk - found)}"
