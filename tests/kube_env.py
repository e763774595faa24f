"""Fixtures for the tests that talk to the fake Kubernetes API (sandbox.kube_api.FakeKube).

`kube_server` starts one FakeKube for the whole session and writes its kubeconfig; `kube` resets it before
each test and hands out a KubeEnv: the fake, a real `kubernetes` ApiClient loaded from that kubeconfig, and
executors.kube.Kube wrappers with tiny backoffs. Test modules take the fixtures by assigning them to names in
their own namespace (`kube_server, kube = kube_env.kube_server, kube_env.kube`), because only the root
conftest may register plugins; the server is a single instance however many modules do that.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import config

from executors.kube import Kube
from sandbox.kube_api import FakeKube

_shared: dict[str, Any] = {}


@dataclass
class KubeEnv:
    fake: FakeKube
    api_client: Any
    kubeconfig: Path

    def client(self, attempts: int = 4) -> Kube:
        """The executors' Kube on the fake, retrying quickly (no timed assertions depend on it)."""
        return Kube(self.api_client, attempts=attempts, backoff=0.01)


@pytest.fixture(scope="session")
def kube_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEnv]:
    """One fake Kubernetes API per session with its kubeconfig and a real ApiClient loaded from it."""
    if "env" not in _shared:
        fake = FakeKube().start()
        kubeconfig = fake.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
        _shared["env"] = KubeEnv(fake, config.new_client_from_config(config_file=str(kubeconfig)), kubeconfig)
    env: KubeEnv = _shared["env"]
    yield env
    env.fake.stop()  # session end; stopping twice (one fixture definition per module) is harmless


@pytest.fixture
def kube(kube_server: KubeEnv) -> KubeEnv:
    """The session's fake, emptied: no objects, no recorded requests, no injected failures, no delay."""
    kube_server.fake.reset()
    kube_server.fake.controller_delay = 0.0
    return kube_server
