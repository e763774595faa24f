"""Shared pytest fixtures for the real-server tests: the Prometheus binary, one MLflow server per session.

The launchers themselves live in bot.sandbox.servers (the local demo uses them too); this file only scopes
them. The MLflow server takes ~6 s to start, so the whole session shares one; tests isolate themselves with
`unique_model` instead of sharing registered-model state.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from uuid import uuid4

import pytest
from mlflow.tracking import MlflowClient

from bot.sandbox.servers import MlflowServer, prometheus_binary


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
