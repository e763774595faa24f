"""Typed results that cross from bot.incidents to bot.slack, which words them: a service's numbers in
`/rollback report` (bot.incidents.report) and what a staging drill did (bot.incidents.drills)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bot.infra.store import Drill
from executors.base import StepPlan


@dataclass(frozen=True)
class ServiceReport:
    """One service's numbers over the window."""

    service: str
    incidents: int
    by_state: dict[str, int]  # state -> how many, for the window's incidents
    median: float | None  # alert to stable of the recovered ones, seconds
    worst: float | None
    judged: int  # recovered, not recovered or failed: the ones a target verdict applies to
    within: int  # recovered within the target
    target: float | None  # targets.recover, seconds; None: no target
    last_drill: Drill | None  # the newest drill ever, not only in the window


@dataclass
class Staging:
    """What a staging drill did: each step's plan, whether it ran, the time to recover and the restore."""

    ok: bool = False
    done: list[StepPlan] = field(default_factory=list)
    failed: str | None = None  # "2. helm: <why>"
    recover_seconds: float | None = None
    restored: bool | None = None
    restore_failed: str | None = None

    def detail(self) -> dict[str, Any]:
        return {"steps": [p.summary for p in self.done], "failed": self.failed,
                "restore_failed": self.restore_failed}
