"""The HTTP server under every sandbox fake (Slack Web API, Kubernetes API, the chat page): a threaded
http.server on loopback, served from a daemon thread, with start / stop / `with` and its base URL.

Subclasses set `handler` (a BaseHTTPRequestHandler subclass); each request's handler instance reaches the
fake through `self.fake`.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, TypeVar

Self = TypeVar("Self", bound="LoopbackServer")


class LoopbackServer:
    handler: ClassVar[type[BaseHTTPRequestHandler]]

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self: Self) -> Self:
        """Bind the port and serve from a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        handler: Any = type("Handler", (self.handler,), {"fake": self})
        self._server = ThreadingHTTPServer(self._address, handler)
        self._server.daemon_threads = True
        server = self._server
        self._thread = threading.Thread(target=lambda: server.serve_forever(poll_interval=0.05), daemon=True,
                                        name=type(self).__name__)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
        self._server, self._thread = None, None

    def __enter__(self: Self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base(self) -> str:
        """`http://host:port` of the running server."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://{self._address[0]}:{self._server.server_port}"
