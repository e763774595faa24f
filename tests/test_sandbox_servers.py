"""Real-server test of the sandbox: MLflow alias flip -> simulated model service -> Prometheus p95.

Checks that sandbox (the launchers and the model service simulator) behaves as the story tests and the
demo rely on: the champion alias decides the served version, and a real Prometheus sees the latency change
within seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

from mlflow.tracking import MlflowClient
from prometheus_api_client import PrometheusConnect

from sandbox.model_service import ModelServiceSimulator, VersionProfile, alias_reader, seed_registry
from sandbox.servers import PrometheusServer

P95 = 'histogram_quantile(0.95, sum by (le) (rate(model_request_latency_seconds_bucket{service="model-svc"}[5s])))'
FAST = VersionProfile(latency_seconds=0.05, error_rate=0.0, auc=0.91)
SLOW = VersionProfile(latency_seconds=0.4, error_rate=0.0, auc=0.90)


def _wait_for_p95(prom: PrometheusConnect, accept: float, *, above: bool, timeout: float) -> float:
    """Poll the p95 until it is above/below `accept`; return it, or fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: float | None = None
    while time.monotonic() < deadline:
        result = prom.custom_query(P95)
        if result:
            last = float(result[0]["value"][1])
            if (last > accept) if above else (last < accept):
                return last
        time.sleep(0.25)
    raise AssertionError(f"p95 never went {'above' if above else 'below'} {accept} in {timeout}s (last {last})")


def test_alias_flip_reaches_prometheus(
    tmp_path: Path, prometheus_bin: str, mlflow_client: MlflowClient, unique_model: str
) -> None:
    v1, v2 = seed_registry(mlflow_client, unique_model, versions=2)
    mlflow_client.set_registered_model_alias(unique_model, "champion", v1)

    simulator = ModelServiceSimulator(
        "model-svc",
        champion=alias_reader(mlflow_client, unique_model),
        profiles={v1: FAST, v2: SLOW},
        default=SLOW,
    )
    with (
        simulator,
        PrometheusServer(tmp_path / "prom", [simulator.target], "1s", binary=prometheus_bin) as prometheus,
    ):
        assert simulator.switches[0][1] == v1
        prometheus.wait_for_series(f'model_serving_version{{service="model-svc",version="{v1}"}} == 1')
        prom = PrometheusConnect(prometheus.url, disable_ssl=True)
        assert _wait_for_p95(prom, 0.1, above=False, timeout=15) < 0.1

        flipped_at = time.time()
        mlflow_client.set_registered_model_alias(unique_model, "champion", v2)
        p95 = _wait_for_p95(prom, 0.25, above=True, timeout=15)

        assert p95 > 0.25
        switched_at, version = simulator.switches[-1]
        assert version == v2
        assert flipped_at <= switched_at < flipped_at + 2
        assert [v for _, v in simulator.switches] == [v1, v2]
