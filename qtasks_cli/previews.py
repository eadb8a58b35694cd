"""A short, bounded preview of a job's result or of an item it generated: its JSON when that
fits in ``failures.PREVIEW_CHARS`` characters, else a clipped repr-like text.

Plain values (``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes`` and the builtin
containers of them) are walked here with a budget: a preview reads at most a few hundred of
their items, whatever their size, and never calls the job's code. A value that needs its own
``__repr__`` is previewed in a helper thread with a deadline (``preview_off_loop``).

Secrets are hidden leaf by leaf (``qtasks_cli.redaction``): each string, each bytes value, each
number's text and each object's own repr goes through ``redact`` before it is quoted, so a
secret is hidden however many layers of repr or JSON the job put around it, and redaction
never touches the JSON or repr syntax of the preview itself.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

from qtasks_cli import offloop
from qtasks_cli.failures import PREVIEW_CHARS, class_name, clip, is_one_of, safe_repr

_ITEMS = 1_000  # container items read at most (the text budget stops it sooner)
# Characters of one leaf (a string, bytes, an object's repr) read beyond the budget before it is
# redacted and cut: a secret up to this long that straddles the cut is hidden whole.
_LEAF_MARGIN = 4 * 1024


class NeedsJobCode(Exception):
    """The value holds an object whose text only its own (the job's) code can make."""


class _Full(Exception):
    """The text passed its budget."""


_SCALARS = (type(None), bool, int, float)
_CONTAINERS = (list, tuple, set, frozenset, dict)


def _scalar_repr(value: Any) -> str:
    if type(value) is int and value.bit_length() > 600:  # repr of a huge int is quadratic
        return f"<int of {value.bit_length()} bits>"
    return repr(value)


class _Writer:
    def __init__(
        self, budget: int, user_code: bool, leaf: Callable[[str], str] | None = None
    ) -> None:
        # Each string of the value goes through ``leaf`` (redaction) before it is quoted,
        # so a secret is hidden however many layers of repr or JSON end up around it.
        self.leaf: Callable[[str], str] = leaf or (lambda text: text)
        self.parts: list[str] = []
        self.size = 0
        self.budget = budget
        self.user_code = user_code
        self.active: set[int] = set()  # containers being written: a cycle shows as [...]

    def put(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size > self.budget:
            raise _Full

    def text(self) -> str:
        return "".join(self.parts)


def _leaf_bytes(out: _Writer, value: bytes | bytearray) -> bytes:
    """The first ``out.budget`` bytes of ``value``, secrets hidden (as UTF-8 text)."""
    text = bytes(value[: out.budget + _LEAF_MARGIN]).decode("utf-8", "surrogateescape")
    return out.leaf(text).encode("utf-8", "surrogateescape")[: out.budget]


def _repr_into(out: _Writer, value: Any, depth: int) -> None:
    kind = type(value)
    if is_one_of(kind, _SCALARS):
        out.put(out.leaf(_scalar_repr(value)))
    elif kind is str:
        cut = out.leaf(value[: out.budget + _LEAF_MARGIN])[: out.budget]
        out.put(repr(cut) + ("…" if len(value) > out.budget else ""))
    elif kind is bytes or kind is bytearray:
        shown = _leaf_bytes(out, value)
        text = repr(shown) if kind is bytes else f"bytearray({shown!r})"
        out.put(text + (f"… ({len(value)} bytes)" if len(value) > out.budget else ""))
    elif is_one_of(kind, _CONTAINERS):
        _container_repr(out, value, depth)
    elif out.user_code:
        out.put(out.leaf(safe_repr(value, out.budget + _LEAF_MARGIN))[: out.budget + 1])
    else:
        raise NeedsJobCode


def _container_repr(out: _Writer, value: Any, depth: int) -> None:
    kind = type(value)
    if depth > 20:
        out.put("…")
        return
    if id(value) in out.active:
        out.put("[...]" if kind is list else "{...}" if kind is dict else "(...)")
        return
    out.active.add(id(value))
    try:
        _container_items(out, value, depth)
    finally:
        out.active.discard(id(value))


def _container_items(out: _Writer, value: Any, depth: int) -> None:
    kind = type(value)
    opening, closing = "[]" if kind is list else "()" if kind is tuple else "{}"
    if kind is set or kind is frozenset:
        if not value:
            out.put(f"{kind.__name__}()")
            return
        opening, closing = ("{", "}") if kind is set else ("frozenset({", "})")
    out.put(opening)
    shown = 0
    for shown, item in enumerate(value.items() if kind is dict else value, 1):
        if shown > _ITEMS:
            out.put(f"… {len(value) - _ITEMS} more")
            break
        if shown > 1:
            out.put(", ")
        if kind is dict:
            _repr_into(out, item[0], depth + 1)
            out.put(": ")
            _repr_into(out, item[1], depth + 1)
        else:
            _repr_into(out, item, depth + 1)
    if kind is tuple and shown == 1 and len(value) == 1:
        out.put(",")
    out.put(closing)


def _json_key(key: Any) -> str:
    if type(key) is str:
        return key
    if key is None or type(key) is bool:
        return json.dumps(key)
    if type(key) is int or type(key) is float:
        return json.dumps(key) if type(key) is float else _scalar_repr(key)
    raise TypeError("not a JSON key")


def _json_into(out: _Writer, value: Any, depth: int) -> None:
    kind = type(value)
    if depth > 20:
        raise _Full
    if is_one_of(kind, _SCALARS):
        text = json.dumps(value) if kind is not int else _scalar_repr(value)
        hidden = out.leaf(text)
        out.put(text if hidden == text else json.dumps(hidden, ensure_ascii=False))
    elif kind is str:
        if len(value) > out.budget:
            raise _Full
        out.put(json.dumps(out.leaf(value), ensure_ascii=False))
    elif kind is list or kind is tuple:
        if len(value) > out.budget:
            raise _Full
        out.put("[")
        for i, item in enumerate(value):
            if i:
                out.put(", ")
            _json_into(out, item, depth + 1)
        out.put("]")
    elif kind is dict:
        if len(value) > out.budget:
            raise _Full
        out.put("{")
        for i, (key, item) in enumerate(value.items()):
            if i:
                out.put(", ")
            out.put(json.dumps(out.leaf(_json_key(key)), ensure_ascii=False) + ": ")
            _json_into(out, item, depth + 1)
        out.put("}")
    else:  # json.dumps(default=repr) used to put such values as their repr string
        inner = _Writer(out.budget, out.user_code, out.leaf)
        with contextlib.suppress(_Full):
            _repr_into(inner, value, depth)
        out.put(json.dumps(inner.text(), ensure_ascii=False))


def preview(
    value: Any, redact: Callable[[str], str], *, as_json: bool = True, user_code: bool = False
) -> str:
    """A short text of ``value``: with ``as_json`` its JSON when that fits in PREVIEW_CHARS,
    else a clipped repr-like text showing the first items of containers. ``redact`` hides
    secrets in one piece of text: it is applied to each leaf of the value (see the module's
    docstring), never to the preview as a whole.

    Reads at most a few hundred items of plain values, however large. Raises NeedsJobCode
    when an object needs its own ``__repr__`` and ``user_code`` is False (then call it again
    with ``user_code=True`` in ``off_loop``)."""
    if as_json:
        out = _Writer(PREVIEW_CHARS, user_code, redact)
        try:
            _json_into(out, value, 0)
            text: str | None = out.text()
        except (_Full, TypeError, ValueError, RecursionError):
            text = None
        if text is not None and len(text) <= PREVIEW_CHARS:
            return text
    out = _Writer(PREVIEW_CHARS + 64, user_code, redact)
    with contextlib.suppress(_Full):
        _repr_into(out, value, 0)
    return clip(out.text(), PREVIEW_CHARS)


async def preview_off_loop(
    value: Any, redact: Callable[[str], str], *, as_json: bool = True
) -> str:
    """``preview`` of ``value``: on the loop when it is a plain value (bounded work), else in
    a helper thread with a deadline; a placeholder if the job's code fails or hangs."""
    try:
        return preview(value, redact, as_json=as_json)
    except NeedsJobCode:
        pass
    name, timeout = class_name(type(value)), offloop.TEXT_TIMEOUT
    return await offloop.off_loop(
        lambda: preview(value, redact, as_json=as_json, user_code=True),
        fallback=f"<{name} object: its repr() failed or was not read within {timeout:g}s>",
        refused=f"<{name} object: not shown while {offloop.HUNG_TEXTS}>",
        unstarted=f"<{name} object: not shown: {offloop.NO_THREAD}>",
    )


def result_preview(value: Any, redact: Callable[[str], str]) -> str | None:
    """JSON of ``value`` when it fits in 200 characters, else a clipped repr; secrets
    redacted; bounded work, never raises (see ``preview``)."""
    if value is None:
        return None
    return preview(value, redact, user_code=True)
