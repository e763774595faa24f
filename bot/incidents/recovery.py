"""What a (re)started bot picks up from the store before it evaluates anything.

Called once by bot.incidents.service.IncidentService.start. A `verifying` incident continues verifying; an `executing` one is
halted as interrupted, with what was done, what was running and a Resume button (a half-run plan is never
re-run by itself); an automatic rollback still in its grace period is re-armed; active warnings are redrawn
(their throttled edits died with the old process); and a verdict stored just before a crash gets its close.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.infra.store import ACTIVE_STATES, Incident
from bot.slack import blocks

if TYPE_CHECKING:
    from bot.incidents.service import IncidentService

UNCLOSED_WITHIN = 86_400.0  # seconds: older verdicts without a close are left as they are


def resume_in_flight(bot: IncidentService) -> None:
    for incident in bot.store.incidents_in(("verifying",)):
        svc = bot.service(incident.service)
        if svc:
            bot.timeline.record(incident.id, "resumed", "Bot restarted: verification continues")
            bot.schedule_verification(incident.id, svc)
    for incident in bot.store.incidents_in(("executing",)):
        interrupt(bot, incident)
    for incident in bot.store.incidents_in(("open",)):
        if incident.auto_at is not None:
            bot.schedule_auto(incident)
    for incident in bot.store.incidents_in(ACTIVE_STATES):
        bot.timeline.refresh_warning(incident.id)
    close_unclosed(bot)


def close_unclosed(bot: IncidentService) -> None:
    """Close an incident whose verdict was stored but whose close (freeze, checklist, summary) never ran
    because the process died in between. The freeze and the version tag are idempotent."""
    for incident in bot.store.incidents_in(("recovered", "verify_failed", "failed")):
        svc = bot.service(incident.service)
        recent = (incident.finished_at or 0) > bot.clock() - UNCLOSED_WITHIN
        if svc and recent and not any(e.kind == "summary" for e in bot.store.events(incident.id)):
            bot.timeline.record(incident.id, "resumed", "Bot restarted before this incident was closed: closing it now")
            bot.finish(incident, svc)


def interrupt(bot: IncidentService, incident: Incident) -> None:
    """Halt a plan that was running when the old process died, and say in the thread what is known of it."""
    steps = bot.store.steps(incident.id)
    done = {s.position for s in steps if s.status == "done"}
    svc = bot.service(incident.service)
    total = len(svc.rollback) if svc else 0
    resume_from = next((i for i in range(total) if i not in done), total)
    running = [s for s in steps if s.status == "running"]
    moved = bot.store.transition(incident.id, ("executing",), "halted", resume_from=resume_from,
                                 halt_kind="interrupted", error="the bot restarted while the plan was running")
    if moved is None:
        return
    names = blocks.step_names(svc.rollback) if svc else []
    done_text = ", ".join(names[i] for i in sorted(done) if i < len(names)) or "none"
    was_running = (f" Step {running[-1].position + 1} (`{running[-1].executor}`) was running when it stopped: "
                   "its effect is unknown, so Resume plans it again from what is there now." if running else "")
    not_run = ", ".join(names[resume_from:]) or "none"
    bot.timeline.record(incident.id, "interrupted",
                        f":warning: The bot restarted in the middle of the plan. Done: {done_text}.{was_running} "
                        f"Not done: {not_run}. Nothing was re-run: an approver chooses *Resume* (from step "
                        f"{resume_from + 1}) or *Stop*. {bot.timeline.mention_approvers(incident.service)}")
    bot.timeline.refresh_warning(incident.id)
