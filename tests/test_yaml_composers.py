"""libyaml's events read straight into located values (the fast path, yamlstream) and PyYAML's
composer over libyaml's parser give the same located tree and the same problems for every file
the fast path takes (the corpus and generated documents); a file with an anchor, alias, merge
key, tagged collection, second document, deep nesting or a syntax error is left to PyYAML's
composer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

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
    yamlload._load_c = lambda text, file, jobs=None: None  # type: ignore[assignment]
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


# -- libyaml's events straight to located values (yamlstream) against PyYAML's composer ------

_words = st.sampled_from(
    ["yes", "no", "on", "Off", "~", "null", "1:30", "0755", "0x1F", "1_000", "2024-01-01",
     "12:30:00", ".inf", "-.nan", "a.b", "a b", "a: b", "'q'", '"d"', "\\", "é", "\t", "", "#x",
     "&a", "*a", "!t", "- x", "? k"]
)  # fmt: skip
_keys = st.one_of(_words, st.text(max_size=6))
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _words, st.text(max_size=8)
)
_documents = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=25,
)


def _read_alike(text: str) -> None:
    """The event reader gives PyYAML's composer's tree and problems, or leaves the file to
    it; it never takes a file that composer refuses."""
    fast = yamlload._load_c(text, "f.yaml")
    try:
        slow = composed_by_pyyaml(text, "f.yaml")
    except Exception as exc:
        assert fast is None, f"the event reader took a file PyYAML's composer refuses: {exc}"
        return
    if fast is None:
        return
    assert shape(fast[0]) == shape(slow[0])
    assert fast[1] == slow[1]


@settings(max_examples=300, deadline=None)
@given(
    _documents,
    st.sampled_from([None, True, False]),
    st.sampled_from([None, "'", '"', "|"]),
    st.booleans(),
)
def test_the_event_reader_gives_what_pyyamls_composer_gives(
    document: Any, flow: bool | None, style: str | None, duplicate: bool
) -> None:
    text = yaml.safe_dump(document, default_flow_style=flow, default_style=style,
                          allow_unicode=True)  # fmt: skip
    if duplicate and isinstance(document, dict) and document and flow is False:
        first = text.splitlines(keepends=True)[0]
        if not first.startswith((" ", "-")):
            text = text + first  # the first key again at the end: a duplicate key
    _read_alike(text)


@pytest.mark.parametrize(
    "text",
    [
        "a: &x 1\nb: 2\n",  # an anchor
        "a: 1\nb: *x\n",  # an alias (unknown: PyYAML's composer reports it)
        "a:\n  <<: {b: 1}\n",  # a merge key, even without an alias
        "a: !!set {b: null}\n",  # a tag on a collection
        "? [a, b]\n: 1\n",  # a key that is not text
        "a: 1\n---\nb: 2\n",  # a second document
        "a: [" * 120 + "]" * 120 + "\n",  # nesting past the limit
        "a: b: c\n",  # a syntax error
    ],
)
def test_the_rarities_are_left_to_pyyamls_composer(text: str) -> None:
    assert yamlload._load_c(text, "f.yaml") is None


def test_a_duplicate_keys_value_is_skipped_unread() -> None:
    text = "a: 1\nb: {c: [1, {d: !!int x}], e: 2}\nb: {f: !!int y}\nz: 3\n"
    fast = yamlload._load_c(text, "f.yaml")
    assert fast is not None
    assert shape(fast[0]) == shape(composed_by_pyyaml(text, "f.yaml")[0])
    assert [p.message for p in fast[1]] == [
        p.message for p in composed_by_pyyaml(text, "f.yaml")[1]
    ]
    assert list(fast[0].value) == ["a", "b", "z"]


_tags = st.sampled_from(
    ["", "!!str ", "!!int ", "!!float ", "!!bool ", "!!null ", "!!binary ", "!!timestamp ",
     "!local ", "!!python/name:os.system "]
)  # fmt: skip
_raw = st.sampled_from(
    ["1", "x", "1:30", "0o17", "YQ==", "@@@", "2024-13-45", "yes", "~", "'q'", '"\\ud800"',
     "9" * 5000, "[1, 2]", "{a: 1}", "é"]
)  # fmt: skip


@st.composite
def _block(draw: Any, indent: int = 0) -> str:
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(["a", "b", "on", "1", "~", "2024-01-01", "a.b", "k k"]))
        pad = " " * indent
        if indent < 6 and draw(st.booleans()):
            lines.append(f"{pad}{key}:\n{draw(_block(indent + 2))}")
        else:
            lines.append(f"{pad}{key}: {draw(_tags)}{draw(_raw)}\n")
    return "".join(lines)


@settings(max_examples=300, deadline=None)
@given(_block())
def test_tagged_scalars_and_duplicates_read_alike(text: str) -> None:
    """Problems (unknown tags, unreadable scalars, duplicate keys) are the same, in the same
    order, on both paths."""
    _read_alike(text)


def test_an_escape_past_the_end_of_unicode_is_located_not_a_traceback() -> None:
    """Hostile tester: PyYAML's Python reader raised ValueError from chr() (a traceback, exit
    1) for "\\U00110000"; it is refused where it is written."""
    from qtasks_cli.errors import ConfigError

    text = 'jobs:\n  a:\n    entrypoint: m:f\n    kwargs: {k: "\\U00110000"}\n'
    with pytest.raises(ConfigError) as caught:
        yamlload.load(text, "f.yaml")
    (problem,) = caught.value.problems
    assert (problem.line, problem.column) == (4, 18)
    assert "\\U00110000 is not a character" in problem.message
