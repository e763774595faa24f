"""The typed values of a rollback plan that cross layers: each step's plan (or why it could not be planned) and
the Baseline an incident pins when it opens.

Built by bot.incidents.planning from the executors' StepPlans; read by the warning (bot.slack.blocks), the
freeze (bot.slo.gate) and the plan runs. Dicts only where they are stored: `to_dict` / `from_dict` keep the
stored shape of a8443bc (an incident's `baseline` column, a dry run's audit row), so nothing is migrated. The
store hands rows back as stored; `Baseline.from_dict(incident.baseline)` is the one place a stored baseline
becomes a value again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from executors.base import Change, ModelPin, StepPlan


@dataclass(frozen=True)
class PlannedStep:
    """One step of a plan: what it would change, or the error that kept it from being planned."""

    executor: str
    plan: StepPlan | None = None
    error: str | None = None

    @property
    def noop(self) -> bool:
        return bool(self.plan and self.plan.noop)

    @property
    def pin(self) -> str | None:
        return self.plan.pin if self.plan else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.plan) if self.plan else {"executor": self.executor, "error": self.error}

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> PlannedStep:
        if stored.get("error") or "summary" not in stored:
            return cls(str(stored.get("executor", "?")), error=str(stored.get("error") or "no plan stored"))
        return cls(str(stored["executor"]), plan=step_plan(stored))


def step_plan(stored: dict[str, Any]) -> StepPlan:
    """A StepPlan back from its stored dict."""
    names = {f.name for f in fields(StepPlan)}
    values = {k: v for k, v in stored.items() if k in names}
    values["changes"] = tuple(Change(**c) for c in values.get("changes") or ())
    pin = values.get("model_pin")
    values["model_pin"] = ModelPin(**pin) if isinstance(pin, dict) else None
    return StepPlan(**values)


@dataclass(frozen=True)
class Baseline:
    """Where the rollback goes, fixed when the incident opens: every step planned and its target pinned, so the
    rollback goes where the warning says. `model` is the registered model version the first step that names
    one rolls back to; `bad_version` the version being rolled back from (from that step, or the registry)."""

    steps: tuple[PlannedStep, ...] = ()
    model: ModelPin | None = None
    bad_version: str | None = None

    @classmethod
    def of(cls, steps: list[PlannedStep], bad_version: str | None = None) -> Baseline:
        model = next((s.plan.model_pin for s in steps if s.plan and s.plan.model_pin), None)
        return cls(tuple(steps), model, model.replaces if model else bad_version)

    @property
    def pins(self) -> list[str | None]:
        return [s.pin for s in self.steps]

    @property
    def error(self) -> str | None:
        errors = [f"{s.executor}: {s.error}" for s in self.steps if s.error]
        return "; ".join(errors) or None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"steps": [s.to_dict() for s in self.steps], "pins": self.pins}
        if self.error:
            out["error"] = self.error
        if self.model:
            out.update(model=self.model.model, version=self.model.version, run_id=self.model.run_id)
        out["bad_version"] = self.bad_version
        return out

    @classmethod
    def from_dict(cls, stored: dict[str, Any] | None) -> Baseline:
        stored = stored or {}
        steps = tuple(PlannedStep.from_dict(s) for s in stored.get("steps") or ())
        model = None
        if stored.get("version") and stored.get("model"):
            model = ModelPin(model=str(stored["model"]), version=str(stored["version"]),
                             run_id=stored.get("run_id"), replaces=stored.get("bad_version"))
        return cls(steps, model, stored.get("bad_version"))
