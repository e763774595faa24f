"""Planning ahead: the Baseline an incident pins when it opens, `--to <version>`, and the dry runs' shared plans.

Called by bot.incidents.service. Planning reads git, helm, Kubernetes and MLflow through the executors
(bot.incidents.runner); nothing here changes anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from bot.incidents.runner import Runner
from bot.infra.model_registry import ModelRegistry
from bot.infra.plans import Baseline, PlannedStep
from bot.slack import wording
from bot.slo.policy import Service

log = logging.getLogger(__name__)

DRY_RUN_SHARED_FOR = 30.0  # seconds a dry run's plan is reused by the next Dry run of the same incident


class Planner:
    def __init__(self, runner: Runner, models: ModelRegistry) -> None:
        self.runner = runner
        self.models = models
        # Dry runs: the plan per incident (or service + pin), computed once per DRY_RUN_SHARED_FOR and shared.
        self._dry_plans: dict[Any, tuple[float, list[PlannedStep]]] = {}
        self._dry_locks: defaultdict[Any, threading.Lock] = defaultdict(threading.Lock)

    def baseline(self, svc: Service, pins: list[str | None] | None = None) -> Baseline:
        """Plan every step now and pin its target, so the rollback goes where the warning says."""
        steps = self.runner.plan_all(svc, 0, pins or [])
        base = Baseline.of(steps)
        if base.model is None and svc.promote:  # no step names the model version: the registry knows the bad one
            try:
                current = self.models.by_alias(svc.model, svc.promote.to)
            except Exception as exc:  # noqa: BLE001 - the registry being down leaves the bad version unknown
                log.warning("%s: could not read @%s: %s", svc.name, svc.promote.to, exc)
                current = None
            base = Baseline.of(steps, bad_version=current.version if current else None)
        return base

    def baseline_to(self, svc: Service, to: str) -> tuple[Baseline | None, str | None]:
        """The baseline with the first targetable step pinned to `to`, or a problem naming the step and what
        it accepts. Refused: a value of the wrong kind, a version tagged rollback_blocked (the executor says
        so), and the version being rolled back from (the step would change nothing)."""
        registry = self.runner.registry
        targetable = registry.targetable()
        position = next((i for i, s in enumerate(svc.rollback) if s.executor in targetable), None)
        if position is None:
            return None, wording.no_targetable_step(svc, targetable)
        step_name = wording.step_name(position, svc.rollback[position].executor)
        target = registry.get(svc.rollback[position].executor).target
        assert target is not None
        if not target.admits(to):
            return None, wording.wrong_kind(to, step_name, svc.name, target.accepts)
        pins: list[str | None] = [None] * len(svc.rollback)
        pins[position] = to
        base = self.baseline(svc, pins)
        step = base.steps[position]
        if step.error:
            return None, wording.cannot_go_to(svc.name, to, step_name, step.error)
        if step.noop:
            return None, wording.already_there(svc.name, to, step_name)
        return base, None

    def dry_run(self, key: Any, plan: Callable[[], list[PlannedStep]]) -> list[PlannedStep]:
        """A dry run's plan, computed at most once per DRY_RUN_SHARED_FOR for `key`: concurrent dry runs
        wait for the one being computed and share it (anyone may press Dry run; a plan reads git, helm,
        Kubernetes and MLflow)."""
        with self._dry_locks[key]:
            hit = self._dry_plans.get(key)
            if hit and time.monotonic() - hit[0] < DRY_RUN_SHARED_FOR:
                return hit[1]
            steps = plan()
            now = time.monotonic()
            for old in [k for k, (at, _) in list(self._dry_plans.items()) if now - at >= DRY_RUN_SHARED_FOR]:
                self._dry_plans.pop(old, None)  # plans nobody can share any more (their locks are cheap to keep)
            self._dry_plans[key] = (now, steps)
            return steps

    def incident_plan(self, svc: Service, incident_id: int, pins: list[str | None]) -> list[PlannedStep]:
        return self.dry_run(("incident", incident_id), lambda: self.runner.plan_all(svc, incident_id, pins))

    def service_plan(self, svc: Service) -> list[PlannedStep]:
        return self.dry_run(("service", svc.name), lambda: self.runner.plan_all(svc, 0))
