"""Shared pytest fixtures for the real-server tests: the Prometheus binary, one MLflow server per session,
one PostgreSQL server per session.

The launchers themselves live in sandbox.servers (the local demo uses them too) and tests/pg_env.py;
this file only scopes them. The MLflow server takes ~6 s to start, so the whole session shares one; tests
isolate themselves with `unique_model` instead of sharing registered-model state. Likewise PostgreSQL (~1 s
to start) runs once per session and each test that needs a clean slate gets its own database
(`fresh_postgres_url`, brought to the newest schema with bot.infra.migrations.upgrade, as a Store would do
itself). `stalled_server` is a loopback TCP server that never answers (a hung git server).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from mlflow.tracking import MlflowClient

from bot.infra import migrations
from bot.infra.store import Store
from sandbox.servers import MlflowServer, prometheus_binary
from tests import pg_env


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    """Path of the prometheus binary. Skips locally when it is missing; fails on CI, which installs it."""
    binary = prometheus_binary()
    if binary is None:
        reason = "prometheus binary not on PATH (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is expected to install it")
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One real MLflow tracking/registry server for the whole session, stopped at the end."""
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture
def mlflow_client(mlflow_server: MlflowServer) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)


@pytest.fixture
def unique_model() -> str:
    """A registered-model name no other test uses on the shared server."""
    return f"recommender-{uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server (Debian's package, our own initdb on a free 127.0.0.1 port) for the session:
    the SQLAlchemy URL of a database on it (left empty: no test builds a Store on it; `fresh_postgres_url`'s
    databases are the migrated ones). Skips locally when the binaries are missing; fails on CI, which
    installs them (Makefile's APT_PACKAGES)."""
    bindir = pg_env.find_bindir()
    if bindir is None:
        reason = f"PostgreSQL binaries (initdb, pg_ctl) not found under {pg_env.BIN_GLOB} (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is expected to install them")
        pytest.skip(reason)
    with pg_env.PostgresServer(bindir) as server:
        yield server.url


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A database of its own for one test (CREATE DATABASE with a unique name) at the newest schema (what
    `rollback-bot migrate` does, and a Store at start), dropped afterwards."""
    url = pg_env.create_database(postgres_url)
    try:
        migrations.upgrade(url)
    except BaseException:
        # A failed migration (or an interrupt) must not leave the database behind on the session's server.
        pg_env.drop_database(url)
        raise
    yield url
    pg_env.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database URL of this run, for tests of the store on both engines: a SQLite file, or a fresh database on
    the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return str(request.getfixturevalue("fresh_postgres_url"))


@pytest.fixture
def make_store(url: str) -> Iterator[Callable[..., Store]]:
    """Store(url, ...) for this run's database, one per call (one per replica, as separate processes would have);
    every store made is closed (its pool disposed) afterwards."""
    made: list[Store] = []

    def make(**kwargs: object) -> Store:
        made.append(Store(url, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for store in made:
        store.engine.dispose()


@pytest.fixture
def stalled_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers (a git daemon that hangs)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the listener was closed: the test is over
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    listener.close()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()


@pytest.fixture(scope="session")
def pagerduty_fake() -> Iterator[object]:
    """One HTTPS fake of PagerDuty's Events API v2 per session (sandbox.pagerduty_api.FakePagerDuty, started):
    trust it with REQUESTS_CA_BUNDLE=<fake.ca_file>, point PAGERDUTY_EVENTS_URL at fake.url, and call fake.reset()
    (or use a routing key of your own) so earlier tests' events do not count."""
    from sandbox.pagerduty_api import FakePagerDuty  # here, so the fixture stays an addition at the end of the file

    with FakePagerDuty() as fake:
        yield fake
