"""libyaml's events straight to ``Located`` values, with no node tree in between.

libyaml's composer builds the whole document as nodes first: 39 MB for a file of 10,000 jobs
(each node with two marks), all alive at once beside the located values, and the memory they
leave behind stays with the process for as long as it runs. Here each event is read once and
becomes part of a located value at once; a scalar goes through the walker (``yamlwalk``) as
a node that lives for that scalar only, so scalars read exactly as on the other paths.

Only the plain shape of a job file is taken: a document of mappings, sequences and scalars
with plain-text keys. Anything else (an anchor or alias, a merge key ``<<``, a tag on a
collection, a key that is not plain text, a second document, nesting past the limit, a
syntax error) raises ``_NotATree``, and the file is composed by PyYAML's composer as before,
which reports it in its own words. ``tests/test_yaml_composers.py`` checks that both give the
same tree and problems.
"""

from __future__ import annotations

from typing import Any

from yaml.events import (
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from qtasks_cli.located import Located
from qtasks_cli.text import path_part
from qtasks_cli.yamlcompose import MAX_DEPTH
from qtasks_cli.yamlwalk import _MERGE_TAG, _SCALAR_TAGS, _STD, _key_trap, _NotATree, _Walker

_SEQ, _MAP = _STD + "seq", _STD + "map"


class EventReader:
    """Reads one document from ``events`` (libyaml's parser with PyYAML's resolver and safe
    constructors, ``yamlcompose._FastLoader``) into located values; problems go to
    ``walker``."""

    __slots__ = ("events", "jobs", "walker")

    def __init__(self, events: Any, walker: _Walker, jobs: Any = None) -> None:
        self.events = events
        self.walker = walker
        # Reads each job as it ends (config.jobs.JobStream), or None: see _entries.
        self.jobs = jobs

    def document(self) -> Located | None:
        """The document's root, or None for a stream with no document; ``_NotATree`` for
        anything PyYAML's composer should read instead (see the module docstring)."""
        events = self.events
        events.get_event()  # the stream's start
        if events.check_event(StreamEndEvent):
            return None
        events.get_event()  # the document's start
        root = self._value("", 0)
        events.get_event()  # the document's end
        if not events.check_event(StreamEndEvent):
            raise _NotATree  # a second document: PyYAML's composer says so in its words
        if self.jobs is not None:
            self.jobs.done = True
        return root

    def _value(self, path: str, depth: int) -> Located:
        if depth > MAX_DEPTH:
            raise _NotATree
        event = self.events.get_event()
        kind = type(event)
        if kind is ScalarEvent:
            if event.anchor is not None:
                raise _NotATree
            return self.walker._walk(self._scalar(event), path, depth)
        entries: dict[str, tuple[Located, Located]] | list[Located]
        if kind is MappingStartEvent:
            self._collection(event, MappingNode, _MAP)
            entries = self._entries(path, depth)
        elif kind is SequenceStartEvent:
            self._collection(event, SequenceNode, _SEQ)
            entries = self._items(path, depth)
        else:  # an alias
            raise _NotATree
        mark = event.start_mark
        shape = "map" if kind is MappingStartEvent else "seq"
        return Located(kind=shape, value=entries, line=mark.line + 1, column=mark.column + 1,
                       path=path)  # fmt: skip

    def _scalar(self, event: Any) -> ScalarNode:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.events.resolve(ScalarNode, event.value, event.implicit)
        return ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)

    def _collection(self, event: Any, node_type: type, expected: str) -> None:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.events.resolve(node_type, None, event.implicit)
        if event.anchor is not None or tag != expected:
            raise _NotATree

    def _items(self, path: str, depth: int) -> list[Located]:
        events, items = self.events, list[Located]()
        while not events.check_event(SequenceEndEvent):
            items.append(self._value(f"{path}[{len(items)}]", depth + 1))
        events.get_event()
        return items

    def _entries(
        self, path: str, depth: int, each: Any = None
    ) -> dict[str, tuple[Located, Located]]:
        """A mapping's entries; with ``each``, each value is handed to ``each(key, value)``
        as it ends and not kept (the entry keeps its key twice)."""
        events, walker = self.events, self.walker
        entries: dict[str, tuple[Located, Located]] = {}
        while not events.check_event(MappingEndEvent):
            event: Any = events.get_event()
            if type(event) is not ScalarEvent or event.anchor is not None:
                raise _NotATree
            key_node = self._scalar(event)
            if key_node.tag == _MERGE_TAG or key_node.tag not in _SCALAR_TAGS:
                raise _NotATree
            key = str(key_node.value)  # the key's text as written: `on` or `123` stay text
            child = f"{path}.{path_part(key)}" if path else path_part(key)
            mark: Any = event.start_mark
            if key in entries:
                first, again = entries[key][0].line, mark.line + 1
                where = f"twice on line {first}" if first == again else f"lines {first} and {again}"
                walker.problem(key_node, child, f"duplicate key {key!r} ({where})")
                self._skip()
                continue
            key_loc = Located(kind="scalar", value=key, line=mark.line + 1,
                              column=mark.column + 1, path=child, trap=_key_trap(key_node),
                              source=key)  # fmt: skip
            if not path and key == "jobs" and self._streams(entries):
                entries[key] = (key_loc, self._streamed(child, depth + 1))
                continue
            value = self._value(child, depth + 1)
            if each is not None:
                each(key_loc, value)
                value = key_loc
            entries[key] = (key_loc, value)
        events.get_event()
        return entries

    def _streams(self, top: dict[str, tuple[Located, Located]]) -> bool:
        """At the top-level ``jobs``: whether its jobs are read one by one as they end."""
        if self.jobs is None or self.jobs.began or not self.events.check_event(MappingStartEvent):
            return False
        return bool(self.jobs.begin(top))

    def _streamed(self, path: str, depth: int) -> Located:
        if depth > MAX_DEPTH:
            raise _NotATree
        event = self.events.get_event()
        self._collection(event, MappingNode, _MAP)
        entries = self._entries(path, depth, each=self.jobs.job)
        mark = event.start_mark
        return Located(kind="map", value=entries, line=mark.line + 1, column=mark.column + 1,
                       path=path)  # fmt: skip

    def _skip(self) -> None:
        """Read past one value unread (a duplicate key's, as the walker leaves it)."""
        open_ = 0
        while True:
            event = self.events.get_event()
            kind = type(event)
            if kind is MappingStartEvent or kind is SequenceStartEvent:
                open_ += 1
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                open_ -= 1
            if open_ == 0:
                return
