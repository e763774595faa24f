"""Builds executors from a service's `rollback:` steps, plans them, and runs them in order.

Called by bot.incidents.planning (`plan_all` when an incident opens, to pin the baseline the warning shows, and
for "Dry run") and bot.incidents.runs (`run` after an approval). `run` never raises: every step's start, result
and duration is stored and put on the timeline, and a failing step stops the plan with an outcome that says what
was done and what was not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bot.infra import metrics
from bot.infra.actors import AUTO_ACTOR
from bot.infra.plans import PlannedStep
from bot.infra.store import Store
from bot.slack import blocks, wording
from bot.slo.policy import RollbackStep, Service
from executors.base import Change, ExecutorError, StepContext, StepOutcome, StepPlan
from executors.registry import Clients, Registry

Record = Callable[[str, str, dict[str, Any]], None]


@dataclass(frozen=True)
class RunOutcome:
    ok: bool
    done: tuple[str, ...] = ()
    not_run: tuple[str, ...] = ()
    failed: str | None = None
    error: str | None = None
    position: int | None = None  # of the failed step


def plan_dict(plan: StepPlan) -> dict[str, Any]:
    return asdict(plan)


def outcome_from(stored: dict[str, Any] | None) -> StepOutcome | None:
    """A StepOutcome back from its stored dict (a failed step that never produced an outcome has none)."""
    if not stored or "summary" not in stored:
        return None
    names = {f for f in StepOutcome.__dataclass_fields__}
    values = {k: v for k, v in stored.items() if k in names}
    values["changes"] = tuple(Change(**c) for c in values.get("changes") or ())
    return StepOutcome(**values)


def stored_outcome(stored: dict[str, Any] | None) -> StepOutcome | None:
    """The outcome of a step that succeeded (for the steps done before a halt), else None."""
    outcome = outcome_from(stored)
    return outcome if outcome and outcome.ok else None


def _names_before(service: Service, position: int) -> tuple[str, ...]:
    return tuple(step.executor for step in service.rollback[:position])


def step_label(position: int, total: int, step: RollbackStep) -> str:
    return blocks.step_label(position, total, step.executor)


class Runner:
    def __init__(self, registry: Registry, clients: Clients, store: Store) -> None:
        self.registry = registry
        self.clients = clients
        self.store = store

    def executor(self, step: RollbackStep) -> Any:
        return self.registry.get(step.executor).build(step.config, self.clients)

    def plan_all(self, service: Service, incident_id: int, pins: Sequence[str | None] = ()) -> list[PlannedStep]:
        """Every step's plan; a step that cannot be planned carries its error."""
        out = []
        for i, step in enumerate(service.rollback):
            pin = pins[i] if i < len(pins) else None
            try:
                context = StepContext(service.name, incident_id, pin, before=_names_before(service, i))
                out.append(PlannedStep(step.executor, plan=self.executor(step).plan(context=context)))
            except ExecutorError as exc:
                out.append(PlannedStep(step.executor, error=str(exc)))
            except Exception as exc:  # noqa: BLE001 - a bug or an odd value in planning is that step's error
                out.append(PlannedStep(step.executor, error=f"unexpected {type(exc).__name__}: {exc}"))
        return out

    def run(self, service: Service, incident_id: int, pins: Sequence[str | None], record: Record, *,
            start: int = 0, earlier: Sequence[StepOutcome] = ()) -> RunOutcome:
        """Run the steps from position `start` on (a retry or resume after a halt); `earlier` are the outcomes
        of the steps before it, done in an earlier run."""
        steps = service.rollback
        total = len(steps)
        done = [step_label(j + 1, total, s) for j, s in enumerate(steps[:start])]
        outcomes: list[StepOutcome] = list(earlier)
        for i, step in enumerate(steps):
            if i < start:
                continue
            label = step_label(i + 1, total, step)
            pin = pins[i] if i < len(pins) else None
            context = StepContext(service.name, incident_id, pin, tuple(outcomes), _names_before(service, i))
            started = time.monotonic()
            step_id: int | None = None
            try:
                executor = self.executor(step)
                plan = executor.plan(context=context)
                step_id = self.store.start_step(incident_id, i, step.executor, plan_dict(plan))
                record("step_started", wording.step_started(label, plan.summary), {"position": i})
                outcome = executor.execute(plan=plan, context=context)
                error = None if outcome.ok else (outcome.error or "the executor reported failure")
            except ExecutorError as exc:
                outcome, error = None, str(exc)
            except Exception as exc:  # noqa: BLE001 - a bug in an executor must still reach the thread
                outcome, error = None, f"unexpected {type(exc).__name__}: {exc}"
            took = time.monotonic() - started
            result = "ok" if error is None else "failed"
            metrics.EXECUTOR_SECONDS.labels(executor=step.executor, result=result).observe(took)
            if step_id is None:
                step_id = self.store.start_step(incident_id, i, step.executor, {})
            stored = asdict(outcome) if outcome else {"executor": step.executor, "ok": False, "error": error}
            stored["seconds"] = round(took, 3)
            self.store.finish_step(step_id, error is None, stored)
            self.store.audit(actor=AUTO_ACTOR, action=f"execute:{step.executor}", result=result,
                             incident_id=incident_id, detail=stored)
            if error is not None:
                metrics.EXECUTOR_FAILURES.labels(executor=step.executor).inc()
                record("step_failed", wording.step_failed(label, took, error),
                       {"position": i, "error": error})
                not_run = tuple(step_label(j + 1, total, s) for j, s in enumerate(steps) if j > i)
                return RunOutcome(False, tuple(done), not_run, label, error, position=i)
            assert outcome is not None
            record("step_done", wording.step_done(label, took, outcome.summary),
                   {"position": i, "seconds": took})
            done.append(label)
            outcomes.append(outcome)
        return RunOutcome(True, tuple(done))
