"""The mlflow_alias executor and the promotion gate against a real `mlflow server` (session fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bot.infra.model_registry import ModelRegistry
from bot.infra.store import Store
from bot.slo.gate import Gate
from executors.base import ExecutorError, StepContext
from executors.mlflow_alias import MlflowAlias, MlflowAliasConfig
from sandbox.model_service import seed_registry
from tests.stubs import Clock, policy


@pytest.fixture
def versions(mlflow_client: MlflowClient, unique_model: str) -> list[str]:
    found = seed_registry(mlflow_client, unique_model, versions=3)
    mlflow_client.set_registered_model_alias(unique_model, "previous_champion", found[0])
    mlflow_client.set_registered_model_alias(unique_model, "champion", found[1])
    return found


def _executor(client: MlflowClient, model: str) -> MlflowAlias:
    return MlflowAlias(MlflowAliasConfig(model=model), client)


def _champion(client: MlflowClient, model: str) -> str:
    return str(client.get_model_version_by_alias(model, "champion").version)


def test_plan_describes_the_flip_without_making_it(mlflow_client: MlflowClient, unique_model: str,
                                                   versions: list[str]) -> None:
    v1, v2, _ = versions
    plan = _executor(mlflow_client, unique_model).plan(context=StepContext("model-svc", 1))
    assert [(c.resource, c.old, c.new) for c in plan.changes] == [(f"models:/{unique_model}@champion", v2, v1)]
    assert plan.pin == v1 and not plan.noop
    assert plan.data["to_run_id"] == mlflow_client.get_model_version(unique_model, v1).run_id
    assert "set_registered_model_alias" in plan.command
    assert _champion(mlflow_client, unique_model) == v2


def test_execute_flips_and_reads_back(mlflow_client: MlflowClient, unique_model: str, versions: list[str]) -> None:
    v1, v2, _ = versions
    executor = _executor(mlflow_client, unique_model)
    context = StepContext("model-svc", 1)
    outcome = executor.execute(plan=executor.plan(context=context), context=context)
    assert outcome.ok and outcome.data["from_version"] == v2 and outcome.data["to_version"] == v1
    assert _champion(mlflow_client, unique_model) == v1
    again = executor.execute(plan=executor.plan(context=context), context=context)
    assert again.ok and _champion(mlflow_client, unique_model) == v1  # idempotent: already there


def test_pinned_baseline_wins_over_a_moved_alias(mlflow_client: MlflowClient, unique_model: str,
                                                 versions: list[str]) -> None:
    v1, _, v3 = versions
    mlflow_client.set_registered_model_alias(unique_model, "previous_champion", v3)
    plan = _executor(mlflow_client, unique_model).plan(context=StepContext("model-svc", 1, pin=v1))
    assert plan.data["to_version"] == v1


def test_refuses_to_overwrite_a_change_made_since_the_plan(mlflow_client: MlflowClient, unique_model: str,
                                                           versions: list[str]) -> None:
    _, _, v3 = versions
    executor = _executor(mlflow_client, unique_model)
    context = StepContext("model-svc", 1)
    plan = executor.plan(context=context)
    mlflow_client.set_registered_model_alias(unique_model, "champion", v3)
    with pytest.raises(ExecutorError, match="moved to version"):
        executor.execute(plan=plan, context=context)
    assert _champion(mlflow_client, unique_model) == v3


def test_a_missing_alias_is_a_clear_executor_error(mlflow_client: MlflowClient, unique_model: str,
                                                   versions: list[str]) -> None:
    mlflow_client.delete_registered_model_alias(unique_model, "previous_champion")
    with pytest.raises(ExecutorError, match="previous_champion"):
        _executor(mlflow_client, unique_model).plan(context=StepContext("model-svc", 1))


def test_gate_promotes_only_when_healthy_unfrozen_and_unblocked(tmp_path: Path, mlflow_client: MlflowClient,
                                                                unique_model: str, versions: list[str]) -> None:
    v1, v2, v3 = versions
    mlflow_client.set_registered_model_alias(unique_model, "candidate", v3)
    clock = Clock()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    registry = ModelRegistry(mlflow_client)
    gate = Gate(store, registry, clock=clock)
    svc = policy(model=unique_model, healthy_for="10s").services["model-svc"]

    assert not gate.consider(svc).promoted  # never healthy yet
    store.set_healthy_since(svc.name, clock.now)
    clock.tick(5)
    assert "healthy for 5s" in gate.consider(svc).reason
    clock.tick(5)

    registry.block(unique_model, v3, incident_id=7)
    blocked = gate.consider(svc)
    assert not blocked.promoted and "rollback_blocked" in blocked.reason
    assert mlflow_client.get_model_version(unique_model, v3).tags["rollback_incident"] == "7"

    store.freeze(service=svc.name, reason="rollback incident #7", actor="rollback-bot")
    mlflow_client.set_registered_model_alias(unique_model, "candidate", v1)
    assert "frozen" in gate.consider(svc).reason
    store.unfreeze(svc.name)

    decision = gate.consider(svc)
    assert decision.promoted and decision.version == v1 and decision.previous == v2
    assert _champion(mlflow_client, unique_model) == v1
    assert str(mlflow_client.get_model_version_by_alias(unique_model, "previous_champion").version) == v2
    assert store.healthy_since(svc.name) is None  # the next promotion waits a full healthy_for again
