"""The argo_rollouts executor against the fake Kubernetes API through the real client: the exact requests
the kubectl plugin sends, the promote --full hazard, pins, error mapping and the read-back."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client
from pydantic import ValidationError

from executors.argo_rollouts import SPEC, ArgoRollouts, ArgoRolloutsConfig, _refuse_unsafe_promote
from executors.base import ExecutorError, StepContext, TemporaryExecutorError
from executors.kube import Kube, Ref
from executors.registry import Clients
from sandbox.kube_api import HASH_LABEL, Request
from sandbox.servers import free_port
from tests import kube_env
from tests.kube_env import KubeEnv

kube_server, kube = kube_env.kube_server, kube_env.kube  # the shared fixtures (see tests/kube_env.py)

CTX = StepContext("model-svc", 1)
IMAGES = ["model-svc:v1", "model-svc:v2", "model-svc:v3"]
ROLLOUT = "/apis/argoproj.io/v1alpha1/namespaces/prod/rollouts/model-svc"
MERGE, JSON_PATCH = "application/merge-patch+json", "application/json-patch+json"


def _executor(env: KubeEnv, **config: Any) -> ArgoRollouts:
    settings = {"rollout": "model-svc", "namespace": "prod", "timeout": "2s", **config}
    return ArgoRollouts(ArgoRolloutsConfig.model_validate(settings), env.client())


def _hash_of(env: KubeEnv, revision: int) -> str:
    rss = env.fake.objects("replicasets", "prod")
    return next(rs["metadata"]["labels"][HASH_LABEL] for rs in rss
                if rs["metadata"]["annotations"]["rollout.argoproj.io/revision"] == str(revision))


def _template(env: KubeEnv, revision: int) -> dict[str, Any]:
    """What the plugin puts into spec.template: the ReplicaSet's template without the hash label."""
    rs = env.fake.get("replicasets", "prod", f"model-svc-{_hash_of(env, revision)}")
    template = copy.deepcopy(rs["spec"]["template"])
    del template["metadata"]["labels"][HASH_LABEL]
    return template


def _writes(env: KubeEnv) -> list[tuple[str, str, str | None, Any]]:
    return [(r.method, r.path, r.content_type, r.body) for r in env.fake.writes()]


ABORT = ("PATCH", f"{ROLLOUT}/status", MERGE, {"status": {"abort": True}})
PROMOTE_FULL = ("PATCH", f"{ROLLOUT}/status", MERGE, {"status": {"promoteFull": True}})


def _undo(template: dict[str, Any]) -> tuple[str, str, str, Any]:
    return ("PATCH", ROLLOUT, JSON_PATCH, [{"op": "replace", "path": "/spec/template", "value": template}])


def test_undo_to_stable_sends_abort_then_the_plugins_json_patch(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    executor = _executor(kube)
    plan = executor.plan(context=CTX)
    assert plan.command == ("kubectl argo rollouts abort model-svc -n prod && "
                            "kubectl argo rollouts undo model-svc -n prod --to-revision=2")
    assert plan.pin == _hash_of(kube, 2) and plan.data["steps"] == ["abort", "undo"] and not plan.noop
    assert [(c.field, c.old, c.new) for c in plan.changes] == [
        ("status.abort", "false", "true"),
        ("spec.template", "revision 3 (model-svc:v3)", "revision 2 (model-svc:v2)")]
    assert all(c.resource == "Rollout prod/model-svc" for c in plan.changes)
    assert kube.fake.writes() == []  # planning changes nothing
    assert kube.fake.requests("GET", "replicasets$")[-1].query == {"labelSelector": "app=model-svc"}
    v2 = _template(kube, 2)

    outcome = executor.execute(plan=plan, context=CTX)

    assert _writes(kube) == [ABORT, _undo(v2)]  # no promote --full: the target is the stable ReplicaSet
    assert outcome.ok and outcome.data["phase"] == "Healthy"
    assert (outcome.data["canary_weight"], outcome.data["stable_weight"]) == (0, 100)
    assert outcome.traffic_to_bad == 0
    assert "v3 is gone from spec.template" in outcome.freeze_note
    rollout = kube.fake.get("rollouts", "prod", "model-svc")
    assert rollout["spec"]["template"]["spec"]["containers"][0]["image"] == "model-svc:v2"
    assert "revision" not in outcome.data  # that key is the git revision an argocd step would sync


def test_undo_to_an_older_revision_promotes_full_only_after_the_controller_sees_the_undo(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    kube.fake.controller_delay = 0.2  # the controller lags: promote --full must wait for observedGeneration
    executor = _executor(kube, to_revision=1)
    plan = executor.plan(context=CTX)
    assert plan.command.endswith("undo model-svc -n prod --to-revision=1 && "
                                 "kubectl argo rollouts promote model-svc -n prod --full")
    assert plan.data["steps"] == ["abort", "undo", "promote_full"] and plan.pin == _hash_of(kube, 1)

    outcome = executor.execute(plan=plan, context=CTX)

    assert _writes(kube) == [ABORT, _undo(_template(kube, 4)), PROMOTE_FULL]  # v1 was revived as revision 4
    requests: list[Request] = kube.fake.requests()
    undo_at = next(i for i, r in enumerate(requests) if r.content_type == JSON_PATCH)
    promote_at = next(i for i, r in enumerate(requests) if r.body == PROMOTE_FULL[3])
    assert any(r.method == "GET" for r in requests[undo_at:promote_at])  # read back before promoting
    rollout = kube.fake.get("rollouts", "prod", "model-svc")
    assert rollout["status"]["stableRS"] == plan.data["target_hash"] and rollout["status"]["phase"] == "Healthy"
    assert outcome.ok and "promote --full" in outcome.data["sent"]


def test_refuses_a_to_revision_that_is_the_version_being_rolled_back(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    with pytest.raises(ExecutorError, match="the version being rolled back"):
        _executor(kube, to_revision=3).plan(context=CTX)
    assert kube.fake.writes() == []


def test_never_promotes_full_while_spec_template_holds_the_bad_version(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    executor = _executor(kube, to_revision=1)
    _, rss = executor._state()
    older = next(rs for rs in rss if rs["metadata"]["labels"][HASH_LABEL] == _hash_of(kube, 1))
    with pytest.raises(ExecutorError, match="refusing promote --full: spec.template holds model-svc:v3"):
        executor._promote_full(older, [])
    with pytest.raises(ExecutorError, match="promote --full while spec.template still holds"):
        _refuse_unsafe_promote(["abort", "promote_full"], False, Ref("rollouts", "prod", "model-svc"))
    assert kube.fake.writes() == []


def test_abort_leaves_the_rollout_aborted_with_all_traffic_on_stable(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    executor = _executor(kube, action="abort")
    plan = executor.plan(context=CTX)
    assert plan.command == "kubectl argo rollouts abort model-svc -n prod" and plan.pin == _hash_of(kube, 2)

    outcome = executor.execute(plan=plan, context=CTX)

    assert _writes(kube) == [ABORT]
    assert outcome.ok and outcome.data["phase"] == "Degraded" and outcome.data["stable_weight"] == 100
    assert "stays aborted" in outcome.freeze_note and "never does" in outcome.freeze_note
    again = executor.plan(context=StepContext("model-svc", 1, pin=plan.pin))
    assert again.noop and executor.execute(plan=again, context=CTX).ok
    assert _writes(kube) == [ABORT]  # already aborted: nothing sent twice


def test_abort_refuses_when_the_stable_revision_moved_since_the_warning(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    with pytest.raises(ExecutorError, match="stable ReplicaSet changed since the warning"):
        _executor(kube, action="abort").plan(context=StepContext("model-svc", 1, pin=_hash_of(kube, 1)))


def test_pins_choose_the_target_by_hash_or_by_revision_number(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    executor = _executor(kube)
    by_hash = executor.plan(context=StepContext("model-svc", 1, pin=_hash_of(kube, 1)))
    by_number = executor.plan(context=StepContext("model-svc", 1, pin="1"))
    assert by_hash.data["target_revision"] == by_number.data["target_revision"] == 1
    assert by_hash.pin == by_number.pin == _hash_of(kube, 1)
    with pytest.raises(ExecutorError, match="pinned ReplicaSet .* no longer exists"):
        executor.plan(context=StepContext("model-svc", 1, pin="bbbbbbbbbb"))
    with pytest.raises(ExecutorError, match="unable to find revision 7"):
        executor.plan(context=StepContext("model-svc", 1, pin="7"))


def test_a_pinned_plan_after_the_undo_is_a_noop(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    executor = _executor(kube)
    pin = executor.plan(context=CTX).pin
    executor.execute(plan=executor.plan(context=StepContext("model-svc", 1, pin=pin)), context=CTX)
    writes = len(kube.fake.writes())
    again = executor.plan(context=StepContext("model-svc", 1, pin=pin))  # the stable RS is revision 4 now
    assert again.noop and again.data["target_revision"] == 4
    assert executor.execute(plan=again, context=CTX).ok and len(kube.fake.writes()) == writes


def test_refuses_when_spec_template_changed_since_the_plan(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    executor = _executor(kube)
    plan = executor.plan(context=CTX)
    someone = [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "model-svc:v4"}]
    client.CustomObjectsApi(kube.api_client).patch_namespaced_custom_object(
        "argoproj.io", "v1alpha1", "prod", "rollouts", "model-svc", someone, _content_type=JSON_PATCH)
    kube.fake.clear_requests()
    with pytest.raises(ExecutorError, match="spec.template changed since the plan"):
        executor.execute(plan=plan, context=CTX)
    assert kube.fake.writes() == []


def test_a_409_is_retried_and_the_rollback_completes(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    kube.fake.fail("PATCH", r"/rollouts/model-svc/status$", 409, times=1)
    executor = _executor(kube)
    outcome = executor.execute(plan=executor.plan(context=CTX), context=CTX)
    assert outcome.ok and outcome.data["phase"] == "Healthy"
    assert [r.body for r in kube.fake.writes()][:2] == [{"status": {"abort": True}}] * 2  # failed once, sent again


def test_a_500_that_never_stops_is_a_clear_temporary_failure_without_promote(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    kube.fake.fail("PATCH", r"/rollouts/model-svc$", 500, times=None)
    executor = _executor(kube, to_revision=1)
    plan = executor.plan(context=CTX)
    with pytest.raises(TemporaryExecutorError) as raised:
        executor.execute(plan=plan, context=CTX)
    message = str(raised.value)
    assert "patching Rollout prod/model-svc" in message and "500" in message and "gave up after 4 attempts" in message
    assert [r.content_type for r in kube.fake.writes()] == [MERGE] + [JSON_PATCH] * 4
    assert all(r.body != PROMOTE_FULL[3] for r in kube.fake.writes())


def test_a_missing_rollout_is_a_clear_permanent_failure(kube: KubeEnv) -> None:
    with pytest.raises(ExecutorError) as raised:
        _executor(kube, rollout="missing").plan(context=CTX)
    assert not isinstance(raised.value, TemporaryExecutorError) and not raised.value.retryable
    assert "reading Rollout prod/missing: not found (404)" in str(raised.value)
    assert 'rollouts.argoproj.io "missing" not found' in str(raised.value)


def test_forbidden_names_rbac(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    kube.fake.fail("GET", r"/replicasets$", 403, message='replicasets.apps is forbidden: User "bot" cannot list')
    with pytest.raises(ExecutorError, match="forbidden: the bot's service account lacks RBAC permission"):
        _executor(kube).plan(context=CTX)


def test_weight_that_never_returns_to_zero_times_out_clearly(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    executor = _executor(kube, action="abort", timeout="300ms")
    plan = executor.plan(context=CTX)
    with kube.fake.held_controllers(), pytest.raises(ExecutorError) as raised:
        executor.execute(plan=plan, context=CTX)
    assert "abort: not confirmed within 0.3s" in str(raised.value)
    assert "canary weight 20, stable weight 80" in str(raised.value)


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValidationError, match="to_revision only applies to action: undo"):
        ArgoRolloutsConfig.model_validate({"rollout": "m", "action": "abort", "to_revision": 2})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ArgoRolloutsConfig.model_validate({"rollout": "m", "actoin": "undo"})
    with pytest.raises(ValidationError, match="invalid duration 'soon'"):
        ArgoRolloutsConfig.model_validate({"rollout": "m", "timeout": "soon"})
    assert ArgoRolloutsConfig.model_validate({"rollout": "m", "timeout": "1m30s"}).timeout == 90


def test_loads_credentials_from_kubeconfig_on_first_use(kube: KubeEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    executor = SPEC.build(ArgoRolloutsConfig(rollout="model-svc", namespace="prod"), Clients())
    assert executor.plan(context=CTX).data["target_revision"] == 2


def test_abort_falls_back_to_the_main_resource_when_status_is_404(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    kube.fake.fail("PATCH", r"/rollouts/model-svc/status$", 404, times=1)
    executor = _executor(kube, action="abort", timeout="200ms")
    plan = executor.plan(context=CTX)
    with pytest.raises(ExecutorError, match="not confirmed"):  # this fake has the subresource, so status is kept
        executor.execute(plan=plan, context=CTX)
    assert _writes(kube) == [ABORT, ("PATCH", ROLLOUT, MERGE, {"status": {"abort": True}})]


def test_an_unreachable_api_server_is_a_temporary_failure(kube: KubeEnv) -> None:
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"
    configuration.retries = 0
    executor = ArgoRollouts(ArgoRolloutsConfig(rollout="model-svc", namespace="prod"),
                            Kube(client.ApiClient(configuration), attempts=2, backoff=0.01))
    with pytest.raises(TemporaryExecutorError, match="reading Rollout prod/model-svc: cannot reach the Kubernetes API"):
        executor.plan(context=CTX)
