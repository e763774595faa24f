"""A local fake of Slack's Socket Mode: the WebSocket end Slack runs, on ws://127.0.0.1, for the tests.

Slack's side of the protocol, as slack_sdk's and the Node SDK's Socket Mode clients expect it:
- `apps.connections.open` (the Web API, with the app-level `xapp-` token in the Authorization header) answers
  `{"ok": true, "url": "wss://…/link/?ticket=…&app_id=…"}`. Here sandbox.slack_api.FakeSlackAPI answers it with
  `open_url()` once this fake is attached (`FakeSocketMode(slack=…)`); each URL carries a ticket good for one
  connection, as Slack's are. slack_sdk's built-in client speaks plain WebSocket to any port but 443, so ws:// URLs
  on 127.0.0.1 reach it unchanged.
- On connect the server sends `{"type": "hello", "num_connections", "debug_info", "connection_info"}` first.
- Events go out as envelopes `{"envelope_id", "type": "slash_commands" | "interactive" | "events_api",
  "payload", "accepts_response_payload"}`, each to exactly one open connection (`send`: the one named, else the
  next one round-robin, as Slack spreads an app's events over its connections).
- The app acks with `{"envelope_id", "payload"?}` (within 3 s at Slack, which otherwise shows the user an error and
  redelivers). Every ack is recorded with its time (`acks`, `wait_for_ack`); an ack's payload to a slash command is
  shown as Slack shows it, ephemerally like a response_url post, on the attached FakeSlackAPI.
- `disconnect(connection, reason)` sends `{"type": "disconnect", "reason": "refresh_requested" | "warning" |
  "link_disabled"}`: the client opens a new connection (apps.connections.open again) and closes the old one; no
  envelope goes to a connection told to go.

`payload_of(body)` turns the form bodies sandbox.signing builds for HTTP into the parsed payload an envelope
carries. Used by tests/test_socket_mode.py. Pings are answered by the WebSocket library (websockets' sync server).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

if TYPE_CHECKING:
    from sandbox.slack_api import FakeSlackAPI

log = logging.getLogger(__name__)

APP_ID = "A0SANDBOX"  # sandbox.slack_api's and sandbox.signing's app
ACK_DEADLINE = 3.0  # seconds Slack waits for an ack (kept on each Ack as `late`; tests read, never sleep on it)
DISCONNECT_REASONS = ("refresh_requested", "warning", "link_disabled")
Payload = dict[str, Any]


@dataclass
class Connection:
    """One open (or closed) WebSocket from the app: its number, the client's (host, port), and when it opened."""

    number: int
    peer: tuple[str, int]
    opened_at: float
    ws: ServerConnection = field(repr=False)
    told_to_go: str | None = None  # the reason of the disconnect it was sent, if any
    closed_at: float | None = None

    @property
    def open(self) -> bool:
        return self.closed_at is None


@dataclass(frozen=True)
class Envelope:
    """An envelope sent: its id, type, payload, the connection it went to and when (time.time())."""

    envelope_id: str
    type: str
    payload: Payload
    connection: int
    at: float


@dataclass(frozen=True)
class Ack:
    """An ack received: the envelope it acks, its payload (None without one), the connection it came on, when,
    and the seconds since its envelope went out (None for an envelope this fake never sent)."""

    envelope_id: str
    payload: Payload | None
    connection: int
    at: float
    after: float | None

    @property
    def late(self) -> bool:
        return self.after is not None and self.after > ACK_DEADLINE


class FakeSocketMode:
    """The Socket Mode server; a context manager (`with FakeSocketMode(slack=fake) as socket_mode:`)."""

    def __init__(self, *, slack: FakeSlackAPI | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.slack = slack
        self._host, self._port = host, port
        self._cond = threading.Condition(threading.RLock())
        self._tickets: set[str] = set()
        self._connections: list[Connection] = []
        self._sent: dict[str, Envelope] = {}
        self._acks: list[Ack] = []
        self._next = 0  # round-robin position
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        if slack is not None:
            slack.use_socket_mode(self.open_url)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> FakeSocketMode:
        self._server = serve(self._serve, self._host, self._port, process_request=self._check_ticket,
                             compression=None, ping_interval=None)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-socket-mode", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeSocketMode:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def base(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.socket.getsockname()[:2]
        return f"ws://{host}:{port}"

    # -- what apps.connections.open hands out ------------------------------------------------------------------
    def open_url(self) -> str:
        """A new WebSocket URL with a one-time ticket, as apps.connections.open answers it."""
        ticket = secrets.token_hex(16)
        with self._cond:
            self._tickets.add(ticket)
        return f"{self.base}/link/?ticket={ticket}&app_id={APP_ID}"

    # -- reads -------------------------------------------------------------------------------------------------
    def connections(self, *, open_only: bool = True) -> list[Connection]:
        """Connections in the order they opened (only the open ones unless `open_only=False`)."""
        with self._cond:
            return [c for c in self._connections if c.open or not open_only]

    def wait_for_connections(self, count: int, timeout: float = 30) -> list[Connection]:
        """Block until `count` connections are open and not told to go; TimeoutError says how many there are."""
        return self._wait(lambda: (live := self._live()) and len(live) >= count and live, timeout,
                          lambda: f"{len(self._live())} of {count} Socket Mode connections open")

    def acks(self, envelope_id: str | None = None) -> list[Ack]:
        with self._cond:
            return [a for a in self._acks if envelope_id in (None, a.envelope_id)]

    def wait_for_ack(self, envelope_id: str, timeout: float = 30) -> Ack:
        """Block until the envelope is acked; TimeoutError lists the acks seen."""
        found: Ack = self._wait(lambda: next(iter(self.acks(envelope_id)), None), timeout,
                                lambda: f"no ack of {envelope_id}; acks: {[a.envelope_id for a in self.acks()]}")
        return found

    def sent(self) -> list[Envelope]:
        with self._cond:
            return list(self._sent.values())

    # -- what Slack does ---------------------------------------------------------------------------------------
    def send(self, kind: str, payload: Payload, *, to: Connection | None = None,
             accepts_response_payload: bool | None = None, retry_attempt: int | None = None) -> Envelope:
        """Send one envelope to `to`, else to the next open connection round-robin; its record comes back.
        `accepts_response_payload` defaults as Slack sets it: true for slash commands and view submissions."""
        if accepts_response_payload is None:
            accepts_response_payload = kind == "slash_commands" or payload.get("type") == "view_submission"
        with self._cond:
            live = self._live()
            if to is None:
                if not live:
                    raise RuntimeError("no open Socket Mode connection to send to")
                to = live[self._next % len(live)]
                self._next += 1
            elif to not in live:
                raise RuntimeError(f"connection {to.number} is closed or was told to go")
            envelope = Envelope(str(uuid.uuid4()), kind, payload, to.number, time.time())
            self._sent[envelope.envelope_id] = envelope
        message: Payload = {"envelope_id": envelope.envelope_id, "type": kind, "payload": payload,
                            "accepts_response_payload": accepts_response_payload}
        if kind == "events_api":
            message.update(retry_attempt=retry_attempt or 0, retry_reason="")
        elif retry_attempt is not None:
            message["retry_attempt"] = retry_attempt
        to.ws.send(json.dumps(message))
        return envelope

    def disconnect(self, connection: Connection, reason: str = "refresh_requested") -> None:
        """Tell a connection to go (Slack's `disconnect` message); the client reconnects and closes it."""
        if reason not in DISCONNECT_REASONS:
            raise ValueError(f"Slack's disconnect reasons are {DISCONNECT_REASONS}, not {reason!r}")
        with self._cond:
            connection.told_to_go = reason
        connection.ws.send(json.dumps({"type": "disconnect", "reason": reason,
                                       "debug_info": {"host": "sandbox-socket-mode"}}))

    def close(self, connection: Connection) -> None:
        """Close a connection from Slack's side without a word (as a dropped link looks to the client)."""
        connection.ws.close()

    # -- the server ----------------------------------------------------------------------------------------------
    def _check_ticket(self, ws: ServerConnection, request: Request) -> Response | None:
        """Only a URL handed out by open_url, once: anything else is refused before the upgrade."""
        ticket = next(iter(parse_qs(urlsplit(request.path).query).get("ticket") or ()), "")
        with self._cond:
            if ticket not in self._tickets:
                return ws.respond(401, "invalid or used ticket\n")
            self._tickets.discard(ticket)
        return None

    def _serve(self, ws: ServerConnection) -> None:
        peer = ws.remote_address
        with self._cond:
            connection = Connection(len(self._connections) + 1, (str(peer[0]), int(peer[1])), time.time(), ws)
            self._connections.append(connection)
            count = len(self._live())
            self._cond.notify_all()
        try:
            ws.send(json.dumps({"type": "hello", "num_connections": count,
                                "debug_info": {"host": "sandbox-socket-mode", "build_number": 1,
                                               "approximate_connection_time": 18060},
                                "connection_info": {"app_id": APP_ID}}))
            for raw in ws:
                self._received(connection, raw)
        except ConnectionClosed:
            pass  # the client went away (closed, or replaced this connection with a new one)
        finally:
            with self._cond:
                connection.closed_at = time.time()
                self._cond.notify_all()

    def _received(self, connection: Connection, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            log.warning("fake socket mode: not JSON from connection %s: %r", connection.number, raw[:200])
            return
        if not isinstance(message, dict) or not message.get("envelope_id"):
            log.debug("fake socket mode: ignored %r", message)
            return
        now = time.time()
        payload = message.get("payload") if isinstance(message.get("payload"), dict) else None
        with self._cond:
            envelope = self._sent.get(str(message["envelope_id"]))
            self._acks.append(Ack(str(message["envelope_id"]), payload, connection.number, now,
                                  now - envelope.at if envelope else None))
            self._cond.notify_all()
        if envelope is not None and envelope.type == "slash_commands" and payload and self.slack is not None:
            # Slack shows a slash command's ack payload to the person who typed it, as a response_url post.
            p = envelope.payload
            self.slack.respond(str(p.get("channel_id")), str(p.get("user_id")), payload)

    def _live(self) -> list[Connection]:
        return [c for c in self._connections if c.open and c.told_to_go is None]

    def _wait(self, found: Callable[[], Any], timeout: float, what: Callable[[], str]) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (value := found()):
                if (remaining := deadline - time.monotonic()) <= 0:
                    raise TimeoutError(f"{what()} after {timeout}s")
                self._cond.wait(remaining)
            return value


def payload_of(body: str) -> Payload:
    """The payload a Socket Mode envelope carries for a form body sandbox.signing builds: a slash command's fields,
    or the parsed JSON of an interactive `payload=`."""
    form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
    if "payload" in form:
        parsed = json.loads(form["payload"])
        assert isinstance(parsed, dict)
        return parsed
    return dict(form)
