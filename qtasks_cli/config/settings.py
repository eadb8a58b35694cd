"""The ``settings`` section of the job file."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtasks_cli.config.reading import (
    _POSTGRES_SCHEMES,
    _SCHEMA,
    KNOWN_SETTINGS_KEYS,
    _Bad,
    _Context,
    _duration,
    _int,
    _mapping,
    _optional,
    _plain_number,
    _positive_number,
    _Reported,
    _show,
    _str,
    _unknown_key,
    _zone,
)
from qtasks_cli.errors import (
    Problem,
)
from qtasks_cli.located import Located
from qtasks_cli.models import (
    Settings,
)

log = logging.getLogger(__name__)


def _settings(ctx: _Context, entry: tuple[Located, Located] | None) -> Settings:
    readers: dict[str, Callable[[Located], Any]] = {
        "path": lambda node: _folders(ctx, node),
        "state": lambda node: _state(ctx, node),
        "timezone": _zone,
        "max_concurrent": lambda node: _int(node, 1),
        "shutdown_grace": _duration,
        "keep_runs": _optional(lambda node: _int(node, 1)),
        "keep_days": _optional(_positive_number),
        "max_catch_up": lambda node: _int(node, 1),
        "node_timeout": lambda node: _duration(node, positive=True),
        "schema": _schema,
        "metrics": _optional(lambda node: _listen_address(ctx, node)),
    }
    values: dict[str, Any] = {
        "path": (ctx.base_dir,),
        "state": str(ctx.base_dir / ".qtasks" / "state.db"),
    }
    for key, (key_node, node) in _mapping(ctx, entry, "settings").items():
        ctx.where[f"settings.{key}"] = (node.line, node.column)
        if key not in readers:
            ctx.report(key_node, _unknown_key(key, KNOWN_SETTINGS_KEYS))
        elif not node.invalid:
            try:
                values[key] = readers[key](node)
            except _Bad as exc:
                ctx.report(node, exc.message)
            except _Reported:
                pass
    if "timezone" not in values:
        values["timezone"] = _machine_zone(ctx, entry)
    return Settings(**values)


def _machine_zone(ctx: _Context, entry: tuple[Located, Located] | None) -> str:
    """The default zone: the machine's (qtasks_cli.zones), or a problem if $TZ is unusable."""
    from qtasks_cli.zones import ZoneError, machine_zone

    try:
        found = machine_zone(ctx.env)
    except ZoneError as exc:
        if (ctx.env or os.environ).get("TZ") is not None and entry is None:
            # The environment's fault, not the file's: named as such, not as line 1.
            ctx.problems.append(
                Problem(file="environment variable TZ", line=0, column=0, key="", message=str(exc))
            )
            return "UTC"  # not used: the file is refused
        where = entry[0] if entry is not None else Located("scalar", None, 1, 1, "")
        ctx.report(where, str(exc), path="settings.timezone")
        return "UTC"  # not used: the file is refused
    ctx.zone_source = found.source
    return found.name


def _folders(ctx: _Context, node: Located) -> tuple[Path, ...]:
    items = node.value if node.kind == "seq" else [node]
    folders = []
    for item in items:
        if item.kind != "scalar" or not isinstance(item.value, str) or not item.value:
            ctx.fail(item, f"expected a folder or a list of folders, got {_show(item)}")
        folder = Path(os.path.normpath(ctx.base_dir / os.path.expanduser(item.value)))
        if ctx.check_imports and not folder.is_dir():
            ctx.fail(item, f"folder {str(folder)!r} does not exist")
        folders.append(folder)
    return tuple(folders)


def _state(ctx: _Context, node: Located) -> str:
    text = _str(node)
    if "\0" in text:  # no path or URL holds one; open() would raise on it later
        raise _Bad(f"expected a file path or a postgresql:// URL, got {text!r} (a NUL byte)")
    if text.startswith(_POSTGRES_SCHEMES):
        return text
    if "://" in text or not text.strip():
        raise _Bad(f"expected a file path or a postgresql:// URL, got {text!r}")
    return os.path.normpath(ctx.base_dir / os.path.expanduser(text))


def _listen_address(ctx: _Context, node: Located) -> tuple[str, int]:
    """``settings.metrics``: ``HOST:PORT`` (``[::1]:9464`` for IPv6) or a bare port, which
    listens on 127.0.0.1 only. Where the environment is checked (``validate``, ``run``), the
    host must resolve to an address of this machine (qtasks_cli.listen)."""
    _plain_number(node)
    value = node.value
    expected = "expected HOST:PORT such as 127.0.0.1:9464, or a port number"
    if isinstance(value, int) and not isinstance(value, bool):
        host, port_text = "127.0.0.1", str(value)
    elif isinstance(value, str):
        host, sep, port_text = value.strip().rpartition(":")
        if not sep or not host:
            raise _Bad(f"{expected}, got {value!r}")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    else:
        raise _Bad(f"{expected}, got {_show(node)}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _Bad(f"{expected} (port 1 to 65535), got {value!r}")
    if not host or any(c.isspace() or c in "/[]" for c in host):
        raise _Bad(f"{expected}, got {value!r}")
    if ctx.check_imports:
        from qtasks_cli import listen

        why = listen.problem(host, int(port_text))
        if why is not None:
            raise _Bad(why)
    return host, int(port_text)


def _schema(node: Located) -> str:
    text = _str(node)
    if not _SCHEMA.match(text):
        raise _Bad(f"expected an SQL identifier (letters, digits, _; at most 63), got {text!r}")
    return text
