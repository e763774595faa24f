"""A small HTTP proxy on 127.0.0.1 that forwards to a real server (MLflow, Prometheus) and injects faults.

Used by tests/test_faults.py. `FaultProxy(upstream).fail(method, path_regex, status=503)` answers matching
requests with that status (and a JSON error body, as MLflow sends) instead of forwarding them;
`hang(...)` holds matching requests without answering until the proxy stops or `clear()` is called, like a
server that accepts the connection and never replies. A rule can also match the request's query string or
body (`match=`), so one Prometheus query can hang while the others pass. Every request is counted, with
the rule it hit, for the test to read back.

`TcpFaultProxy(port)` is the same idea one layer down, for tests/replicas_env.py: a TCP forwarder (a replica's
PostgreSQL connection) whose traffic can be black-holed (connections stay open, nothing moves) and healed.
"""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from sandbox.http import LoopbackServer

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Rule:
    method: str
    path: re.Pattern[str]
    match: re.Pattern[str] | None
    action: str  # "status" | "hang"
    status: int = 503
    times: int | None = None  # None = forever
    hits: int = 0


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    injected: str | None  # "503", "hang" or None when forwarded


class FaultProxy(LoopbackServer):
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.hostname != "127.0.0.1" or parts.port is None:
            raise ValueError(f"upstream must be http://127.0.0.1:PORT, got {upstream!r}")
        self.upstream_port = parts.port
        self._rules: list[Rule] = []
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        super().__init__()

    def stop(self) -> None:
        self._release.set()  # requests held unanswered end now
        super().stop()

    @property
    def url(self) -> str:
        return self.base

    # -- faults ------------------------------------------------------------------------------------
    def fail(self, method: str, path_regex: str, *, status: int = 503, match: str | None = None,
             times: int | None = None) -> Rule:
        return self._add(Rule(method, re.compile(path_regex), re.compile(match) if match else None, "status",
                              status, times))

    def hang(self, method: str, path_regex: str, *, match: str | None = None) -> Rule:
        return self._add(Rule(method, re.compile(path_regex), re.compile(match) if match else None, "hang"))

    def clear(self) -> None:
        """Drop every rule and let held requests go (they get a 504)."""
        with self._lock:
            self._rules.clear()
        self._release.set()
        self._release = threading.Event()

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def seen(self, method: str | None = None, path_regex: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self._seen if method in (None, s.method)
                    and (path_regex is None or re.search(path_regex, s.path))]

    def _rule_for(self, method: str, target: str, body: bytes) -> Rule | None:
        path, _, query = target.partition("?")
        text = query + "\n" + body.decode("utf-8", "replace")
        with self._lock:
            for rule in self._rules:
                if rule.method != method or not rule.path.search(path):
                    continue
                if rule.match is not None and not rule.match.search(_unquote(text)):
                    continue
                if rule.times is not None and rule.hits >= rule.times:
                    continue
                rule.hits += 1
                self._seen.append(Seen(method, path, "hang" if rule.action == "hang" else str(rule.status)))
                return rule
            self._seen.append(Seen(method, path, None))
        return None


def _unquote(text: str) -> str:
    from urllib.parse import unquote_plus

    return unquote_plus(text)


class _Handler(BaseHTTPRequestHandler):
    fake: FaultProxy  # set on the per-server subclass made in LoopbackServer.start()
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        rule = self.fake._rule_for(self.command, self.path, body)
        if rule is not None and rule.action == "hang":
            self.fake._release.wait()
            self._answer(504, b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "released"}')
            return
        if rule is not None:
            payload = json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE",
                                  "message": f"injected {rule.status} by the test's fault proxy"}).encode()
            self._answer(rule.status, payload)
            return
        conn = http.client.HTTPConnection("127.0.0.1", self.fake.upstream_port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in _HOP_HEADERS:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        finally:
            conn.close()

    def _answer(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on a held request (its timeout): nobody is left to answer

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: object) -> None:
        return  # the tests read `seen()`; request lines on stderr would only be noise


FaultProxy.handler = _Handler


class TcpFaultProxy:
    """A plain TCP forwarder on 127.0.0.1 (a PostgreSQL connection, any protocol) that can black-hole its traffic.

    Used by tests/replicas_env.py: each replica's DATABASE_URL points here instead of at PostgreSQL. While
    `blackhole()` is on, every connection stays open on both sides but no byte moves in either direction (the
    bytes wait in the kernel's buffers, as in a network partition), and new connections are accepted but not
    answered, so the client sees neither an error nor a close: only silence until its own timeouts. `heal()` lets
    the held bytes flow again in order. `cut()` closes every connection (a reset). Use as a context manager.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True, name=f"tcp-proxy-{self.port}")
        self._accepter.start()

    # -- faults ------------------------------------------------------------------------------------
    def blackhole(self) -> None:
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()

    @property
    def blackholed(self) -> bool:
        return not self._flowing.is_set()

    def cut(self) -> None:
        """Close every connection now (both sides see a reset or EOF); new ones are still accepted."""
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            _close(sock)

    def connections(self) -> int:
        with self._lock:
            return len(self._socks) // 2

    # -- lifecycle ---------------------------------------------------------------------------------
    def stop(self) -> None:
        self._closed.set()
        self._flowing.set()
        _close(self._listener)
        self.cut()
        self._accepter.join(timeout=5)

    def __enter__(self) -> TcpFaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- forwarding --------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed: the proxy is stopping
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                _close(client)  # upstream down: the client sees the refusal as a close
                continue
            server.settimeout(None)
            with self._lock:
                self._socks += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                if not self._flowing.wait(0.2):
                    continue  # black-holed: read nothing, so the bytes wait and nothing is answered
                ready, _, _ = select.select([src], [], [], 0.2)
                if not ready or not self._flowing.is_set():
                    continue
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except (OSError, ValueError):
            pass  # one side closed (or cut()): end this direction, the other follows
        finally:
            _close(src)
            _close(dst)
            with self._lock:
                self._socks = [s for s in self._socks if s is not src and s is not dst]


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # never connected or already shut: closing is all that is left
    sock.close()
