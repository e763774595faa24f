"""Least-privilege Kubernetes RBAC derived from the policy: what `rollback-bot rbac` prints.

Called by bot.cli (`rollback-bot rbac --policy FILE [--namespace NS] [--name NAME] [--values]`); the Helm chart
takes `values()` into its values.yaml. Every rollback step of every service (the staging drill's steps too) says
through its executor's SPEC.access which resources and verbs it needs (executors/*.py `access()`); here they are
merged per namespace into one Role each, bound by a RoleBinding to the bot's one ServiceAccount. Grants on one
named object carry resourceNames; a namespace-wide grant absorbs the named ones it covers. Rules are sorted and
deduplicated, so the same policy always prints the same YAML. No ClusterRole: every executor acts in a namespace.
Never wildcards, never escalate/bind/impersonate (checked here too), never Secrets beyond a release's namespace.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from bot.slo.policy import Policy, RollbackStep
from executors.helm import HelmConfig
from executors.registry import Access, Registry, default_registry

RBAC_API = "rbac.authorization.k8s.io"
FORBIDDEN_VERBS = frozenset({"escalate", "bind", "impersonate", "*"})
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$")


class RbacError(ValueError):
    """A rule that must never be printed (a wildcard, a forbidden verb), or a bad --namespace / --name."""


@dataclass(frozen=True)
class RoleSpec:
    """One namespace's Role: Kubernetes PolicyRule dicts (apiGroups, resources, resourceNames?, verbs), sorted."""

    namespace: str
    rules: list[dict[str, Any]]


def _steps(policy: Policy) -> Iterable[RollbackStep]:
    for service in policy.services.values():
        yield from service.rollback
        yield from service.drill.rollback or ()


def grants(policy: Policy, registry: Registry | None = None) -> list[Access]:
    """Every permission the policy's steps need, as the executors declare them, in policy order."""
    registry = registry or default_registry()
    return [grant for step in _steps(policy) for grant in registry.access(step.executor, step.config)]


def _rules(namespace_grants: Iterable[Access]) -> list[dict[str, Any]]:
    wide: dict[tuple[str, str], set[str]] = defaultdict(set)
    named: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for grant in namespace_grants:
        if grant.name is None:
            wide[(grant.group, grant.resource)].update(grant.verbs)
        else:
            named[(grant.group, grant.resource, grant.name)].update(grant.verbs)
    by_verbs: dict[tuple[str, str, tuple[str, ...]], set[str]] = defaultdict(set)
    for (group, resource, name), verbs in named.items():
        left = tuple(sorted(verbs - wide.get((group, resource), set())))
        if left:  # what a namespace-wide grant already allows needs no named rule
            by_verbs[(group, resource, left)].add(name)
    rules = [{"apiGroups": [group], "resources": [resource], "resourceNames": sorted(names), "verbs": list(verbs)}
             for (group, resource, verbs), names in by_verbs.items()]
    # Namespace-wide grants of one group with the same verbs share a rule (no names, so nothing widens).
    shared: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for (group, resource), verbs in wide.items():
        shared[(group, tuple(sorted(verbs)))].append(resource)
    rules += [{"apiGroups": [group], "resources": sorted(resources), "verbs": list(verbs)}
              for (group, verbs), resources in shared.items()]
    for rule in rules:
        _refuse_dangerous(rule)
    return sorted(rules, key=lambda r: (r["apiGroups"], r["resources"], r.get("resourceNames", []), r["verbs"]))


def _refuse_dangerous(rule: dict[str, Any]) -> None:
    words = [*rule["apiGroups"], *rule["resources"], *rule.get("resourceNames", []), *rule["verbs"]]
    if any("*" in word for word in words):
        raise RbacError(f"refusing a wildcard in an RBAC rule: {rule}")
    if FORBIDDEN_VERBS & set(rule["verbs"]):
        raise RbacError(f"refusing the verbs escalate, bind and impersonate: {rule}")


def roles(policy: Policy, registry: Registry | None = None) -> list[RoleSpec]:
    """One RoleSpec per namespace the policy's Kubernetes steps touch, sorted by namespace; [] when none does."""
    per_namespace: dict[str, list[Access]] = defaultdict(list)
    for grant in grants(policy, registry):
        per_namespace[grant.namespace].append(grant)
    return [RoleSpec(ns, _rules(per_namespace[ns])) for ns in sorted(per_namespace)]


def values(policy: Policy, registry: Registry | None = None) -> dict[str, Any]:
    """`{"rbac": {"roles": [{"namespace", "rules"}, ...]}}`: what `rollback-bot rbac --values` prints."""
    return {"rbac": {"roles": [{"namespace": role.namespace, "rules": role.rules} for role in roles(policy, registry)]}}


def _check_names(namespace: str, name: str) -> None:
    if not _DNS_LABEL.match(namespace):
        raise RbacError(f"--namespace {namespace!r} is not a Kubernetes namespace name (lowercase letters, digits, -)")
    if not _DNS_NAME.match(name):
        raise RbacError(f"--name {name!r} is not a Kubernetes object name (lowercase letters, digits, - and .)")


def manifests(policy: Policy, *, namespace: str = "rollback-bot", name: str = "rollback-bot",
              registry: Registry | None = None) -> list[dict[str, Any]]:
    """The ServiceAccount `name` in `namespace`, then per RoleSpec a Role `name` and a RoleBinding `name` to it.

    Without Kubernetes steps only the ServiceAccount, with automountServiceAccountToken off: the bot never calls
    the API, so its pods need no token.
    """
    _check_names(namespace, name)
    specs = roles(policy, registry)
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "rbac"}
    account: dict[str, Any] = {"apiVersion": "v1", "kind": "ServiceAccount",
                               "metadata": {"name": name, "namespace": namespace, "labels": labels}}
    if not specs:
        account["automountServiceAccountToken"] = False
    out = [account]
    for spec in specs:
        meta = {"name": name, "namespace": spec.namespace, "labels": labels}
        out.append({"apiVersion": f"{RBAC_API}/v1", "kind": "Role", "metadata": meta, "rules": spec.rules})
        out.append({"apiVersion": f"{RBAC_API}/v1", "kind": "RoleBinding", "metadata": dict(meta),
                    "roleRef": {"apiGroup": RBAC_API, "kind": "Role", "name": name},
                    "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]})
    return out


def notes(policy: Policy) -> list[str]:
    """What a reviewer should know about the printed rules: steps without Kubernetes, undeclared chart kinds."""
    said = []
    for service in policy.services.values():
        for step in (*service.rollback, *(service.drill.rollback or ())):
            config = step.config
            if isinstance(config, HelmConfig) and not config.manages:
                said.append(f"{service.name}: helm release {config.namespace}/{config.release} declares no "
                            "`manages:`, so only its release Secrets are granted; list the chart's kinds there "
                            "(e.g. manages: [{group: apps, resource: deployments}]) or helm's rollback is refused "
                            "on them")
    return sorted(set(said))


def _dump(documents: Iterable[Any]) -> str:
    return yaml.safe_dump_all(list(documents), sort_keys=False, default_flow_style=False, width=10_000,
                              explicit_start=True)


def _header(policy: Policy, source: str | None, what: str) -> str:
    lines = [f"# {what}, generated by `rollback-bot rbac`" + (f" from {source}" if source else "") + ".",
             "# Exactly the resources and verbs the policy's rollback steps use; regenerate after a policy change."]
    if not roles(policy):
        lines.append("# The policy has no Kubernetes steps (mlflow_alias, git_revert only): no Role is needed.")
    lines += [f"# note: {note}" for note in notes(policy)]
    return "\n".join(lines) + "\n"


def render(policy: Policy, *, namespace: str = "rollback-bot", name: str = "rollback-bot",
           source: str | None = None) -> str:
    """The YAML stream `rollback-bot rbac` prints: a comment header, then the manifests()."""
    return _header(policy, source, "RBAC for rollback-bot") + _dump(manifests(policy, namespace=namespace, name=name))


def render_values(policy: Policy, *, source: str | None = None) -> str:
    """The YAML `rollback-bot rbac --values` prints: values() for the chart's values.yaml."""
    return _header(policy, source, "Helm chart values (rbac.roles)") + yaml.safe_dump(
        values(policy), sort_keys=False, default_flow_style=False, width=10_000)
