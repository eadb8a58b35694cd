"""Safe YAML to a tree of located values: every value keeps its line and column.

The composer's node tree is walked here instead of being constructed by PyYAML, so that
duplicate keys, unknown tags and alias bombs become located problems, never surprises.

PyYAML reads YAML 1.1, whose plain scalars change meaning silently: ``1:30`` is the base-60
number 90, ``0755`` the octal 493, ``yes``/``no``/``on``/``off`` are booleans and
``2024-01-01`` a date. Such a value keeps YAML's reading but is marked (``Located.trap``), so
that duration and schedule fields refuse it and ``validate`` says what arguments became.
Where PyYAML was built with libyaml, libyaml composes the nodes too (several times faster); a
file whose tree holds a node twice (an alias) or nests too deep is composed again by PyYAML's
composer over libyaml's parser, for the alias marks and limits above, and a file libyaml
refuses is parsed again in Python for PyYAML's own wording.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from qtasks_cli.errors import ConfigError, Problem

log = logging.getLogger(__name__)

MAX_DEPTH = 100
# Nodes reached through aliases; a file itself is bounded by its size, an alias is not.
ALIAS_BUDGET = 100_000

_STD = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(
    _STD + name for name in ("null", "bool", "int", "float", "str", "binary", "timestamp")
)
_MERGE_TAG = _STD + "merge"
_STR_TAG = _STD + "str"


class _Invalid:
    """Stands in for a value already reported as a problem, so it is not reported twice."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Any = _Invalid()


@dataclass(slots=True, eq=False)
class Located:
    """One YAML value with where it was written (1-based) and its dotted key path.

    ``value`` is a Python scalar, a list of Located, or for a mapping a dict from the key's
    text to a (key, value) pair of Located.
    """

    kind: str  # "scalar", "seq" or "map"
    value: Any
    line: int
    column: int
    path: str
    # For a plain scalar whose YAML 1.1 reading is a surprise: what kind ("base-60",
    # "octal", "boolean", "date"), or a number not in plain decimal digits ("binary", "hex",
    # "underscore"); ``source`` is then the text as written.
    trap: str | None = None
    source: str = ""

    def trap_note(self) -> str:
        """``'1:30' is read by YAML as 90 (a base-60 number)`` for a trapped scalar."""
        return f"{self.source!r} is read by YAML as {show_value(self.value)} ({self.reading()})"

    def trap_reason(self) -> str:
        """``YAML 1.1 reads no as a boolean`` for a trapped scalar."""
        return f"YAML 1.1 reads {self.source} as {self.reading()}"

    def reading(self) -> str:
        """What YAML 1.1 reads a trapped scalar as: ``a base-60 number``, ``a boolean``..."""
        return {
            "base-60": "a base-60 number",
            "octal": "an octal number",
            "boolean": "a boolean",
            "date": "a date",
            "binary": "a binary number",
            "hex": "a hexadecimal number",
            "underscore": "a number whose _ are dropped",
            "integer": "an integer",
            "float": "a number",
            "null": "null",
        }.get(self.trap or "", "")

    @property
    def is_null(self) -> bool:
        return self.kind == "scalar" and self.value is None

    @property
    def invalid(self) -> bool:
        return self.value is INVALID

    def type_name(self) -> str:
        """What the value is, for messages such as ``expected a mapping, got a list``."""
        if self.kind == "map":
            return "a mapping"
        if self.kind == "seq":
            return "a list"
        return scalar_type_name(self.value)


def scalar_type_name(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    for kind, name in names.items():
        if type(value) is kind:
            return name
    if isinstance(value, bytes):
        return "binary data"
    return f"a {type(value).__name__}"


_INT_DIGITS = 4300  # Python's default limit for an int read from or written as text
_INT_LIMIT = 10**_INT_DIGITS
_SURROGATE = re.compile("[\ud800-\udfff]")
_OCTAL = re.compile(r"[-+]?0[0-7_]+")
_SURPRISING_BOOLS = frozenset(("yes", "no", "on", "off"))


def show_value(value: Any) -> str:
    """A value as YAML shows it: ``false``, ``90``, ``2024-01-01``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    return str(value)


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


def plain(node: Located) -> Any:
    """The Python value of ``node`` without locations (lists and dicts)."""
    if node.kind == "map":
        return {key: plain(value) for key, (_, value) in node.value.items()}
    if node.kind == "seq":
        return [plain(item) for item in node.value]
    return node.value


def show_tag(tag: str) -> str:
    return "!!" + tag[len(_STD) :] if tag.startswith(_STD) else tag


class _FatalYAML(yaml.MarkedYAMLError):
    pass


class _Marked(Composer):
    """Composes nodes with a nesting limit; an alias to a collection becomes a shallow copy
    marked where the alias is written, so expansion errors can point at the alias."""

    _depth: int
    alias_copies: set[int]  # ids of the copies made for aliases

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        events: Any = self  # the parser half (Python or libyaml) provides the events
        if events.check_event(AliasEvent):
            event = events.peek_event()
            node = super().compose_node(parent, index)
            if isinstance(node, (SequenceNode, MappingNode)):
                copy = type(node)(node.tag, node.value, event.start_mark, event.end_mark)
                self.alias_copies.add(id(copy))
                return copy
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _FatalYAML(
                problem=f"nesting deeper than {MAX_DEPTH} levels",
                problem_mark=events.peek_event().start_mark,
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def dispose(self) -> None:
        pass


class _MarkedLoader(_Marked, yaml.SafeLoader):
    """The pure-Python loader: PyYAML's wording for every error."""

    def __init__(self, stream: str) -> None:
        yaml.SafeLoader.__init__(self, stream)
        self._depth = 0
        self.alias_copies = set()


_CParser: Any = getattr(getattr(yaml, "_yaml", None), "CParser", None)
_FastLoader: Any = None
if _CParser is not None and getattr(yaml, "__with_libyaml__", False):

    class _CMarkedLoader(_Marked, _CParser, SafeConstructor, Resolver):  # type: ignore[misc]
        """libyaml's parser under PyYAML's composer: the same nodes, several times faster."""

        def __init__(self, stream: str) -> None:
            _CParser.__init__(self, stream)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            Composer.__init__(self)
            self._depth = 0
            self.alias_copies = set()

    _FastLoader = _CMarkedLoader


class _NotATree(Exception):
    """A tree libyaml composed holds a node twice (an alias) or nests too deep: compose it
    again with PyYAML's composer, which marks aliases where they are written."""


@dataclass(slots=True)
class _Walker:
    loader: _Marked
    file: str
    problems: list[Problem]
    expanded: int = 0
    alias_stack: tuple[tuple[Node, str], ...] = ()
    # Ids of the nodes walked, for a tree libyaml composed (None otherwise): a second visit
    # is an alias, which that tree does not mark. Such a tree is also consumed as it is
    # walked, so that it and the located values are never both whole in memory (60 MB at
    # 10,000 jobs).
    seen: set[int] | None = None

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
        seen = self.seen
        if seen is not None:
            if id(node) in seen or depth > MAX_DEPTH:
                raise _NotATree
            seen.add(id(node))
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
                if self.seen is not None:
                    nodes[i] = None  # walked once (libyaml's tree): let it go
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
        pairs = node.value
        consume = self.seen is not None
        for index in range(len(pairs)):
            key_node, value_node = pairs[index]
            if consume:  # libyaml's tree is walked once: each entry goes once walked
                pairs[index] = None
            if key_node.tag == _MERGE_TAG:
                self._merge(value_node, path, depth, merged)
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag not in _SCALAR_TAGS:
                self.problem(key_node, path, "mapping keys must be plain text")
                continue
            # The key's text as written: `on`, `yes` or `123` stay strings here.
            key = str(key_node.value)
            child = f"{path}.{key}" if path else key
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


def _unknown_tag(tag: str) -> str:
    return f"unknown tag {show_tag(tag)!r}; qtasks reads plain YAML only (no tags)"


def yaml_error_problem(file: str, text: str, exc: yaml.YAMLError) -> Problem:
    """Turn a PyYAML error into ``FILE:LINE:COL: message``."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return Problem(
            file=file,
            line=mark.line + 1,
            column=mark.column + 1,
            key="",
            message=f"invalid YAML: {_explain(exc)}",
        )
    if isinstance(exc, yaml.reader.ReaderError):
        line, column = line_col(text, exc.position)
        return Problem(
            file=file,
            line=line,
            column=column,
            key="",
            message=f"character U+{exc.character:04X} is not allowed in YAML; "
            "write it as an escape inside a double-quoted string",
        )
    return Problem(file=file, line=1, column=1, key="", message=f"invalid YAML: {exc}")


def _explain(exc: yaml.MarkedYAMLError) -> str:
    problem = exc.problem or "syntax error"
    context = exc.context or ""
    first = f"line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
    # PyYAML's wording for the common mistakes is cryptic; say what to do instead.
    if "'\\t'" in problem:
        return "a tab character; indent YAML with spaces, not tabs"
    if problem == "mapping values are not allowed here":
        return f"{problem} (put a value that contains ': ' in quotes)"
    if context.startswith("found duplicate anchor"):
        return f"{context.split(';')[0]} (first defined at {first})"
    if problem == "but found another document":
        return f"a second YAML document; a job file holds one (the first starts at {first})"
    if context and first:
        return f"{context} ({first}): {problem}"
    return f"{context}: {problem}" if context else problem


def line_col(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of character ``position`` in ``text``."""
    before = text[:position]
    line = before.count("\n") + 1
    return line, position - (before.rfind("\n") + 1) + 1


def _load_c(text: str, file: str) -> tuple[Located | None, list[Problem]] | None:
    """``load`` with libyaml's composer as well as its parser, for a file without aliases
    (most): None when the file has one, nests too deep or does not parse, so that the
    caller composes it with PyYAML's composer, for the alias marks and PyYAML's wording."""
    loader = _FastLoader(text)
    try:
        root = _CParser.get_single_node(loader)
    except yaml.YAMLError:
        return None
    if root is None:
        return None, []
    walker = _Walker(loader=loader, file=file, problems=[], seen=set())
    try:
        tree = walker.walk(root, "")
    except _NotATree:
        return None
    return tree, walker.problems


def load(text: str, file: str) -> tuple[Located | None, list[Problem]]:
    """Parse ``text`` into a Located tree plus the non-fatal problems found on the way.

    Raises ConfigError for anything that stops parsing (syntax, nesting, alias bombs).
    Returns None for a document with no content.
    """
    loader: _Marked | None = None
    if _FastLoader is not None:
        found = _load_c(text, file)
        if found is not None:
            return found
        fast = _FastLoader(text)
        try:
            root = fast.get_single_node()
            loader = fast
        except yaml.YAMLError:
            loader = None  # parsed again below, for PyYAML's own message
    if loader is None:
        try:
            loader = _MarkedLoader(text)
            try:
                root = loader.get_single_node()
            finally:
                loader.dispose()
        except yaml.YAMLError as exc:
            raise ConfigError([yaml_error_problem(file, text, exc)]) from None
    if root is None:
        return None, []
    walker = _Walker(loader=loader, file=file, problems=[])
    tree = walker.walk(root, "")
    return tree, walker.problems
