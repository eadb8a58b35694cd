"""libyaml's composer (the fast path) and PyYAML's composer over libyaml's parser give the same
located tree and the same problems for every file the fast path takes; a file with aliases or
too deep is left to PyYAML's composer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qtasks_cli import yamlload

HERE = Path(__file__).parent
FILES = sorted(HERE.glob("broken/*.yaml")) + sorted((HERE.parent / "examples").rglob("*.yaml"))
FILES += [HERE.parent / "jobs.example.yaml"]

pytestmark = pytest.mark.skipif(yamlload._FastLoader is None, reason="PyYAML without libyaml")


def shape(node: Any) -> Any:
    if isinstance(node, yamlload.Located):
        value = node.value
        if node.kind == "map":
            value = {k: (shape(key), shape(v)) for k, (key, v) in value.items()}
        elif node.kind == "seq":
            value = [shape(item) for item in value]
        elif node.invalid:
            value = "<invalid>"
        return (node.kind, value, node.line, node.column, node.path, node.trap, node.source)
    return node


def composed_by_pyyaml(text: str, file: str) -> Any:
    saved = yamlload._load_c
    yamlload._load_c = lambda text, file: None  # type: ignore[assignment]
    try:
        return yamlload.load(text, file)
    finally:
        yamlload._load_c = saved


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_both_composers_give_the_same_tree(path: Path) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        pytest.skip("not UTF-8: refused before YAML")
    fast = yamlload._load_c(text, str(path))
    try:
        slow = composed_by_pyyaml(text, str(path))
    except Exception as exc:  # the slow path refuses it: the fast one must not have taken it
        assert fast is None, f"fast path took a file PyYAML's composer refuses: {exc}"
        return
    if fast is None:
        return  # aliases, too deep or unparsable: left to PyYAML's composer
    assert shape(fast[0]) == shape(slow[0])
    assert fast[1] == slow[1]


def test_a_file_with_an_alias_is_left_to_pyyamls_composer() -> None:
    text = "base: &b {retry: 2}\njobs:\n  a:\n    <<: *b\n    entrypoint: m:f\n"
    assert yamlload._load_c(text, "f.yaml") is None
    tree, problems = yamlload.load(text, "f.yaml")
    assert tree is not None and not problems


def test_a_plain_file_is_taken_by_the_fast_path() -> None:
    text = "jobs:\n  a:\n    entrypoint: m:f\n    schedule: '*/5 * * * *'\n    retry: no\n"
    fast = yamlload._load_c(text, "f.yaml")
    assert fast is not None
    assert shape(fast[0]) == shape(composed_by_pyyaml(text, "f.yaml")[0])
