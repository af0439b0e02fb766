"""The metrics endpoint's HTTP side: a WSGI server thread, scrapes one at a time with
the cyclic GC paused (why: fwd.actors.metrics)."""

from __future__ import annotations

import gc
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client.exposition import ThreadingWSGIServer

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape on stderr (it would not be JSON either)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass


def serialised_without_gc(app: WsgiApp) -> WsgiApp:
    """``app`` run one request at a time, with the cyclic GC paused during each."""
    lock = threading.Lock()

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with lock:
            enabled = gc.isenabled()
            gc.disable()
            try:
                # make_wsgi_app renders the whole body inside the call.
                return list(app(environ, start_response))
            finally:
                if enabled:
                    gc.enable()

    return wrapped


def bind_wsgi(host: str, port: int) -> ThreadingWSGIServer:
    """A WSGI server bound to ``host:port`` (IPv4 or IPv6); give it an app, then serve."""
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    return Server((str(sockaddr[0]), port), _QuietHandler)
