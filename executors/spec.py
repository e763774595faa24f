"""What an executor is to the rest of the bot: its name, its config model, how to build it, and what it can do.

Each module under executors/ defines a SPEC; executors.registry lists them. The domain reads an executor's
capabilities here (may `--to` pin it, does its plan name the model version it rolls back to, does its outcome
report the traffic left on the bad version) and never the executor's private `data`. `access` says which
Kubernetes resources and verbs a step's config needs, for the least-privilege RBAC bot.slo.rbac prints.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from executors.base import Executor


@dataclass(frozen=True)
class Clients:
    """Clients handed to executors; tests swap them for ones pointed at fakes or test servers."""

    mlflow: Any = None
    kube: Any = None  # a kubernetes.client.ApiClient; None = load from KUBECONFIG or in-cluster on first use
    helm: str = "helm"  # the helm executable, looked up on PATH
    workdir: str | None = None  # where git executors keep their clones; None = a temporary directory


@dataclass(frozen=True)
class Target:
    """What `/rollback <service> --to <value>` may name for a targetable executor: a full-match regex for the
    value's kind and the words that say what it accepts (shown when a value is refused). `was` is the key of the
    plan's data naming the value the step moves away from (a value of the same kind), so a staging drill with
    `restore: true` can move it back (bot.incidents.drills)."""

    pattern: str
    accepts: str
    was: str | None = None

    def admits(self, value: str) -> bool:
        return re.fullmatch(self.pattern, value) is not None


@dataclass(frozen=True)
class Access:
    """One Kubernetes permission a step needs: `verbs` on `resource` (a plural, `rollouts/status` for a
    subresource) of API group `group` ("" is the core group) in `namespace`; `name` set when the step only
    ever touches that one object (RBAC resourceNames), None when it needs the whole namespace's (list, create,
    or objects whose names are not known in advance)."""

    group: str
    resource: str
    namespace: str
    verbs: tuple[str, ...]
    name: str | None = None


def no_access(config: Any) -> tuple[Access, ...]:
    """The access of a step that never calls the Kubernetes API (mlflow_alias, git_revert)."""
    return ()


@dataclass(frozen=True)
class ExecutorSpec:
    name: str
    config: type[BaseModel]
    build: Callable[[Any, Clients], Executor]
    target: Target | None = None  # set when the step can be pinned to a named version or revision
    reports_traffic: bool = False  # its outcome says how much traffic is left on the bad version (traffic_to_bad)
    access: Callable[[Any], tuple[Access, ...]] = no_access  # the Kubernetes permissions a config needs (RBAC)
