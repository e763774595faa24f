"""Regression tests for issue 11, findings 4 and 12: what the HTTP side refuses before anyone is authenticated.

Finding 4: a body over handlers.bodies.MAX_BODY (1 MiB) is a 413 on /slack/events and /alertmanager, and nothing
of it is held: a declared Content-Length over the limit is answered before any body byte is read, a chunked
body is cut off once it passes the limit, and nothing is spooled to a temp file (waitress's default is to
take 1 GiB and spool past 512 KiB). These run the real app (`bot.app.build` through tests/handler_env.py)
under a real waitress server made by `bot.app.http_server`, i.e. with the options `serve` uses, and talk
raw HTTP over a socket so a request can declare a body it never sends. The WSGI app is also called directly
with such environs, to show the routes bound their own reads whatever server runs them. The server's RSS
while refusing a real 300 MiB upload is measured by benchmarks/oversized_body.py, not asserted here.

Finding 12: with SLACK_APP_TOKEN set (Socket Mode), HTTP has no Slack route: a correctly signed slash command
to /slack/events is a 404 and does nothing, while /healthz, /metrics and /alertmanager still answer.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow.tracking import MlflowClient
from waitress.buffers import TempfileBasedBuffer

from bot.app import Runtime, http_server
from handlers.bodies import MAX_BODY
from sandbox.servers import MlflowServer
from sandbox.signing import post_signed, slash_command_body
from sandbox.slack_api import FakeSlackAPI
from tests.handler_env import (
    APPROVER,
    MODEL_CHANNEL,
    MODEL_SVC,
    SECRET,
    HandlerEnv,
    close_waitress,
    seed_models,
    wait_until,
)

AM_TOKEN = "am-limits-token-0123456789"
HUGE = 300 << 20  # the 300 MiB of the audit
ROUTES = ("/slack/events", "/alertmanager")
SETTLE = 0.5  # seconds to let background work (a Bolt worker) finish before asserting that nothing happened
TIMEOUT = 10  # seconds any one socket operation may take


# -- the bench ---------------------------------------------------------------------------------------------
@dataclass
class Served:
    """A runtime's WSGI app under waitress as `serve` configures it; `calls` lists the paths the app was
    called for (waitress calls it only once it has read a whole body)."""

    port: int
    calls: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def served(runtime: Runtime) -> Iterator[Served]:
    app = runtime.wsgi()
    seen: list[str] = []

    def counting(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append(str(environ.get("PATH_INFO")))
        return app(environ, start_response)

    server = http_server(counting, "127.0.0.1", 0, threads=4)
    thread = threading.Thread(target=server.run, name="waitress-limits", daemon=True)
    thread.start()
    runtime.ready.set()
    try:
        yield Served(int(server.effective_port), seen)
    finally:
        close_waitress(server, thread)


@pytest.fixture
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI() as api:
        yield api


@pytest.fixture
def env(tmp_path: Path, slack: FakeSlackAPI, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str) -> Iterator[HandlerEnv]:
    """The handler bench's runtime (not started: each test serves it through `served`), with the
    Alertmanager route on."""
    bench = HandlerEnv(tmp_path, slack, mlflow_client, seed_models(mlflow_client, unique_model),
                       mlflow_url=mlflow_server.url)
    bench.runtime.settings = replace(bench.runtime.settings, alertmanager_token=AM_TOKEN)
    try:
        yield bench
    finally:
        bench.store.engine.dispose()


@pytest.fixture
def spooled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every temp file waitress creates for a buffer (a request body past inbuf_overflow) while the test runs."""
    made: list[str] = []
    original = TempfileBasedBuffer.newfile

    def recording(self: TempfileBasedBuffer) -> Any:
        made.append(type(self).__name__)
        return original(self)

    monkeypatch.setattr(TempfileBasedBuffer, "newfile", recording)
    return made


# -- raw HTTP ----------------------------------------------------------------------------------------------
def head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def chunked(total: int, piece: int = 64 << 10) -> Iterator[bytes]:
    """`total` bytes of body in chunked transfer encoding, then the last chunk."""
    sent = 0
    while sent < total:
        size = min(piece, total - sent)
        yield f"{size:x}\r\n".encode() + b"x" * size + b"\r\n"
        sent += size
    yield b"0\r\n\r\n"


def exchange(port: int, request: bytes, more: Iterable[bytes] = ()) -> int | None:
    """Send `request`, then each piece of `more` until the server answers or stops taking them; the status
    code the server answered, or None when it closed the connection without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        for piece in more:
            if select.select([sock], [], [], 0)[0]:
                break  # an answer (or the close) came before the whole body: stop sending
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break  # the server closed, or stopped reading: what it answered, if anything, is below
        answer = b""
        try:
            while b"\r\n" not in answer:
                data = sock.recv(4096)
                if not data:
                    break
                answer += data
        except ConnectionResetError:
            pass  # reset after the close: whatever came before it is the answer
        except TimeoutError as exc:  # no answer at all: the server is still waiting for the body
            raise AssertionError(f"no answer within {TIMEOUT}s (got {answer[:80]!r})") from exc
    if not answer:
        return None
    return int(answer.split(b" ", 2)[1])


# -- finding 4: bodies over 1 MiB ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ROUTES)
def test_a_declared_300_mib_body_is_a_413_before_any_of_it_is_sent(env: HandlerEnv, spooled: list[str],
                                                                    path: str) -> None:
    """Only the headers and 5 bytes go out: the 413 cannot wait for the 300 MiB, and the app never runs."""
    with served(env.runtime) as server:
        started = time.monotonic()
        status = exchange(server.port, head(path, {"Content-Length": str(HUGE), "Content-Type": "application/json"})
                          + b"hello")
        took = time.monotonic() - started
        assert status == 413, status
        assert took < TIMEOUT
        assert server.calls == []
        assert requests.get(f"{server.url}/healthz", timeout=TIMEOUT).status_code == 200  # still serving
    assert spooled == []


@pytest.mark.parametrize("path", ROUTES)
def test_a_chunked_body_is_cut_off_with_a_413_once_past_1_mib_and_never_spooled(env: HandlerEnv,
                                                                                 spooled: list[str],
                                                                                 path: str) -> None:
    """4 MiB offered chunked, no Content-Length: refused (413, or closed) without the app ever seeing it and
    without a temp file; the default settings would take all of it to disk and hand it to the app."""
    with served(env.runtime) as server:
        status = exchange(server.port, head(path, {"Transfer-Encoding": "chunked"}), chunked(4 * MAX_BODY))
        assert status in (413, None), status
        assert server.calls == []
    assert spooled == []


def test_the_limit_is_exactly_1_mib_and_a_body_under_it_stays_in_memory(env: HandlerEnv,
                                                                        spooled: list[str]) -> None:
    """A body of MAX_BODY bytes reaches the app (an unsigned one is then a 401) without a temp file; one byte
    more is a 413 from waitress, the app not called. The same for a chunked body of MAX_BODY bytes."""
    body = b"x" * MAX_BODY
    with served(env.runtime) as server:
        fits = requests.post(f"{server.url}/slack/events", data=body, timeout=TIMEOUT)
        assert fits.status_code == 401, fits.text
        assert server.calls == ["/slack/events"]
        status = exchange(server.port, head("/slack/events", {"Content-Length": str(MAX_BODY + 1)}) + b"x")
        assert status == 413
        assert server.calls == ["/slack/events"]
        status = exchange(server.port, head("/alertmanager", {"Transfer-Encoding": "chunked",
                                                              "Authorization": f"Bearer {AM_TOKEN}"}),
                          chunked(MAX_BODY // 2))
        assert status == 400  # reached the route: half a MiB of x is not JSON
        assert server.calls == ["/slack/events", "/alertmanager"]
    assert spooled == []


def test_signed_requests_of_normal_size_still_work(env: HandlerEnv, slack: FakeSlackAPI) -> None:
    """Through the same limits: a signed `/rollback help` is acked and answered, an authorized Alertmanager
    webhook is a 200."""
    with served(env.runtime) as server:
        body = slash_command_body(text="help", user_id=APPROVER, channel_id=MODEL_CHANNEL,
                                  response_url=slack.response_url)
        response = post_signed(f"{server.url}/slack/events", SECRET, body, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        answer = wait_until(lambda: next((c for c in slack.calls("response_url") if c.params.get("text")), None),
                            "the answer to /rollback help")
        assert "/rollback" in str(answer.params["text"])
        hook: dict[str, Any] = {
            "version": "4", "status": "firing", "receiver": "rollback-bot", "groupKey": "{}:{}",
            "alerts": [{"status": "firing", "labels": {"alertname": "Up", "service": "no-such-svc"}, "annotations": {},
                        "startsAt": "2024-05-01T10:00:00Z", "endsAt": "", "fingerprint": "f00d", "generatorURL": ""}]}
        alerted = requests.post(f"{server.url}/alertmanager", json=hook, timeout=TIMEOUT,
                                headers={"Authorization": f"Bearer {AM_TOKEN}"})
        assert alerted.status_code == 200, alerted.text
        assert alerted.json()["alerts"][0]["result"] == "ignored_unknown_service"


class Endless:
    """A `wsgi.input` that would give `total` bytes of x, recording how much was asked for and handed out."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.asked: list[int] = []
        self.given = 0

    def read(self, size: int = -1) -> bytes:
        self.asked.append(size)
        n = self.left if size < 0 else min(size, self.left, 4 * MAX_BODY)  # never build 300 MiB here
        self.left -= n
        self.given += n
        return b"x" * n


def call(app: Callable[..., Iterable[bytes]], path: str, **environ: Any) -> tuple[str, bytes]:
    answered: list[str] = []
    body = b"".join(app({"REQUEST_METHOD": "POST", "PATH_INFO": path, **environ},
                        lambda status, headers, exc_info=None: answered.append(status)))
    return answered[0], body


@pytest.mark.parametrize("path", ROUTES)
def test_the_routes_bound_their_own_reads_under_any_server(env: HandlerEnv, path: str) -> None:
    """Called directly (no waitress in front): a declared 300 MiB is a 413 with nothing read; a chunked
    stream without a Content-Length is read only to just past 1 MiB, then a 413."""
    app = env.runtime.wsgi()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {AM_TOKEN}"}
    declared = Endless(HUGE)
    status, _ = call(app, path, CONTENT_LENGTH=str(HUGE), **{"wsgi.input": declared}, **auth)
    assert status.startswith("413"), status
    assert declared.asked == [] and declared.given == 0
    stream = Endless(HUGE)
    status, body = call(app, path, HTTP_TRANSFER_ENCODING="chunked", **{"wsgi.input": stream}, **auth)
    assert status.startswith("413"), status
    assert str(MAX_BODY) in json.loads(body)["error"]
    assert MAX_BODY < stream.given <= MAX_BODY + 1


# -- finding 12: Socket Mode has no HTTP Slack route ---------------------------------------------------------
def test_socket_mode_answers_slack_events_404_and_does_nothing(env: HandlerEnv, slack: FakeSlackAPI) -> None:
    env.runtime.settings = replace(env.runtime.settings, slack_app_token="xapp-1-test")
    with served(env.runtime) as server:
        body = slash_command_body(text=MODEL_SVC, user_id=APPROVER, channel_id=MODEL_CHANNEL,
                                  response_url=slack.response_url)
        response = post_signed(f"{server.url}/slack/events", SECRET, body, timeout=TIMEOUT)
        assert response.status_code == 404, response.text
        assert requests.get(f"{server.url}/healthz", timeout=TIMEOUT).status_code == 200
        assert requests.get(f"{server.url}/metrics", timeout=TIMEOUT).status_code == 200
        unauthorized = requests.post(f"{server.url}/alertmanager", json={}, timeout=TIMEOUT)
        assert unauthorized.status_code == 401  # served (its token guards it), not a 404
        time.sleep(SETTLE)
    assert slack.calls() == []
    assert env.store.recent_incidents() == []
    assert env.store.active_incident(MODEL_SVC) is None
