"""Fake PagerDuty Events API v2 over HTTPS on 127.0.0.1, used by the tests (the `pagerduty_fake` session fixture in
tests/conftest.py, the story tests) and available to the demo.

`FakePagerDuty` is a context manager. At start it makes a throwaway CA and a server certificate it signs
(subjectAltName IP:127.0.0.1 and DNS:localhost) with the `cryptography` package, because PagerDuty's client accepts
only https:// URLs; clients trust it through `ca_file` (REQUESTS_CA_BUNDLE / SSL_CERT_FILE). `url` is
https://127.0.0.1:PORT/v2/enqueue.

It answers `POST /v2/enqueue` as events.pagerduty.com does (PagerDuty's developer docs, Events API v2):
202 `{"status": "success", "message": "Event processed", "dedup_key": ...}` with the given dedup_key, or a new one for
a trigger without one; 400 `{"status": "invalid event", "message": "Event object is invalid", "errors": [...]}` when
routing_key or event_action is missing, a trigger lacks payload.summary / payload.source or has a payload.severity
other than critical / error / warning / info, or an acknowledge / resolve has no dedup_key. `fail_next(status,
times)` answers the next calls with that status instead (429 without a Retry-After, 5xx, or 400 in PagerDuty's error
shape). Every POST is kept in `events` (body, arrival time, the status answered), and `alerts` follows each
dedup_key the way PagerDuty does: a trigger opens an alert (or adds a trigger to the open one), acknowledge and
resolve move it, events for a resolved or unknown key are dropped, and a trigger after a resolve opens a new alert.
A client that refuses the certificate shows up in `handshake_failures`.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PATH = "/v2/enqueue"
ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
MAX_BODY = 512 * 1024  # PagerDuty's payload size limit
_HANDSHAKE_SECONDS = 5.0
_IDLE_SECONDS = 10.0  # a kept-alive connection's handler thread ends after this long without a request
_FAIL_BODIES: dict[int, dict[str, Any]] = {
    400: {"status": "invalid event", "message": "Event object is invalid", "errors": ["Failure forced by the test"]},
    429: {"status": "throttle event", "message": "Requests for this service are arriving too quickly. "
                                                 "Please retry later."},
}


@dataclass(frozen=True)
class Event:
    """One POST as received: its JSON body (None when it was not JSON), when it arrived and what it was answered."""

    body: dict[str, Any] | None
    at: float  # time.time()
    status: int

    @property
    def action(self) -> str | None:
        return self.body.get("event_action") if self.body else None

    @property
    def dedup_key(self) -> str | None:
        return self.body.get("dedup_key") if self.body else None


@dataclass
class Alert:
    """What PagerDuty would hold for one dedup_key: its state and how many triggers reached it."""

    dedup_key: str
    routing_key: str
    state: str  # triggered | acknowledged | resolved
    triggers: int = 1


def _validate(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return ["Event object must be a JSON object"]
    errors = []
    if not isinstance(body.get("routing_key"), str) or not body["routing_key"].strip():
        errors.append("'routing_key' is missing or blank")
    action = body.get("event_action")
    if action not in ACTIONS:
        errors.append(f"'event_action' is invalid (must be one of: {', '.join(ACTIONS)})")
    dedup_key = body.get("dedup_key")
    if dedup_key is not None and (not isinstance(dedup_key, str) or len(dedup_key) > 255):
        errors.append("'dedup_key' must be a string of at most 255 characters")
    if action == "trigger":
        payload = body.get("payload")
        if not isinstance(payload, dict):
            errors.append("'payload' is missing or not an object")
        else:
            for name in ("summary", "source"):
                if not isinstance(payload.get(name), str) or not payload[name].strip():
                    errors.append(f"'payload.{name}' is missing or blank")
            if isinstance(payload.get("summary"), str) and len(payload["summary"]) > 1024:
                errors.append("'payload.summary' is longer than 1024 characters")
            if payload.get("severity") not in SEVERITIES:
                errors.append(f"'payload.severity' is invalid (must be one of: {', '.join(SEVERITIES)})")
    elif action in ("acknowledge", "resolve") and not (isinstance(dedup_key, str) and dedup_key.strip()):
        errors.append("'dedup_key' is missing or blank")
    return errors


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx2's pool expects
    timeout = _IDLE_SECONDS
    fake: FakePagerDuty

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("pagerduty fake: " + format, *args)

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != PATH:
            self._answer(404, {"status": "not found", "message": "Not Found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            self._answer(413, {"status": "invalid event", "message": "Request Entity Too Large"})
            return
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:  # not JSON: PagerDuty answers 400, like any invalid event
            body = None
        status, answer = self.fake.handle(body)
        self._answer(status, answer)

    def do_GET(self) -> None:
        self._answer(404, {"status": "not found", "message": "Not Found"})


class _TLSServer(ThreadingHTTPServer):
    """ThreadingHTTPServer whose connections speak TLS; the handshake runs in the connection's own thread, so a
    client that stalls or refuses the certificate never holds up the accept loop."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext,
                 fake: FakePagerDuty) -> None:
        self.context = context
        self.fake = fake
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        tls = self.context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        try:
            tls.settimeout(_HANDSHAKE_SECONDS)
            try:
                tls.do_handshake()
            except (ssl.SSLError, OSError) as e:  # the client refused the certificate, or went away: count it
                self.fake.note_handshake_failure(e)
                return
            super().finish_request(tls, client_address)
        finally:
            tls.close()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost signed by it, written as PEM into
    `directory`: (ca.pem, server.pem, server-key.pem). Valid from an hour ago for two days."""
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("rollback-bot sandbox PagerDuty CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder().subject_name(_name(HOST)).issuer_name(ca_name).public_key(key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST)),
                                                          x509.DNSName("localhost")]), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                           crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
              .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


class FakePagerDuty:
    """The Events API v2 on https://127.0.0.1:PORT/v2/enqueue; see the module docstring."""

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._server: _TLSServer | None = None
        self._thread: threading.Thread | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._ca_file: Path | None = None
        self._changed = threading.Condition()
        self._failures: list[tuple[int, dict[str, Any]]] = []
        self.events: list[Event] = []
        self.alerts: dict[str, Alert] = {}
        self.handshake_failures: list[str] = []

    # --- lifecycle ---

    def start(self) -> FakePagerDuty:
        """Make the certificates, bind the port and serve from a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("FakePagerDuty already started")
        self._dir = tempfile.TemporaryDirectory(prefix="pagerduty-fake-")
        ca_file, cert_file, key_file = make_certificates(Path(self._dir.name))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_file, key_file)
        handler: Any = type("Handler", (_Handler,), {"fake": self})
        self._server = _TLSServer((HOST, self._port), handler, context, self)
        self._ca_file = ca_file
        server = self._server
        self._thread = threading.Thread(target=lambda: server.serve_forever(poll_interval=0.05), daemon=True,
                                        name="FakePagerDuty")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and remove the certificates; safe to call twice."""
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
        if self._dir is not None:
            self._dir.cleanup()
        self._server, self._thread, self._dir, self._ca_file = None, None, None, None

    def __enter__(self) -> FakePagerDuty:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """https://127.0.0.1:PORT/v2/enqueue (PAGERDUTY_EVENTS_URL)."""
        if self._server is None:
            raise RuntimeError("FakePagerDuty is not started")
        return f"https://{HOST}:{self._server.server_port}{PATH}"

    @property
    def ca_file(self) -> str:
        """The PEM file of the CA that signed the server's certificate (REQUESTS_CA_BUNDLE / SSL_CERT_FILE)."""
        if self._ca_file is None:
            raise RuntimeError("FakePagerDuty is not started")
        return str(self._ca_file)

    # --- what tests arrange and read ---

    def fail_next(self, status: int, times: int = 1, body: dict[str, Any] | None = None) -> None:
        """Answer the next `times` POSTs with `status` (and `body`, else PagerDuty's shape for it) instead."""
        answer = body if body is not None else _FAIL_BODIES.get(
            status, {"status": "error", "message": f"Internal error (HTTP {status}, forced by the test)"})
        with self._changed:
            self._failures += [(status, answer)] * times

    def reset(self) -> None:
        """Forget events, alerts, pending failures and handshake failures (between tests sharing the fake)."""
        with self._changed:
            self.events.clear()
            self.alerts.clear()
            self._failures.clear()
            self.handshake_failures.clear()

    def accepted(self, routing_key: str | None = None) -> list[Event]:
        """The events answered 202, in arrival order (only those sent with `routing_key`, when given)."""
        with self._changed:
            return [e for e in self.events if e.status == 202
                    and (routing_key is None or (e.body or {}).get("routing_key") == routing_key)]

    def wait_for(self, pred: Callable[[list[Event]], bool], timeout: float = 10.0) -> list[Event]:
        """Block until `pred(events)` holds (checked at each arrival); returns the events. TimeoutError after
        `timeout` seconds, naming what did arrive."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not pred(list(self.events)):
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(e.action, e.dedup_key, e.status) for e in self.events]
                    raise TimeoutError(f"PagerDuty fake: condition not met within {timeout} s; events: {seen}")
                self._changed.wait(left)
            return list(self.events)

    # --- the server side ---

    def note_handshake_failure(self, error: BaseException) -> None:
        with self._changed:
            self.handshake_failures.append(f"{type(error).__name__}: {error}")
            self._changed.notify_all()

    def handle(self, body: Any) -> tuple[int, dict[str, Any]]:
        """The answer to one POST body, recorded in `events` (and `alerts`)."""
        with self._changed:
            try:
                return self._handle(body)
            finally:
                self._changed.notify_all()

    def _handle(self, body: Any) -> tuple[int, dict[str, Any]]:
        kept = body if isinstance(body, dict) else None
        if self._failures:
            status, answer = self._failures.pop(0)
            self.events.append(Event(kept, time.time(), status))
            return status, answer
        errors = _validate(body)
        if errors:
            self.events.append(Event(kept, time.time(), 400))
            return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
        assert kept is not None  # _validate said it is a dict
        dedup_key = kept.get("dedup_key") or uuid.uuid4().hex
        self.events.append(Event(kept, time.time(), 202))
        self._follow(kept["event_action"], dedup_key, kept["routing_key"])
        return 202, {"status": "success", "message": "Event processed", "dedup_key": dedup_key}

    def _follow(self, action: str, dedup_key: str, routing_key: str) -> None:
        alert = self.alerts.get(dedup_key)
        open_alert = alert is not None and alert.state != "resolved" and alert.routing_key == routing_key
        if action == "trigger":
            if open_alert and alert is not None:
                alert.triggers += 1
            else:
                self.alerts[dedup_key] = Alert(dedup_key, routing_key, "triggered")
        elif open_alert and alert is not None:  # acknowledge / resolve of an unknown or resolved alert is dropped
            alert.state = "acknowledged" if action == "acknowledge" else "resolved"
