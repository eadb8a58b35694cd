"""A run's arguments as the store keeps them and back: JSON values, with what JSON cannot hold
(dates, date-times, binary data, a mapping with the tag as a key) as a tagged mapping, so that
decoding is exact (``store_form``, ``live_form``)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any

# Values JSON cannot hold are kept in the store as {TAG: kind, "value": text}; a mapping of
# the caller's own that has a key TAG is wrapped as kind "dict", so decoding is exact.
TAG = "__qtasks__"


def store_form(value: Any, text: Callable[[str], str]) -> Any:
    """``value`` as JSON values, strings passed through ``text``."""
    if isinstance(value, str):
        return text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, datetime):
        return {TAG: "datetime", "value": value.isoformat()}
    if isinstance(value, date):
        return {TAG: "date", "value": value.isoformat()}
    if isinstance(value, bytes):
        return {TAG: "bytes", "value": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [store_form(v, text) for v in value]
    mapping = {key: store_form(v, text) for key, v in value.items()}
    return {TAG: "dict", "value": mapping} if TAG in mapping else mapping


def live_form(value: Any, text: Callable[[str], str]) -> Any:
    """The inverse of ``store_form``; strings passed through ``text``."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, list):
        return [live_form(v, text) for v in value]
    if not isinstance(value, Mapping):
        return value
    kind = value.get(TAG)
    if isinstance(kind, str) and set(value) == {TAG, "value"}:
        inner = value["value"]
        if kind == "dict" and isinstance(inner, Mapping):
            return {key: live_form(v, text) for key, v in inner.items()}
        if isinstance(inner, str):
            try:
                if kind == "datetime":
                    return datetime.fromisoformat(inner)
                if kind == "date":
                    return date.fromisoformat(inner)
                if kind == "bytes":
                    return base64.b64decode(inner.encode("ascii"), validate=True)
            except ValueError:
                pass
    return {key: live_form(v, text) for key, v in value.items()}


def unwrap_dict(value: Any) -> dict[str, Any]:
    """A stored mapping of keyword arguments as a plain dict (untagged if it was tagged)."""
    if set(value) == {TAG, "value"} and value[TAG] == "dict":
        return dict(value["value"])  # kwargs names are identifiers, never the tag
    return dict(value)
