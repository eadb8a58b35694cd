"""A process job's result as its child sent it: a preview made in the child, and the pickle.

Unpickling runs in C and holds the GIL from start to end: three million tuples take about
0.4 s, during which no thread of the daemon, its event loop included, runs. So the daemon never
unpickles a process job's result just to record it: the child makes the preview (the same
``previews.preview`` with the same secrets hidden) and sends it beside the pickled bytes, and
the value itself is unpickled only when Python code asks for it (an ``on_success``/
``on_failure`` hook, a caller of ``trigger_now``), in a helper thread with a deadline.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Pickled:
    """``preview``: the result's preview (at most ``failures.PREVIEW_CHARS`` characters,
    secrets hidden); ``data``: its pickle (``pickle.HIGHEST_PROTOCOL``)."""

    preview: str
    data: bytes

    def __repr__(self) -> str:
        return self.preview

    def load(self) -> Any:
        """The value itself. Raises what ``pickle.loads`` raises (any exception, job code's
        ``__setstate__`` included); holds the GIL while it runs (see the module docstring)."""
        return pickle.loads(self.data)


async def loaded(value: Any) -> Any:
    """``value``, or the value a ``Pickled`` stands for (a list of them too: a process job's
    generator items), unpickled in a helper thread with ``offloop.TEXT_TIMEOUT``'s deadline;
    ``value`` itself when that fails or hangs."""
    from qtasks_cli import offloop

    if type(value) is Pickled:
        return await offloop.off_loop(value.load, fallback=value)
    if type(value) is list and value and all(type(item) is Pickled for item in value):
        items: list[Pickled] = value
        return await offloop.off_loop(lambda: [item.load() for item in items], fallback=value)
    return value
