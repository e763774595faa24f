"""Executors by stable string name: the names are written in policy files and stored with every step.

bot.slo.policy validates `rollback:` steps against a registry, bot.incidents.runner builds executors from it.
Tests pass their own Registry instead of the default one. The registry imports the executor modules; none of
them imports it back (their SPEC is built from executors.spec).
"""

from __future__ import annotations

from collections.abc import Iterable

from executors import argo_rollouts, argocd, feature_flag, git_revert, helm, mlflow_alias
from executors.spec import Access, Clients, ExecutorSpec, Target

__all__ = ["Access", "Clients", "ExecutorSpec", "Registry", "Target", "default_registry"]


class Registry:
    def __init__(self, specs: Iterable[ExecutorSpec] = ()) -> None:
        self._specs: dict[str, ExecutorSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: ExecutorSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"executor {spec.name!r} is registered twice")
        self._specs[spec.name] = spec

    def get(self, name: str) -> ExecutorSpec:
        return self._specs[name]

    def names(self) -> list[str]:
        return sorted(self._specs)

    def targetable(self) -> list[str]:
        """Names of the executors `--to` can pin, in registration order."""
        return [name for name, spec in self._specs.items() if spec.target is not None]

    def restorable(self) -> list[str]:
        """Names of the executors a staging drill can move back to where they were (`restore: true`)."""
        return [name for name, spec in self._specs.items() if spec.target is not None and spec.target.was]

    def reports_traffic(self, name: str) -> bool:
        return name in self._specs and self._specs[name].reports_traffic

    def access(self, name: str, config: object) -> tuple[Access, ...]:
        """The Kubernetes permissions a step of executor `name` with this config needs (bot.slo.rbac)."""
        return self._specs[name].access(config)

    def __contains__(self, name: object) -> bool:
        return name in self._specs


# In the order `rollback-bot check-policy` lists them.
EXECUTOR_MODULES = (mlflow_alias, helm, git_revert, argo_rollouts, feature_flag, argocd)


def default_registry() -> Registry:
    return Registry(module.SPEC for module in EXECUTOR_MODULES)
