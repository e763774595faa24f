"""bot.slo.rbac and `rollback-bot rbac`: the printed RBAC validates against the Kubernetes schemas offline, it covers
each Kubernetes executor's real requests against the fake API (no more, no less), and it never carries a
wildcard, escalate/bind/impersonate or cluster-wide Secrets."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bot import cli
from bot.slo import rbac
from bot.slo.policy import Policy
from bot.slo.policy_file import load_policy, parse_policy
from executors.base import StepContext
from executors.helm import MANAGED_VERBS, RELEASE_SECRET_VERBS, HelmConfig
from executors.registry import Clients, default_registry
from sandbox.kube_api import Request
from tests import kube_env
from tests.kube_env import KubeEnv
from tests.layers_env import layers_policy_yaml

kube_server, kube = kube_env.kube_server, kube_env.kube  # the shared fixtures (see tests/kube_env.py)

K8S_VERSION = "1.35.0"  # a recent version kubernetes-validate bundles; validation is offline
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "policy.yaml"
CTX = StepContext("model-svc", 1)
IMAGES = ["model-svc:v1", "model-svc:v2", "model-svc:v3"]


def policy_of(*services: tuple[str, list[dict[str, Any]]]) -> Policy:
    """A policy whose services have only these rollback steps (and the least else a service needs)."""
    return Policy.model_validate({"services": {
        name: {"channel": "C0123456789", "approvers": ["U0123ABCDE"], "model": "m",
               "slos": [{"name": "up", "query": "up", "below": 1}], "rollback": steps}
        for name, steps in services}})


def one_step(executor: str, config: dict[str, Any]) -> Policy:
    return policy_of(("svc", [{executor: config}]))


# ---- what a recorded request asks of RBAC -------------------------------------------------------------------
_PATH = re.compile(r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<resource>[^/]+)"
                   r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$")
_VERBS = {"PATCH": "patch", "PUT": "update", "POST": "create", "DELETE": "delete"}


@dataclass(frozen=True)
class Ask:
    """A request as the RBAC authorizer sees it."""

    group: str
    resource: str  # with /subresource
    namespace: str
    name: str | None
    verb: str


def ask(request: Request) -> Ask:
    match = _PATH.match(request.path)
    assert match, f"not a namespaced resource path: {request.path}"
    name = match["name"]
    if request.method == "GET":
        verb = "get" if name else ("watch" if request.query.get("watch") in ("1", "true") else "list")
    else:
        verb = _VERBS[request.method]
    resource = match["resource"] + (f"/{match['sub']}" if match["sub"] else "")
    return Ask(match["group"] or "", resource, match["ns"], name, verb)


def allows(rule: dict[str, Any], asked: Ask) -> bool:
    names = rule.get("resourceNames")
    return (asked.group in rule["apiGroups"] and asked.resource in rule["resources"] and asked.verb in rule["verbs"]
            and (not names or asked.name in names))


def grants_of(roles: list[rbac.RoleSpec]) -> set[Ask]:
    """Every (group, resource, namespace, name, verb) the rules grant; name None for a namespace-wide rule."""
    return {Ask(group, resource, role.namespace, name, verb)
            for role in roles for rule in role.rules for group in rule["apiGroups"] for resource in rule["resources"]
            for name in (rule.get("resourceNames") or [None]) for verb in rule["verbs"]}


def granted(roles: list[rbac.RoleSpec], asked: Ask) -> bool:
    return any(role.namespace == asked.namespace and allows(rule, asked) for role in roles for rule in role.rules)


def used(grant: Ask, asks: set[Ask]) -> bool:
    return any(a.group == grant.group and a.resource == grant.resource and a.namespace == grant.namespace
               and a.verb == grant.verb and (grant.name is None or a.name == grant.name) for a in asks)


# ---- each executor's real requests against the fake ---------------------------------------------------------
def _seed_rollout(env: KubeEnv) -> None:
    env.fake.seed_rollout("prod", "model-svc", IMAGES, stable=2)


def _seed_flags(env: KubeEnv) -> None:
    env.fake.seed_configmap("prod", "model-svc-flags", {"FEATURE_ENABLE_NEW": "true"})
    env.fake.seed_deployment("prod", "model-svc", "model-svc:v3")


def _seed_app(env: KubeEnv) -> None:
    env.fake.seed_application("argocd", "model-svc", target_revision="main")


FLAG = {"configmap": "model-svc-flags", "namespace": "prod", "key": "FEATURE_ENABLE_NEW", "value": "false",
        "timeout": "2s"}
SCENARIOS: dict[str, tuple[str, dict[str, Any], Callable[[KubeEnv], None]]] = {
    "argo_rollouts undo to stable (abort, undo)": (
        "argo_rollouts", {"rollout": "model-svc", "namespace": "prod", "timeout": "2s"}, _seed_rollout),
    "argo_rollouts undo to an older revision (abort, undo, promote --full)": (
        "argo_rollouts", {"rollout": "model-svc", "namespace": "prod", "to_revision": 1, "timeout": "2s"},
        _seed_rollout),
    "argo_rollouts abort": (
        "argo_rollouts", {"rollout": "model-svc", "namespace": "prod", "action": "abort", "timeout": "2s"},
        _seed_rollout),
    "feature_flag with a restart": ("feature_flag", {**FLAG, "restart": "deployment/model-svc"}, _seed_flags),
    "feature_flag without a restart": ("feature_flag", FLAG, _seed_flags),
    "argocd auto-sync off and sync": ("argocd", {"app": "model-svc", "timeout": "2s"}, _seed_app),
    "argocd sync only": ("argocd", {"app": "model-svc", "disable_auto_sync": False, "timeout": "2s"}, _seed_app),
    "argocd auto-sync off only": ("argocd", {"app": "model-svc", "sync": False, "timeout": "2s"}, _seed_app),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_rules_cover_the_executors_real_requests_no_more_no_less(kube: KubeEnv, scenario: str) -> None:
    executor, config, seed = SCENARIOS[scenario]
    seed(kube)
    kube.fake.clear_requests()
    step = one_step(executor, config).services["svc"].rollback[0]
    built = default_registry().get(executor).build(step.config, Clients(kube=kube.api_client))
    plan = built.plan(context=CTX)
    assert built.execute(plan=plan, context=CTX).ok
    asks = {ask(request) for request in kube.fake.requests()}
    assert asks, "the executor sent nothing"

    roles = rbac.roles(one_step(executor, config))

    assert [a for a in sorted(asks, key=str) if not granted(roles, a)] == []  # no less: every request allowed
    assert [g for g in sorted(grants_of(roles), key=str) if not used(g, asks)] == []  # no more: every grant used


def test_argo_rollouts_rules_are_the_ones_the_plugin_needs() -> None:
    (role,) = rbac.roles(one_step("argo_rollouts", {"rollout": "model-svc", "namespace": "prod"}))
    assert role == rbac.RoleSpec("prod", [
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list"]},
        {"apiGroups": ["argoproj.io"], "resources": ["rollouts"], "resourceNames": ["model-svc"],
         "verbs": ["get", "patch"]},
        {"apiGroups": ["argoproj.io"], "resources": ["rollouts/status"], "resourceNames": ["model-svc"],
         "verbs": ["patch"]}])


def test_helm_rules_are_helms_documented_needs() -> None:
    # The fake helm (tests/bin/helm) never calls the Kubernetes API, so there are no requests to match: these rules
    # are checked against what executors/helm.py access() documents from helm's source (pkg/storage, the Secret
    # driver, pkg/kube/client.go update(), the --wait waiters).
    config = {"release": "model-svc", "namespace": "prod", "manages": [
        {"group": "apps", "resource": "deployments"}, {"resource": "services"}, {"group": "", "resource": "configmaps"}]}
    (role,) = rbac.roles(one_step("helm", config))
    assert role == rbac.RoleSpec("prod", [
        {"apiGroups": [""], "resources": ["configmaps", "services"], "verbs": list(MANAGED_VERBS)},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": list(RELEASE_SECRET_VERBS)},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": list(MANAGED_VERBS)},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list"]}])
    assert RELEASE_SECRET_VERBS == ("create", "delete", "get", "list", "update")
    assert MANAGED_VERBS == ("create", "delete", "get", "list", "patch", "watch")  # no update: no --force
    (bare,) = rbac.roles(one_step("helm", {"release": "model-svc", "namespace": "prod"}))
    assert bare.rules == [{"apiGroups": [""], "resources": ["secrets"], "verbs": list(RELEASE_SECRET_VERBS)}]
    assert "declares no `manages:`" in rbac.render(one_step("helm", {"release": "model-svc", "namespace": "prod"}))


def test_the_helm_config_refuses_wildcards_and_cluster_scoped_kinds() -> None:
    with pytest.raises(ValidationError, match="resource"):
        HelmConfig.model_validate({"release": "r", "namespace": "prod", "manages": [{"resource": "*"}]})
    with pytest.raises(ValidationError, match="group"):
        HelmConfig.model_validate({"release": "r", "namespace": "prod",
                                   "manages": [{"group": "*", "resource": "deployments"}]})
    with pytest.raises(ValidationError, match="cluster-scoped"):
        HelmConfig.model_validate({"release": "r", "namespace": "prod", "manages": [{"resource": "namespaces"}]})
    with pytest.raises(ValidationError, match="Extra inputs"):
        HelmConfig.model_validate({"release": "r", "namespace": "prod",
                                   "manages": [{"resource": "deployments", "verbs": ["*"]}]})


# ---- shape, merging, safety -----------------------------------------------------------------------------------
def test_a_policy_without_kubernetes_steps_gets_no_role() -> None:
    policy = one_step("mlflow_alias", {"model": "m", "alias": "champion", "to": "previous_champion"})
    assert rbac.roles(policy) == []
    assert rbac.values(policy) == {"rbac": {"roles": []}}
    (account,) = rbac.manifests(policy)
    assert account["kind"] == "ServiceAccount" and account["automountServiceAccountToken"] is False
    assert "no Kubernetes steps" in rbac.render(policy) and "kind: Role" not in rbac.render(policy)


def test_two_services_in_two_namespaces_give_two_roles_bound_to_the_one_account() -> None:
    policy = policy_of(("a", [{"argocd": {"app": "a", "namespace": "argocd"}}]),
                       ("b", [{"feature_flag": {**FLAG, "namespace": "team-b", "restart": "deployment/b"}}]))
    docs = rbac.manifests(policy, namespace="ops", name="rb")
    assert [(d["kind"], d["metadata"]["namespace"]) for d in docs] == [
        ("ServiceAccount", "ops"), ("Role", "argocd"), ("RoleBinding", "argocd"), ("Role", "team-b"),
        ("RoleBinding", "team-b")]
    assert [r.namespace for r in rbac.roles(policy)] == ["argocd", "team-b"]


def test_several_services_in_one_namespace_merge_sorted_and_deduplicated() -> None:
    flags = [{"feature_flag": {**FLAG, "configmap": name, "restart": "deployment/model-svc"}} for name in ("z", "a")]
    policy = policy_of(("one", flags), ("two", [flags[1], {"argo_rollouts": {"rollout": "r", "namespace": "prod"}}]))
    (role,) = rbac.roles(policy)
    assert role.rules == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a", "z"], "verbs": ["get", "patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["model-svc"], "verbs": ["get", "patch"]},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list"]},
        {"apiGroups": ["argoproj.io"], "resources": ["rollouts"], "resourceNames": ["r"], "verbs": ["get", "patch"]},
        {"apiGroups": ["argoproj.io"], "resources": ["rollouts/status"], "resourceNames": ["r"], "verbs": ["patch"]}]
    # A chart that manages Deployments already grants them namespace-wide: the named rule goes.
    helm = {"helm": {"release": "model-svc", "namespace": "prod", "manages": [{"group": "apps",
                                                                                "resource": "deployments"}]}}
    (merged,) = rbac.roles(policy_of(("one", [*flags, helm])))
    assert not any(r["resources"] == ["deployments"] and "resourceNames" in r for r in merged.rules)


def test_drill_steps_are_granted_too() -> None:
    policy = Policy.model_validate({"services": {"svc": {
        "channel": "C0123456789", "approvers": ["U0123ABCDE"], "model": "m",
        "slos": [{"name": "up", "query": "up", "below": 1}],
        "rollback": [{"mlflow_alias": {"model": "m", "alias": "champion", "to": "previous_champion"}}],
        "drill": {"rollback": [{"argocd": {"app": "svc-staging", "namespace": "staging"}}]}}}})
    assert [(r.namespace, r.rules[0]["resourceNames"]) for r in rbac.roles(policy)] == [("staging", ["svc-staging"])]


def _policies() -> dict[str, Policy]:
    return {
        "examples/policy.yaml": load_policy(EXAMPLE),
        "the layers story": parse_policy(layers_policy_yaml(model="m", repo=Path("/tmp/repo"))),
        **{f"scenario {name}": one_step(executor, config) for name, (executor, config, _) in SCENARIOS.items()},
        "helm managing kinds": one_step("helm", {"release": "r", "namespace": "prod", "manages": [
            {"group": "apps", "resource": "deployments"}, {"group": "batch", "resource": "jobs"}]}),
        "mlflow only": one_step("mlflow_alias", {"model": "m", "alias": "champion", "to": "previous_champion"}),
    }


def _assert_safe(docs: list[dict[str, Any]], namespace: str, name: str) -> None:
    kinds = [d["kind"] for d in docs]
    assert set(kinds) <= {"ServiceAccount", "Role", "RoleBinding"}  # never a ClusterRole (or its binding)
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert account["metadata"] == {**account["metadata"], "name": name, "namespace": namespace}
    text = yaml.safe_dump_all(docs)
    assert "*" not in text
    for role in (d for d in docs if d["kind"] == "Role"):
        for rule in role["rules"]:
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert rule["verbs"] == sorted(set(rule["verbs"]))
        bindings = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["namespace"] ==
                    role["metadata"]["namespace"] and d["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                                                      "kind": "Role", "name": role["metadata"]["name"]}]
        assert [b["subjects"] for b in bindings] == [[{"kind": "ServiceAccount", "name": name, "namespace": namespace}]]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("which", list(_policies()))
def test_every_output_validates_offline_and_is_safe(which: str) -> None:
    policy = _policies()[which]
    _assert_safe(rbac.manifests(policy), "rollback-bot", "rollback-bot")
    _assert_safe(rbac.manifests(policy, namespace="platform", name="rb.bot"), "platform", "rb.bot")
    printed = list(yaml.safe_load_all(rbac.render(policy)))
    assert printed == rbac.manifests(policy)
    assert yaml.safe_load(rbac.render_values(policy)) == rbac.values(policy)


_NAMES = st.sampled_from(["a", "b", "model-svc", "x.y"])
_NAMESPACES = st.sampled_from(["prod", "staging", "argocd"])
_STEPS = st.one_of(
    st.builds(lambda n, ns, action: {"argo_rollouts": {"rollout": n, "namespace": ns, "action": action}},
              _NAMES, _NAMESPACES, st.sampled_from(["undo", "abort"])),
    st.builds(lambda n, ns, restart: {"feature_flag": {**FLAG, "configmap": n, "namespace": ns,
                                                       "restart": f"deployment/{restart}" if restart else None}},
              _NAMES, _NAMESPACES, st.one_of(st.none(), _NAMES)),
    st.builds(lambda n, ns: {"argocd": {"app": n, "namespace": ns}}, _NAMES, _NAMESPACES),
    st.builds(lambda n, ns, kinds: {"helm": {"release": n.replace(".", "-"), "namespace": ns, "manages": kinds}},
              _NAMES, _NAMESPACES, st.lists(st.sampled_from([{"group": "apps", "resource": "deployments"},
                                                             {"resource": "services"}, {"resource": "secrets"},
                                                             {"group": "batch", "resource": "jobs"}]), max_size=3)),
    st.just({"mlflow_alias": {"model": "m", "alias": "champion", "to": "previous_champion"}}),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_STEPS, min_size=1, max_size=6))
def test_any_mix_of_steps_is_safe_deterministic_and_covers_every_declared_grant(steps: list[dict[str, Any]]) -> None:
    policy = policy_of(("svc", steps))
    docs = rbac.manifests(policy)
    _assert_safe(docs, "rollback-bot", "rollback-bot")
    assert rbac.roles(policy_of(("svc", steps[::-1]))) == rbac.roles(policy)  # order does not matter
    roles = rbac.roles(policy)
    for grant in rbac.grants(policy):
        for verb in grant.verbs:
            assert granted(roles, Ask(grant.group, grant.resource, grant.namespace, grant.name, verb)), grant
    for role in roles:
        assert not any(r["resources"] == ["secrets"] and role.namespace not in
                       {g.namespace for g in rbac.grants(policy) if g.resource == "secrets"} for r in role.rules)


# ---- the command ----------------------------------------------------------------------------------------------
def test_the_cli_prints_the_manifests_and_the_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["rbac", "--policy", str(EXAMPLE), "--namespace", "ops"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# RBAC for rollback-bot, generated by `rollback-bot rbac` from ")
    policy = load_policy(EXAMPLE)
    assert list(yaml.safe_load_all(out)) == rbac.manifests(policy, namespace="ops")

    assert cli.main(["rbac", "--policy", str(EXAMPLE), "--values"]) == 0
    values = yaml.safe_load(capsys.readouterr().out)
    assert values == rbac.values(policy)
    assert [role["namespace"] for role in values["rbac"]["roles"]] == ["argocd", "prod"]
    assert set(values["rbac"]["roles"][0]) == {"namespace", "rules"}

    assert cli.main(["rbac", "--policy", str(EXAMPLE), "--namespace", "Not_A_Namespace"]) == 2
    assert "not a Kubernetes namespace name" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: {}\n")
    assert cli.main(["rbac", "--policy", str(bad)]) == 2
    assert cli.main(["rbac", "--policy", str(tmp_path / "missing.yaml")]) == 2
