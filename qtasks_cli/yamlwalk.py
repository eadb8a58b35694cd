"""A composed YAML node tree walked into ``Located`` values: duplicate keys, unknown tags,
alias bombs and unreadable scalars become located problems, YAML 1.1 surprises are marked."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from qtasks_cli.errors import ConfigError, Problem
from qtasks_cli.located import INVALID, Located
from qtasks_cli.text import path_part
from qtasks_cli.yamlcompose import MAX_DEPTH, _Marked

# Nodes reached through aliases; a file itself is bounded by its size, an alias is not.
ALIAS_BUDGET = 100_000

_STD = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(
    _STD + name for name in ("null", "bool", "int", "float", "str", "binary", "timestamp")
)
_MERGE_TAG = _STD + "merge"
_STR_TAG = _STD + "str"

_INT_DIGITS = 4300  # Python's default limit for an int read from or written as text
_INT_LIMIT = 10**_INT_DIGITS
_SURROGATE = re.compile("[\ud800-\udfff]")
_OCTAL = re.compile(r"[-+]?0[0-7_]+")
_SURPRISING_BOOLS = frozenset(("yes", "no", "on", "off"))


def _trap_of(node: ScalarNode) -> str | None:
    """Which YAML 1.1 surprise a plain scalar is, if any (YAML 1.2 reads these as text)."""
    if node.style:  # quoted or a block scalar: text as written
        return None
    tag, text = node.tag, node.value
    if tag in (_STD + "int", _STD + "float") and ":" in text:
        return "base-60"
    if tag == _STD + "int" and _OCTAL.fullmatch(text) and text.strip("+-0_"):
        return "octal"
    if tag == _STD + "int" and text.lstrip("+-")[:2] in ("0b", "0x"):
        return "binary" if text.lstrip("+-")[1] == "b" else "hex"
    if tag in (_STD + "int", _STD + "float") and "_" in text:
        return "underscore"
    if tag == _STD + "bool" and text.lower() in _SURPRISING_BOOLS:
        return "boolean"
    if tag == _STD + "timestamp":
        return "date"
    return None


_KEY_TYPES = {"int": "integer", "float": "float", "null": "null", "bool": "boolean"}


def _key_trap(node: ScalarNode) -> str | None:
    """For a plain mapping key YAML reads as other than text (``1``, ``no``, ``2024-01-01``,
    ``~``): what it reads it as. qtasks keeps every key as the text written."""
    if node.style or node.tag == _STD + "str":
        return None
    return _trap_of(node) or _KEY_TYPES.get(node.tag[len(_STD) :], "date")


def show_tag(tag: str) -> str:
    return "!!" + tag[len(_STD) :] if tag.startswith(_STD) else tag


class _NotATree(Exception):
    """libyaml's events are not of the plain shape ``yamlstream`` reads (an alias, a merge
    key, too deep...): compose the file with PyYAML's composer, which marks aliases where they
    are written."""


@dataclass(slots=True)
class _Walker:
    loader: _Marked
    file: str
    problems: list[Problem]
    expanded: int = 0
    alias_stack: tuple[tuple[Node, str], ...] = ()

    def problem(self, node: Node, path: str, message: str) -> None:
        mark = node.start_mark
        self.problems.append(
            Problem(
                file=self.file,
                line=mark.line + 1,
                column=mark.column + 1,
                key=path,
                message=message,
            )
        )

    def walk(self, node: Node, path: str, depth: int = 0) -> Located:
        is_alias = id(node) in self.loader.alias_copies
        if is_alias:
            self.alias_stack += ((node, path),)
        try:
            return self._walk(node, path, depth)
        finally:
            if is_alias:
                self.alias_stack = self.alias_stack[:-1]

    def _walk(self, node: Node, path: str, depth: int) -> Located:
        if self.alias_stack:
            self.expanded += 1
            if self.expanded > ALIAS_BUDGET:
                culprit, where = self.alias_stack[0]
                self.problem(
                    culprit,
                    where,
                    f"aliases expand to more than {ALIAS_BUDGET} "
                    "values; refusing to expand them (an alias bomb?)",
                )
                raise ConfigError(self.problems)
        if depth > MAX_DEPTH:
            culprit, where = self.alias_stack[0] if self.alias_stack else (node, path)
            self.problem(
                culprit,
                where,
                f"nesting deeper than {MAX_DEPTH} levels (an alias that contains itself?)",
            )
            raise ConfigError(self.problems)
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        if isinstance(node, ScalarNode):
            value = self._scalar(node, path)
            trap = _trap_of(node) if value is not INVALID else None
            if trap is not None:
                return Located("scalar", value, line, column, path, trap=trap, source=node.value)
            return Located(kind="scalar", value=value, line=line, column=column, path=path)
        if node.tag not in (_STD + "seq", _STD + "map"):
            self.problem(node, path, _unknown_tag(node.tag))
            return Located(kind="scalar", value=INVALID, line=line, column=column, path=path)
        if isinstance(node, SequenceNode):
            items = []
            nodes = node.value
            for i in range(len(nodes)):
                items.append(self.walk(nodes[i], f"{path}[{i}]", depth + 1))
            return Located(kind="seq", value=items, line=line, column=column, path=path)
        assert isinstance(node, MappingNode)
        entries = self._mapping(node, path, depth)
        return Located(kind="map", value=entries, line=line, column=column, path=path)

    def _scalar(self, node: ScalarNode, path: str) -> Any:
        if node.tag == _STR_TAG:  # most scalars: PyYAML's constructor returns the text as is
            value = node.value
            if _SURROGATE.search(value):
                return self._join_surrogates(node, path, value)
            return value
        if node.tag not in _SCALAR_TAGS:
            self.problem(node, path, _unknown_tag(node.tag))
            return INVALID
        if node.tag == _STD + "binary":
            return self._binary(node, path)
        constructors: Any = self.loader
        construct: Callable[[Any, Node], Any] = constructors.yaml_constructors[node.tag]
        try:
            value = construct(self.loader, node)
        except ValueError as exc:
            if node.tag == _STD + "int" and len(node.value) > _INT_DIGITS:  # int("9" * 5000)
                return self._too_big(node, path)
            what = {"timestamp": "a date"}.get(show_tag(node.tag)[2:], show_tag(node.tag))
            self.problem(node, path, f"cannot read {node.value!r:.80} as {what} ({exc})")
            return INVALID
        except Exception as exc:  # PyYAML raises ValueError and friends for bad explicit scalars
            what = {"timestamp": "a date"}.get(show_tag(node.tag)[2:], show_tag(node.tag))
            self.problem(node, path, f"cannot read {node.value!r:.80} as {what} ({exc})")
            return INVALID
        if isinstance(value, str) and _SURROGATE.search(value):
            return self._join_surrogates(node, path, value)
        if type(value) is int and not -_INT_LIMIT < value < _INT_LIMIT:
            return self._too_big(node, path)
        return value

    def _binary(self, node: ScalarNode, path: str) -> Any:
        """``!!binary``: base64 (RFC 4648), line breaks and spaces allowed. PyYAML's reader
        skips any other character, so ``!!binary "@@@"`` was an empty value: here every
        character is read, and a text that is not base64 is refused where it is written."""
        import base64
        import binascii

        compact = "".join(node.value.split())
        try:
            return base64.b64decode(compact.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            why = "not ASCII" if isinstance(exc, UnicodeEncodeError) else str(exc).rstrip(".")
            why = _BASE64_WHY.get(why, why[:1].lower() + why[1:])
            self.problem(
                node,
                path,
                f"cannot read {node.value!r:.80} as !!binary: not base64 (A-Z, a-z, 0-9, +, / "
                f"and = padding; {why})",
            )
            return INVALID

    def _too_big(self, node: ScalarNode, path: str) -> Any:
        """An integer Python cannot turn into text (``sys.get_int_max_str_digits``), which the
        store keeps as text: refused where it is written, for every key (0x, 0o, 0b, base-60
        and decimal alike)."""
        shown = f"{node.value[:20]}... ({len(node.value):,} characters)"
        self.problem(node, path, f"{shown} is an integer of more than {_INT_DIGITS:,} digits")
        return INVALID

    def _join_surrogates(self, node: ScalarNode, path: str, value: str) -> Any:
        """PyYAML reads a JSON-style pair such as ``\\ud83d\\ude00`` as two lone surrogates:
        join valid pairs into their character; a lone one is not text at all."""
        try:
            return value.encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeDecodeError:
            lone = _SURROGATE.search(value)
            code = f"\\u{ord(lone.group()):04x}" if lone else "?"
            self.problem(
                node,
                path,
                f"a lone UTF-16 surrogate escape ({code}) is not text; "
                "write the character itself or a \\U0001F600-style escape",
            )
            return INVALID

    def _mapping(self, node: MappingNode, path: str, depth: int) -> dict[str, Any]:
        entries: dict[str, tuple[Located, Located]] = {}
        merged: dict[str, tuple[Located, Located]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self._merge(value_node, path, depth, merged)
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag not in _SCALAR_TAGS:
                self.problem(key_node, path, "mapping keys must be plain text")
                continue
            # The key's text as written: `on`, `yes` or `123` stay strings here.
            key = str(key_node.value)
            child = f"{path}.{path_part(key)}" if path else path_part(key)
            if key in entries:
                first, again = entries[key][0].line, key_node.start_mark.line + 1
                where = f"twice on line {first}" if first == again else f"lines {first} and {again}"
                self.problem(key_node, child, f"duplicate key {key!r} ({where})")
                continue
            key_loc = Located(
                kind="scalar",
                value=key,
                line=key_node.start_mark.line + 1,
                column=key_node.start_mark.column + 1,
                path=child,
                trap=_key_trap(key_node),
                source=key,
            )
            entries[key] = (key_loc, self.walk(value_node, child, depth + 1))
        for key, entry in merged.items():
            entries.setdefault(key, entry)
        return entries

    def _merge(
        self, node: Node, path: str, depth: int, into: dict[str, tuple[Located, Located]]
    ) -> None:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        for source in sources:
            if not isinstance(source, MappingNode):
                self.problem(source, path, "'<<' merges a mapping or a list of mappings")
                continue
            located = self.walk(source, path, depth + 1)
            if located.kind == "map":
                for key, entry in located.value.items():
                    into.setdefault(key, entry)


_BASE64_WHY = {"Only base64 data is allowed": "a character outside that set"}


def _unknown_tag(tag: str) -> str:
    return f"unknown tag {show_tag(tag)!r}; qtasks reads plain YAML only (no tags)"
