"""What a rollback drill says: one line in the service's channel, and the answer to `/rollback drill`.

Called by bot.incidents.drills. Plans and errors come from executors reading git, helm, Kubernetes and MLflow:
shown inert.
"""

from __future__ import annotations

from bot.infra.plans import PlannedStep
from bot.infra.results import Staging
from bot.infra.store import Drill
from bot.slack.blocks import inert
from bot.slo.durations import format_duration
from bot.slo.policy import Service
from executors.base import StepPlan


def step_text(plan: StepPlan) -> str:
    """A step in a few words: "champion v5 → v4" for a model alias, else its first change."""
    if plan.model_pin is not None:
        alias = plan.changes[0].resource.rsplit("@", 1)[-1] if plan.changes else "alias"
        return f"{alias} v{plan.model_pin.replaces} → v{plan.model_pin.version}"
    if plan.changes:
        change = plan.changes[0]
        return f"{change.resource} {change.field} {change.old} → {change.new}"
    return plan.summary


def took(seconds: float) -> str:
    """Planning time as people read it: "0.4 s", or "38 ms" below a tenth of a second."""
    return f"{seconds:.1f} s" if seconds >= 0.1 else f"{seconds * 1000:.0f} ms"


def _steps(count: int) -> str:
    return f"{count} step" if count == 1 else f"{count} steps"


def drill_line(svc: Service, *, trigger: str, version: str | None, ok: bool, steps: list[PlannedStep],
               problems: list[str], seconds: float, staging: Staging | None, mention: str) -> str:
    """e.g. "Drill after v5's promotion: rollback ready, 1 step planned in 0.4 s: champion v5 → v4"."""
    if trigger == "promotion":
        head = f"Drill after v{inert(version or '?')}'s promotion"
    else:
        head = f"Drill of *{svc.name}* on request"
    planned = [s for s in steps if s.plan is not None and not s.error]
    what = "; ".join(inert(step_text(s.plan)) for s in planned if s.plan is not None)
    if not problems:
        line = (f":white_check_mark: {head}: rollback ready, {_steps(len(planned))} planned in {took(seconds)}"
                + (f": {what}" if what else ""))
    else:
        line = (f":x: {head}: rollback NOT ready, {len(steps) - len(problems)} of {_steps(len(steps))} planned in "
                f"{took(seconds)} — " + "; ".join(inert(p) for p in problems))
    if staging is not None:
        line += "\n" + staging_line(staging)
    if not ok:
        line += f"\n{mention + ': ' if mention else ''}the way back is broken before anyone needs it."
    return line


def staging_line(staging: Staging) -> str:
    if staging.failed and not staging.done:
        text = f"Staging drill failed: {inert(staging.failed)}"
    elif staging.failed:
        text = f"Staging drill: {_steps(len(staging.done))} ran, then {inert(staging.failed)}"
    else:
        assert staging.recover_seconds is not None
        text = (f"Staging drill: rolled back ({'; '.join(inert(step_text(p)) for p in staging.done)}), SLOs stable "
                f"{format_duration(staging.recover_seconds)} after the first step")
    if staging.restored:
        text += "; staging restored"
    elif staging.restore_failed:
        text += f"; restore failed: {inert(staging.restore_failed)}"
    return text


def drill_reply(drill: Drill, channel: str) -> str:
    verdict = "the rollback is ready" if drill.ok else "the rollback is NOT ready"
    return f"Drill done: {verdict} ({drill.steps_planned} of {_steps(drill.steps_total)} planned). Posted in <#{channel}>."
