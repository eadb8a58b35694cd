"""PyYAML's composer with limits: nesting at most ``MAX_DEPTH`` levels, an alias to a
collection marked where the alias is written; over PyYAML's Python parser or libyaml's."""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.resolver import Resolver

MAX_DEPTH = 100


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
