"""The one small Protocol every rollback action implements, and the frozen values that cross layers.

Called by bot.incidents.runner (which builds executors from policy steps through executors.registry) and by nothing
else. An executor never imports Slack: it describes (plan) and does (execute) one change, and reports what
it did in a StepOutcome. Library errors (MLflow, Kubernetes, helm, git) are mapped into ExecutorError in
one place per executor module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True)
class Change:
    """One field of one resource, from old to new: what a human reviewer needs to see."""

    resource: str
    field: str
    old: str
    new: str

    def describe(self) -> str:
        return f"{self.resource} {self.field}: {self.old} → {self.new}"


@dataclass(frozen=True)
class StepContext:
    """What an executor may know about the incident it acts for.

    `pin` is the immutable target resolved when the incident opened (e.g. the MLflow version behind
    previous_champion at that moment). When set, plan() must use it instead of resolving again, so the
    rollback goes exactly where the warning said it would. `earlier` is empty while planning ahead (warning,
    dry run) and holds the outcomes of the steps already done when a step is planned right before it runs.
    """

    service: str
    incident_id: int
    pin: str | None = None
    earlier: tuple[StepOutcome, ...] = ()  # outcomes of this run's earlier steps (e.g. git_revert's new revision)
    before: tuple[str, ...] = ()  # executor names of the plan's earlier steps, also when planning ahead


@dataclass(frozen=True)
class ModelPin:
    """The registered model version a step rolls back to: the baseline the warning names."""

    model: str
    version: str
    run_id: str | None = None
    replaces: str | None = None  # the version served now, the bad one


@dataclass(frozen=True)
class StepPlan:
    """Exactly what execute() would change, with the command a human would type to do the same."""

    executor: str
    summary: str
    changes: tuple[Change, ...]
    command: str
    pin: str | None = None
    noop: bool = False
    data: dict[str, Any] = field(default_factory=dict)  # the executor's own, for its execute(); nobody else reads it
    model_pin: ModelPin | None = None  # set by a step that rolls a registered model back to a version
    # What is live on this layer now and how it got there, in the executor's words (plain text, `code` spans for
    # names; outside text unescaped): the warning's "What changed" line. None when the executor does not say.
    live: str | None = None


@dataclass(frozen=True)
class StepOutcome:
    """What execute() did. Errors travel inside the outcome; the runner never raises to its caller."""

    executor: str
    ok: bool
    summary: str
    changes: tuple[Change, ...] = ()
    error: str | None = None
    retryable: bool = False
    data: dict[str, Any] = field(default_factory=dict)  # the executor's own (later steps may read it)
    freeze_note: str | None = None  # what keeps this layer from moving forward again, said at the close
    traffic_to_bad: float | None = None  # percent of traffic left on the bad version (spec.reports_traffic)


class ExecutorError(Exception):
    """A rollback action failed in a way that retrying as-is will not fix."""

    retryable: bool = False


class TemporaryExecutorError(ExecutorError):
    """A rollback action failed in a way that may pass on a later try (5xx, timeout, conflict)."""

    retryable = True


class Executor(Protocol):
    """One rollback action.

    plan() reads the world and describes the change without making it; execute() makes exactly the
    planned change, reads the result back and returns an outcome. Both take keyword-only arguments and may
    raise ExecutorError; anything else they raise is a bug the runner reports as a failure.
    """

    name: ClassVar[str]

    def plan(self, *, context: StepContext) -> StepPlan: ...

    def execute(self, *, plan: StepPlan, context: StepContext) -> StepOutcome: ...
