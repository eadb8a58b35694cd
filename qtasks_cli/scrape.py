"""The HTTP side of the metrics endpoint: a thread that sleeps in ``select`` until a scrape
arrives or ``stop`` is called, and wakes for nothing else.

``prometheus_client.start_http_server`` serves with ``socketserver``'s ``serve_forever``,
which polls every 0.5 s to notice a shutdown: about 120 wake-ups a minute of an idle daemon.
Here the listening socket and one end of a socket pair share a selector with no timeout;
``stop`` writes to the other end. Each scrape is answered in a thread of its own, as
``prometheus_client`` does, and computes the metrics then (``Metrics.collect``).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class Server(ThreadingMixIn, WSGIServer):
    """One thread per scrape; ``serve`` until ``stop``."""

    daemon_threads = True  # a stuck scraper never holds up the daemon's exit
    timeout = 0  # handle_request after the selector said "ready" never blocks

    def serve(self) -> None:
        """Answer scrapes until ``stop``; no wake-up in between."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r:
                        return
                    self.handle_request()

    def stop(self) -> None:
        """End ``serve`` (from any thread)."""
        with contextlib.suppress(OSError):  # closed already: nothing to stop
            self._wake_w.send(b"x")

    def server_close(self) -> None:
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()

    def server_bind(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        super().server_bind()


def serve(host: str, port: int, registry: Any) -> tuple[Server, threading.Thread]:
    """Serve ``registry`` on ``host:port`` (IPv4 or IPv6, as ``host`` resolves, first address
    first) in a daemon thread; OSError when the address cannot be bound."""
    from prometheus_client import make_wsgi_app

    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]

    class Bound(Server):
        address_family = family

    server = make_server(
        str(address[0]), port, make_wsgi_app(registry), Bound, handler_class=_Quiet
    )
    thread = threading.Thread(target=server.serve, name="qtasks-metrics", daemon=True)
    thread.start()
    return server, thread
