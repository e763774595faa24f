"""The fake Kubernetes API (sandbox.kube_api) through the real `kubernetes` client: wire format, Status
errors, patch content types, resourceVersion conflicts, fault injection and the simulated controllers."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox.kube_api import HASH_LABEL, REVISION
from tests import kube_env
from tests.kube_env import KubeEnv

kube_server, kube = kube_env.kube_server, kube_env.kube  # the shared fixtures (see tests/kube_env.py)

ARGO = ("argoproj.io", "v1alpha1")
IMAGES = ["model-svc:v1", "model-svc:v2", "model-svc:v3"]


def _custom(env: KubeEnv) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(env.api_client)


def _rollout(env: KubeEnv) -> dict[str, Any]:
    return _custom(env).get_namespaced_custom_object(*ARGO, "prod", "rollouts", "model-svc")


def _status(exc: ApiException) -> dict[str, Any]:
    return json.loads(exc.body)


def _template(image: str) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": "model-svc"}},
            "spec": {"containers": [{"name": "model-svc", "image": image, "ports": [{"containerPort": 8080}]}]}}


def test_get_and_404_status_like_the_api_server(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    rollout = _rollout(kube)
    assert rollout["kind"] == "Rollout" and rollout["apiVersion"] == "argoproj.io/v1alpha1"
    assert rollout["spec"]["template"]["spec"]["containers"][0]["image"] == "model-svc:v3"
    with pytest.raises(ApiException) as raised:
        _custom(kube).get_namespaced_custom_object(*ARGO, "prod", "rollouts", "nope")
    assert raised.value.status == 404
    assert _status(raised.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'rollouts.argoproj.io "nope" not found', "reason": "NotFound", "code": 404,
        "details": {"name": "nope", "group": "argoproj.io", "kind": "rollouts"}}
    assert kube.fake.requests("GET")[-1].path == "/apis/argoproj.io/v1alpha1/namespaces/prod/rollouts/nope"


def test_requests_without_the_token_are_unauthorized(kube: KubeEnv) -> None:
    kube.fake.seed_configmap("prod", "flags", {"A": "1"})
    answer = requests.get(f"{kube.fake.url}/api/v1/namespaces/prod/configmaps/flags", timeout=5)
    assert answer.status_code == 401 and answer.json()["reason"] == "Unauthorized"


def test_list_replicasets_by_label_selector(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    kube.fake.seed_rollout("prod", "other", ["other:v1"], stable=1)
    apps = client.AppsV1Api(kube.api_client)
    found = apps.list_namespaced_replica_set("prod", label_selector="app=model-svc")
    assert sorted(rs.metadata.annotations[REVISION] for rs in found.items) == ["1", "2", "3"]
    assert all(rs.spec.template.metadata.labels[HASH_LABEL] == rs.metadata.labels[HASH_LABEL] for rs in found.items)
    assert kube.fake.requests("GET", "replicasets$")[-1].query == {"labelSelector": "app=model-svc"}
    assert len(apps.list_namespaced_replica_set("prod").items) == 4


def test_status_subresource_keeps_spec_and_main_resource_keeps_status(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    with kube.fake.held_controllers():
        _custom(kube).patch_namespaced_custom_object_status(
            *ARGO, "prod", "rollouts", "model-svc", {"status": {"abort": True}, "spec": {"paused": True}})
        after = _rollout(kube)
        assert after["status"]["abort"] is True and "paused" not in after["spec"]
        _custom(kube).patch_namespaced_custom_object(*ARGO, "prod", "rollouts", "model-svc",
                                                     {"spec": {"paused": True}, "status": {"abort": False}})
        after = _rollout(kube)
        assert after["spec"]["paused"] is True and after["status"]["abort"] is True
        assert after["metadata"]["generation"] == 2
    (status_patch, main_patch) = kube.fake.writes()
    assert (status_patch.method, status_patch.path, status_patch.content_type) == (
        "PATCH", "/apis/argoproj.io/v1alpha1/namespaces/prod/rollouts/model-svc/status", "application/merge-patch+json")
    assert main_patch.path.endswith("/rollouts/model-svc") and main_patch.body["spec"] == {"paused": True}


def test_json_patch_replaces_and_a_bad_path_is_422(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    ops = [{"op": "replace", "path": "/spec/template", "value": _template("model-svc:v9")}]
    with kube.fake.held_controllers():
        answer = _custom(kube).patch_namespaced_custom_object(*ARGO, "prod", "rollouts", "model-svc", ops,
                                                               _content_type="application/json-patch+json")
    assert answer["spec"]["template"]["spec"]["containers"][0]["image"] == "model-svc:v9"
    assert kube.fake.writes()[-1].content_type == "application/json-patch+json" and kube.fake.writes()[-1].body == ops
    with pytest.raises(ApiException) as raised:
        _custom(kube).patch_namespaced_custom_object(
            *ARGO, "prod", "rollouts", "model-svc", [{"op": "replace", "path": "/spec/nothing/here", "value": 1}],
            _content_type="application/json-patch+json")
    assert raised.value.status == 422 and _status(raised.value)["reason"] == "Invalid"


def test_strategic_merge_patch_rolls_a_deployment_out_when_the_controller_runs(kube: KubeEnv) -> None:
    kube.fake.seed_deployment("prod", "model-svc", "model-svc:v3")
    apps = client.AppsV1Api(kube.api_client)
    body = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}}}}}
    with kube.fake.held_controllers():
        answer = apps.patch_namespaced_deployment("model-svc", "prod", body)  # the client picks strategic merge
        assert answer.metadata.generation == 2 and answer.status.observed_generation == 1
        assert kube.fake.get("deployments", "prod", "model-svc")["status"]["observedGeneration"] == 1
    assert kube.fake.writes()[-1].content_type == "application/strategic-merge-patch+json"
    done = apps.read_namespaced_deployment("model-svc", "prod")
    assert done.status.observed_generation == 2 and done.status.updated_replicas == done.status.available_replicas == 3
    assert done.spec.template.metadata.annotations == {"kubectl.kubernetes.io/restartedAt": "now"}
    assert done.spec.template.spec.containers[0].image == "model-svc:v3"  # maps merge, nothing else changes


def test_put_with_a_stale_resource_version_is_a_409_conflict(kube: KubeEnv) -> None:
    kube.fake.seed_configmap("prod", "flags", {"FEATURE_ENABLE_NEW": "true"})
    core = client.CoreV1Api(kube.api_client)
    current = core.read_namespaced_config_map("flags", "prod")
    stale = {"metadata": {"name": "flags", "resourceVersion": current.metadata.resource_version},
             "data": {"FEATURE_ENABLE_NEW": "false"}}
    core.patch_namespaced_config_map("flags", "prod", {"data": {"OTHER": "1"}},
                                     _content_type="application/merge-patch+json")
    with pytest.raises(ApiException) as raised:
        core.replace_namespaced_config_map("flags", "prod", stale)
    assert raised.value.status == 409 and _status(raised.value)["reason"] == "Conflict"
    assert "the object has been modified" in _status(raised.value)["message"]
    fresh = core.read_namespaced_config_map("flags", "prod")
    stale["metadata"]["resourceVersion"] = fresh.metadata.resource_version
    assert core.replace_namespaced_config_map("flags", "prod", stale).data == {"FEATURE_ENABLE_NEW": "false"}
    assert [(r.method, r.content_type) for r in kube.fake.writes()][0] == ("PATCH", "application/merge-patch+json")
    assert [r.method for r in kube.fake.writes()] == ["PATCH", "PUT", "PUT"]


def test_injected_failures_answer_status_objects_then_stop(kube: KubeEnv) -> None:
    kube.fake.seed_configmap("prod", "flags", {"A": "1"})
    kube.fake.fail("GET", r"/configmaps/flags$", 500, times=2)
    core = client.CoreV1Api(kube.api_client)
    for _ in range(2):
        with pytest.raises(ApiException) as raised:
            core.read_namespaced_config_map("flags", "prod")
        assert raised.value.status == 500 and _status(raised.value)["reason"] == "InternalError"
    assert core.read_namespaced_config_map("flags", "prod").data == {"A": "1"}
    kube.fake.fail("PATCH", r"/configmaps/", 409, times=None)
    for _ in range(3):
        with pytest.raises(ApiException, match="409"):
            core.patch_namespaced_config_map("flags", "prod", {"data": {"A": "2"}})
    assert kube.fake.get("configmaps", "prod", "flags")["data"] == {"A": "1"}


def test_rollout_controller_abort_then_undo_to_stable(kube: KubeEnv) -> None:
    seeded = kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    assert seeded["status"]["canary"]["weights"]["canary"]["weight"] == 20
    assert seeded["status"]["phase"] == "Progressing"
    _custom(kube).patch_namespaced_custom_object_status(*ARGO, "prod", "rollouts", "model-svc",
                                                        {"status": {"abort": True}})
    aborted = _rollout(kube)["status"]
    assert aborted["phase"] == "Degraded" and aborted["conditions"][0]["reason"] == "RolloutAborted"
    assert aborted["canary"]["weights"]["canary"]["weight"] == 0
    assert aborted["canary"]["weights"]["stable"] == {"podTemplateHash": seeded["status"]["stableRS"], "weight": 100}
    ops = [{"op": "replace", "path": "/spec/template", "value": _template("model-svc:v2")}]
    _custom(kube).patch_namespaced_custom_object(*ARGO, "prod", "rollouts", "model-svc", ops,
                                                 _content_type="application/json-patch+json")
    healthy = _rollout(kube)
    assert healthy["status"]["phase"] == "Healthy" and healthy["status"]["abort"] is False
    assert healthy["status"]["observedGeneration"] == str(healthy["metadata"]["generation"]) == "2"
    assert healthy["status"]["currentPodHash"] == healthy["status"]["stableRS"] == seeded["status"]["stableRS"]
    revived = kube.fake.get("replicasets", "prod", f"model-svc-{seeded['status']['stableRS']}")
    assert revived["metadata"]["annotations"][REVISION] == "4"  # a revived ReplicaSet gets the next revision


def test_rollout_controller_undo_to_an_older_revision_waits_for_promote_full(kube: KubeEnv) -> None:
    seeded = kube.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)
    ops = [{"op": "replace", "path": "/spec/template", "value": _template("model-svc:v1")}]
    _custom(kube).patch_namespaced_custom_object(*ARGO, "prod", "rollouts", "model-svc", ops,
                                                 _content_type="application/json-patch+json")
    progressing = _rollout(kube)["status"]
    assert progressing["phase"] == "Progressing" and progressing["stableRS"] == seeded["status"]["stableRS"]
    assert progressing["canary"]["weights"]["canary"]["weight"] == 20
    _custom(kube).patch_namespaced_custom_object_status(*ARGO, "prod", "rollouts", "model-svc",
                                                        {"status": {"promoteFull": True}})
    promoted = _rollout(kube)["status"]
    assert promoted["phase"] == "Healthy" and promoted["stableRS"] == progressing["currentPodHash"]
    assert promoted["canary"]["weights"]["stable"]["weight"] == 100


def test_application_operation_becomes_an_operation_state(kube: KubeEnv) -> None:
    kube.fake.seed_application("argocd", "model-svc")
    operation = {"operation": {"initiatedBy": {"username": "rollback-bot"}, "sync": {"revision": "abc123"}}}
    _custom(kube).patch_namespaced_custom_object(*ARGO, "argocd", "applications", "model-svc", operation)
    app = _custom(kube).get_namespaced_custom_object(*ARGO, "argocd", "applications", "model-svc")
    assert "operation" not in app
    assert app["status"]["operationState"]["phase"] == "Succeeded"
    assert app["status"]["operationState"]["syncResult"]["revision"] == "abc123"
    assert app["status"]["sync"] == {**app["status"]["sync"], "status": "Synced", "revision": "abc123"}
    kube.fake.next_sync("argocd", "model-svc", "Failed", "one or more objects failed to apply")
    _custom(kube).patch_namespaced_custom_object(*ARGO, "argocd", "applications", "model-svc", operation)
    app = _custom(kube).get_namespaced_custom_object(*ARGO, "argocd", "applications", "model-svc")
    assert app["status"]["operationState"]["phase"] == "Failed"
    assert app["status"]["operationState"]["message"] == "one or more objects failed to apply"
