"""Drills (bot.incidents.drills) against a real MLflow server and a real store: a dry-run drill changes nothing,
records its planning and posts one line; a failing one mentions the approvers; a staging drill runs only when
the one authorization rule allows it; the policy's drill fields are checked with file:line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bot.incidents.approvers import Approvers
from bot.incidents.authorization import Authorization
from bot.incidents.drills import DrillRunner
from bot.incidents.runner import Runner
from bot.infra import metrics
from bot.infra.actors import AUTO_ACTOR
from bot.infra.prom import Prometheus
from bot.infra.store import Store
from bot.slo.policy import Service
from bot.slo.policy_file import PolicyError, parse_policy
from executors.registry import Clients, default_registry
from sandbox.model_service import seed_registry

APPROVER, STRANGER = "U0APPROVER", "U0STRANGER"


def policy_text(model: str, drill: str = "") -> str:
    return f"""
services:
  model-svc:
    channel: C0MODELSVC
    approvers: [{APPROVER}]
    model: {model}
    slos:
      - {{name: auc, kind: quality, query: 'min(model_auc)', below: 0.8}}
    rollback:
      - mlflow_alias: {{model: {model}}}
    promote: {{healthy_for: 1m}}
{drill}"""


def service(model: str, drill: str = "") -> Service:
    return parse_policy(policy_text(model, drill)).services["model-svc"]


@pytest.fixture
def runner_for(tmp_path: Path, mlflow_client: MlflowClient) -> tuple[Store, Runner]:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    return store, Runner(default_registry(), Clients(mlflow=mlflow_client), store)


def drills(store: Store, runner: Runner, said: list[tuple[str, str]]) -> DrillRunner:
    authz = Authorization(Approvers(lambda group: [], store=store))
    # Prometheus is only read by a staging drill's verification; nothing listens on port 9.
    return DrillRunner(store=store, runner=runner, prom=Prometheus("http://127.0.0.1:9", timeout=1), authz=authz,
                       say=lambda channel, text: said.append((channel, text)), mention=lambda _: f"<@{APPROVER}>")


def test_a_dry_run_drill_plans_everything_changes_nothing_and_is_stored(
        runner_for: tuple[Store, Runner], mlflow_client: MlflowClient, unique_model: str) -> None:
    store, runner = runner_for
    v1, v2 = seed_registry(mlflow_client, unique_model, versions=2)
    mlflow_client.set_registered_model_alias(unique_model, "champion", v2)  # just promoted
    mlflow_client.set_registered_model_alias(unique_model, "previous_champion", v1)
    said: list[tuple[str, str]] = []
    before = metrics.DRILLS.labels(service="model-svc", mode="dry_run", result="ok")._value.get()

    drill = drills(store, runner, said).drill(service(unique_model), trigger="promotion", actor=AUTO_ACTOR,
                                              version=v2, baseline=v1)

    assert drill.ok and (drill.steps_planned, drill.steps_total, drill.mode) == (1, 1, "dry_run")
    assert drill.planning_seconds >= 0 and drill.recover_seconds is None
    ((channel, line),) = said
    assert channel == "C0MODELSVC"
    assert re.fullmatch(rf":white_check_mark: Drill after v{v2}'s promotion: rollback ready, 1 step planned in "
                        rf"(\d+ ms|\d+\.\d s): champion v{v2} → v{v1}", line), line
    assert "<@" not in line
    assert mlflow_client.get_model_version_by_alias(unique_model, "champion").version == v2  # nothing moved
    assert [d.id for d in store.recent_drills("model-svc")] == [drill.id]
    assert store.last_drills(["model-svc"])["model-svc"].summary == line
    assert metrics.DRILLS.labels(service="model-svc", mode="dry_run", result="ok")._value.get() == before + 1


def test_a_failing_drill_says_what_is_broken_and_mentions_the_approvers(
        runner_for: tuple[Store, Runner], mlflow_client: MlflowClient, unique_model: str) -> None:
    store, runner = runner_for
    (v1,) = seed_registry(mlflow_client, unique_model, versions=1)
    mlflow_client.set_registered_model_alias(unique_model, "champion", v1)  # no previous_champion: no way back
    said: list[tuple[str, str]] = []

    drill = drills(store, runner, said).drill(service(unique_model), trigger="command", actor=APPROVER)

    assert not drill.ok and (drill.steps_planned, drill.steps_total) == (0, 1)
    line = said[0][1]
    assert line.startswith(":x: Drill of *model-svc* on request: rollback NOT ready, 0 of 1 step planned")
    assert "1. mlflow_alias:" in line and "previous_champion" in line
    assert f"<@{APPROVER}>: the way back is broken before anyone needs it." in line
    assert store.recent_drills("model-svc")[0].detail["problems"][0].startswith("1. mlflow_alias:")


def test_a_staging_drill_runs_only_when_the_authorization_rule_allows_it(
        runner_for: tuple[Store, Runner], mlflow_client: MlflowClient, unique_model: str) -> None:
    store, runner = runner_for
    v1, v2 = seed_registry(mlflow_client, unique_model, versions=2)
    for alias, version in (("champion", v2), ("previous_champion", v1), ("staging", v2), ("previous_staging", v1)):
        mlflow_client.set_registered_model_alias(unique_model, alias, version)
    staged = service(unique_model, f"""    drill:
      on_promotion: false
      rollback: [{{mlflow_alias: {{model: {unique_model}, alias: staging, to: previous_staging}}}}]
""")
    said: list[tuple[str, str]] = []
    runs = drills(store, runner, said)
    authz = runs.authz

    assert authz.may_drill(staged, AUTO_ACTOR) == (False, "drills after promotions are off (drill.on_promotion: false)")
    assert not authz.may_drill(staged, STRANGER)[0]
    assert authz.may_drill(service(unique_model), APPROVER)[0] is False  # no staging plan: nothing to run for real

    refused = runs.drill(staged, trigger="promotion", actor=AUTO_ACTOR, version=v2, baseline=v1)
    assert not refused.ok and refused.mode == "staging"
    assert "Staging drill failed: not run: drills after promotions are off" in said[-1][1]
    assert mlflow_client.get_model_version_by_alias(unique_model, "staging").version == v2  # never touched


def test_drill_policy_fields_and_their_errors(unique_model: str) -> None:
    plain = service(unique_model)
    assert plain.drills_on_promotion and plain.drill.rollback is None and plain.targets.recover == 300.0
    off = service(unique_model, "    drill: {on_promotion: false}\n")
    assert not off.drills_on_promotion

    with pytest.raises(PolicyError) as caught:
        parse_policy(policy_text(unique_model, "    drill:\n      restore: true\n"), "policy.yaml")
    assert str(caught.value).startswith("policy.yaml:13: services.model-svc.drill.restore: 'restore:' is for a "
                                        "staging drill; add 'rollback:', the staging plan it runs")

    argo = "    drill:\n      rollback: [{argo_rollouts: {rollout: r}}]\n      restore: true\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy(policy_text(unique_model, argo), "policy.yaml")
    assert str(caught.value).startswith("policy.yaml:13: services.model-svc.drill.rollback[0]: 'restore: true' "
                                        "moves each step back to where it was, which argo_rollouts cannot do; "
                                        "restorable steps: mlflow_alias, helm")

    with pytest.raises(PolicyError, match=r"kind"):
        parse_policy(policy_text(unique_model).replace("kind: quality", "kind: accuracy"))
