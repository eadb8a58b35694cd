"""Whether the daemon can listen on ``settings.metrics``, and why not in words: checked when a
job file is validated (the host must resolve to an address of this machine) and when the
daemon binds (the port may be taken). Standard library only: the check costs no import of
``prometheus_client``."""

from __future__ import annotations

import errno
import socket


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


MISSING_LIBRARY = (
    "needs prometheus_client, which cannot be imported{why}; "
    "install it with: pip install 'qtasks-cli[metrics]'"
)


def problem(host: str, port: int) -> str | None:
    """Why the daemon could not serve metrics on ``host:port``, or None; found without taking
    the port (a running daemon may hold it) or importing the library: ``prometheus_client``
    must be installed, and ``host`` must resolve, as the endpoint resolves it (the first
    address ``getaddrinfo`` gives), to an address of this machine."""
    import importlib.util

    try:
        found = importlib.util.find_spec("prometheus_client")
    except (ImportError, ValueError):
        found = None
    if found is None:
        return MISSING_LIBRARY.format(why="")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        return f"cannot resolve host {host!r} ({why})"
    if not infos:
        return f"cannot resolve host {host!r}"
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.bind((address[0], 0, *address[2:]))
    except OSError as exc:
        return (
            f"cannot listen on {host!r} ({address[0]}): {exc.strerror or exc} "
            "(is it an address of this machine?)"
        )
    return None


def bind_failure(host: str, port: int, exc: OSError) -> str:
    """The message for a failed bind of the metrics endpoint on ``host:port``."""
    where = _show(host, port)
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {host!r} ({exc.strerror})"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is already in use (another qtasks daemon, "
            f"or another program: `ss -ltnp 'sport = :{port}'` says which)"
        )
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: {host!r} is not an address of this machine"
    return f"cannot listen on {where}: {exc.strerror or exc}"
