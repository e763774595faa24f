"""Executors by stable string name: the names are written in policy files and stored with every step.

bot.slo.policy validates `rollback:` steps against a registry, bot.incidents.runner builds executors from it. Tests pass
their own Registry instead of the default one.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
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
    value's kind and the words that say what it accepts (shown when a value is refused)."""

    pattern: str
    accepts: str

    def admits(self, value: str) -> bool:
        return re.fullmatch(self.pattern, value) is not None


@dataclass(frozen=True)
class ExecutorSpec:
    name: str
    config: type[BaseModel]
    build: Callable[[Any, Clients], Executor]
    target: Target | None = None  # set when the step can be pinned to a named version or revision


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

    def __contains__(self, name: object) -> bool:
        return name in self._specs


# Modules under executors/ that define SPEC, in the order `rollback-bot check-policy` lists them.
EXECUTOR_MODULES = ("mlflow_alias", "helm", "git_revert", "argo_rollouts", "feature_flag", "argocd")


def default_registry() -> Registry:
    return Registry(importlib.import_module(f"executors.{name}").SPEC for name in EXECUTOR_MODULES)
