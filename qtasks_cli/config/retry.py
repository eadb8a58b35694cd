"""The ``retry`` key: its short spellings (a number, ``retry_on``) normalized into one
mapping, and that mapping read into a ``RetryPolicy``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtasks_cli import entrypoints, yamltraps
from qtasks_cli.config.jobstate import _JobState
from qtasks_cli.config.reading import (
    KNOWN_RETRY_KEYS,
    Entries,
    _Bad,
    _Context,
    _duration,
    _int,
    _plain_number,
    _show,
    _unknown_key,
)
from qtasks_cli.errors import EntryPointError
from qtasks_cli.located import Located
from qtasks_cli.models import RetryPolicy


def _normalize_retry(ctx: _Context, entries: Entries) -> Entries:
    """Spell `retry` as a mapping and fold `retry_on` into it, so defaults merge key by key."""
    result = dict(entries)
    retry = result.get("retry")
    if retry is not None and retry[1].kind == "scalar" and _is_int(retry[1].value):
        key_node, node = retry
        result["retry"] = (key_node, _synthetic_map(node, {"retries": node}))
    retry_on = result.pop("retry_on", None)
    if retry_on is None:
        return result
    on_key, on_node = retry_on
    retry = result.get("retry")
    if retry is None or retry[1].is_null:
        result["retry"] = (on_key, _synthetic_map(on_node, {"on": on_node}))
    elif retry[1].kind == "map":
        if "on" in retry[1].value:
            line = retry[1].value["on"][0].line
            ctx.report(on_key, f"retry_on repeats retry.on (line {line}); give only one")
        else:
            merged = {**retry[1].value, "on": (on_key, on_node)}
            result["retry"] = (retry[0], _synthetic_map(retry[1], {}, merged))
    return result


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _synthetic_map(
    at: Located, values: dict[str, Located], entries: Entries | None = None
) -> Located:
    entries = dict(entries or {})
    for key, node in values.items():
        key_node = Located(
            kind="scalar", value=key, line=node.line, column=node.column, path=node.path
        )
        entries[key] = (key_node, node)
    return Located(kind="map", value=entries, line=at.line, column=at.column, path=at.path)


def _backoff(node: Located) -> float:
    _plain_number(node)
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
        raise _Bad(f"expected a number >= 1, got {_show(node)}")
    return float(value)


_RETRY_FIELDS: dict[str, Callable[[Located], Any]] = {
    "retries": lambda node: _int(node, 0),
    "delay": _duration,
    "backoff": _backoff,
    "max_delay": _duration,
    "jitter": _duration,
}


class _RetryReader(_JobState):
    """Reads a job's ``retry`` mapping into ``values["retry"]``."""

    def _read_retry(self, node: Located | None) -> None:
        if node is None or node.is_null or node.invalid:
            return
        if node.trap in yamltraps.NUMBER_TRAPS:
            self.report(node, yamltraps.refusal(node, "a number") or node.trap_note())
            return
        if node.kind != "map":
            self.report(
                node,
                "expected a number of retries such as 3, or a mapping such as "
                f"{{retries: 3, delay: 1s}}, got {_show(node)}",
            )
            return
        fields: dict[str, Any] = {}
        for key, (key_node, value) in node.value.items():
            if key not in KNOWN_RETRY_KEYS:
                self.report(key_node, _unknown_key(key, KNOWN_RETRY_KEYS))
            elif value.invalid:
                self.ok = False
            elif key == "on":
                fields["on"] = self._exception_names(value)
            else:
                try:
                    fields[key] = _RETRY_FIELDS[key](value)
                except _Bad as exc:
                    self.report(value, exc.message)
        self.values["retry"] = RetryPolicy(**fields)

    def _exception_names(self, node: Located) -> tuple[str, ...]:
        items = [] if node.is_null else node.value if node.kind == "seq" else [node]
        names = []
        for item in items:
            if item.kind != "scalar" or not isinstance(item.value, str):
                self.report(item, f"expected an exception class name, got {_show(item)}")
                continue
            try:
                if ":" in item.value:
                    entrypoints.split_ref(item.value)  # imported with the other references
                else:
                    entrypoints.resolve_exception(item.value)
            except EntryPointError as exc:
                self.report(item, str(exc))
                continue
            names.append(item.value)
            self.exception_nodes.append(item)
        return tuple(names)
