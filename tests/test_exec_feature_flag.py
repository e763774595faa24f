"""The feature_flag executor against the fake Kubernetes API: the ConfigMap merge patch, the
`kubectl rollout restart` patch, waiting like `kubectl rollout status`, and errors."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from executors.base import ExecutorError, StepContext, TemporaryExecutorError
from executors.feature_flag import RESTARTED_AT, FeatureFlag, FeatureFlagConfig, _rollout_done
from tests import kube_env
from tests.kube_env import KubeEnv

kube_server, kube = kube_env.kube_server, kube_env.kube  # the shared fixtures (see tests/kube_env.py)

CTX = StepContext("model-svc", 1)
CONFIGMAP = "/api/v1/namespaces/prod/configmaps/model-svc-flags"
DEPLOYMENT = "/apis/apps/v1/namespaces/prod/deployments/model-svc"


def _executor(env: KubeEnv, **config: Any) -> FeatureFlag:
    settings = {"configmap": "model-svc-flags", "namespace": "prod", "key": "FEATURE_ENABLE_NEW", "value": "false",
                "restart": "deployment/model-svc", "timeout": "2s", **config}
    return FeatureFlag(FeatureFlagConfig.model_validate(settings), env.client())


def _seed(env: KubeEnv) -> None:
    env.fake.seed_configmap("prod", "model-svc-flags", {"FEATURE_ENABLE_NEW": "true", "OTHER": "1"})
    env.fake.seed_deployment("prod", "model-svc", "model-svc:v3")


def test_flips_the_key_then_restarts_like_kubectl_and_waits_for_the_rollout(kube: KubeEnv) -> None:
    _seed(kube)
    kube.fake.controller_delay = 0.2  # the Deployment controller lags: the executor must wait for it
    executor = _executor(kube)
    plan = executor.plan(context=CTX)
    assert plan.command == (
        "kubectl patch configmap model-svc-flags -n prod --type merge -p '{\"data\":{\"FEATURE_ENABLE_NEW\":\"false\"}}'"
        " && kubectl rollout restart deployment/model-svc -n prod && kubectl rollout status deployment/model-svc -n prod")
    assert [(c.resource, c.field, c.old, c.new) for c in plan.changes] == [
        ("ConfigMap prod/model-svc-flags", "data.FEATURE_ENABLE_NEW", "true", "false"),
        ("Deployment prod/model-svc", f"spec.template.metadata.annotations[{RESTARTED_AT}]", "unset",
         "the time of the restart")]
    assert kube.fake.writes() == []

    outcome = executor.execute(plan=plan, context=CTX)

    (flag, restart) = kube.fake.writes()
    assert (flag.method, flag.path, flag.content_type, flag.body) == (
        "PATCH", CONFIGMAP, "application/merge-patch+json", {"data": {"FEATURE_ENABLE_NEW": "false"}})
    assert (restart.method, restart.path, restart.content_type) == (
        "PATCH", DEPLOYMENT, "application/strategic-merge-patch+json")
    at = restart.body["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT]
    assert restart.body == {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", at)  # RFC 3339, as kubectl writes it
    deployment = kube.fake.get("deployments", "prod", "model-svc")
    assert deployment["status"]["observedGeneration"] == deployment["metadata"]["generation"] == 2
    assert outcome.ok and outcome.data["generation"] == 2 and outcome.data["restarted_at"] == at
    assert kube.fake.get("configmaps", "prod", "model-svc-flags")["data"] == {"FEATURE_ENABLE_NEW": "false",
                                                                            "OTHER": "1"}
    assert "stays 'false'" in outcome.freeze_note


def test_a_key_already_at_the_value_is_not_patched_but_the_restart_still_happens(kube: KubeEnv) -> None:
    _seed(kube)
    kube.fake.seed_configmap("prod", "model-svc-flags", {"FEATURE_ENABLE_NEW": "false"})
    executor = _executor(kube)
    plan = executor.plan(context=CTX)
    assert [c.resource for c in plan.changes] == ["Deployment prod/model-svc"]
    assert executor.execute(plan=plan, context=CTX).ok
    assert [r.path for r in kube.fake.writes()] == [DEPLOYMENT]


def test_without_restart_only_the_configmap_changes(kube: KubeEnv) -> None:
    _seed(kube)
    executor = _executor(kube, restart=None)
    plan = executor.plan(context=CTX)
    assert "rollout restart" not in plan.command
    outcome = executor.execute(plan=plan, context=CTX)
    assert outcome.ok and [r.path for r in kube.fake.writes()] == [CONFIGMAP]


def test_refuses_to_overwrite_a_value_changed_since_the_plan(kube: KubeEnv) -> None:
    _seed(kube)
    executor = _executor(kube)
    plan = executor.plan(context=CTX)
    kube.fake.seed_configmap("prod", "model-svc-flags", {"FEATURE_ENABLE_NEW": "partial"})
    with pytest.raises(ExecutorError, match="changed to 'partial' since the plan"):
        executor.execute(plan=plan, context=CTX)
    assert kube.fake.writes() == []


def test_a_409_on_the_configmap_is_retried(kube: KubeEnv) -> None:
    _seed(kube)
    kube.fake.fail("PATCH", "/configmaps/model-svc-flags$", 409, times=2)
    executor = _executor(kube)
    assert executor.execute(plan=executor.plan(context=CTX), context=CTX).ok
    assert [r.path for r in kube.fake.writes()] == [CONFIGMAP] * 3 + [DEPLOYMENT]


def test_a_restart_that_never_rolls_out_times_out_naming_what_is_missing(kube: KubeEnv) -> None:
    _seed(kube)
    executor = _executor(kube, timeout="300ms")
    plan = executor.plan(context=CTX)
    with kube.fake.held_controllers(), pytest.raises(ExecutorError) as raised:
        executor.execute(plan=plan, context=CTX)
    assert "restart of Deployment prod/model-svc: not confirmed within 0.3s" in str(raised.value)
    assert "observedGeneration 1 behind generation 2" in str(raised.value)


def test_500_forever_and_404_are_clear(kube: KubeEnv) -> None:
    _seed(kube)
    kube.fake.fail("GET", "/configmaps/", 500, times=None)
    with pytest.raises(TemporaryExecutorError, match="reading ConfigMap prod/model-svc-flags: .*500.*gave up after 4"):
        _executor(kube).plan(context=CTX)
    kube.fake.reset()
    kube.fake.seed_configmap("prod", "model-svc-flags", {"FEATURE_ENABLE_NEW": "true"})
    with pytest.raises(ExecutorError, match='reading Deployment prod/model-svc: not found .*"model-svc" not found'):
        _executor(kube).plan(context=CTX)


def test_config_errors_are_clear() -> None:
    base = {"configmap": "flags", "key": "FEATURE_ENABLE_NEW", "value": "false"}
    with pytest.raises(ValidationError, match='ConfigMap values are strings: quote it, value: "false"'):
        FeatureFlagConfig.model_validate({**base, "value": False})
    with pytest.raises(ValidationError, match="expected deployment/<name>"):
        FeatureFlagConfig.model_validate({**base, "restart": "statefulset/model-svc"})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        FeatureFlagConfig.model_validate({**base, "restrat": "deployment/model-svc"})
    assert FeatureFlagConfig.model_validate({**base, "restart": "deploy/model-svc"}).deployment == "model-svc"


def test_a_deployment_past_its_progress_deadline_fails_at_once(kube: KubeEnv) -> None:
    _seed(kube)
    deployment = kube.fake.get("deployments", "prod", "model-svc")
    deployment["status"]["conditions"][1].update(status="False", reason="ProgressDeadlineExceeded",
                                                 message='ReplicaSet "model-svc-7d9" has timed out progressing.')
    kube.fake.put_object("deployments", deployment)
    executor = _executor(kube, restart=None)
    assert executor.execute(plan=executor.plan(context=CTX), context=CTX).ok  # no restart, no wait
    stuck = dict(deployment, metadata={**deployment["metadata"], "generation": 2})
    assert _rollout_done(deployment, 2) == "observedGeneration 1 behind generation 2"  # an old condition is not news
    stuck["status"] = {**deployment["status"], "observedGeneration": 2}
    with pytest.raises(ExecutorError, match="exceeded its progress deadline: ReplicaSet .* has timed out"):
        _rollout_done(stuck, 2)
