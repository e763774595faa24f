"""What a (re)started bot picks up from the store before it evaluates anything.

Called once by bot.app's start. A `verifying` incident continues verifying; an `executing` one is halted as
interrupted, with what was done, what was running and a Resume button (a half-run plan is never re-run by
itself); an automatic rollback still in its grace period is re-armed; active warnings are redrawn (their
throttled edits died with the old process); and a verdict stored just before a crash gets its close.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bot.incidents.runs import Runs, first_not_done
from bot.incidents.states import ACTIVE, CLOSED_BY_VERDICT, State, move
from bot.infra.store import Incident, Store
from bot.slack import blocks, wording
from bot.slack.timeline import Timeline
from bot.slo.policy import Policy

UNCLOSED_WITHIN = 86_400.0  # seconds: older verdicts without a close are left as they are


class Recovery:
    def __init__(self, *, policy: Policy, store: Store, timeline: Timeline, runs: Runs,
                 schedule_auto: Callable[[Incident], None], clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.store = store
        self.timeline = timeline
        self.runs = runs
        self.schedule_auto = schedule_auto
        self.clock = clock

    def resume_in_flight(self) -> None:
        for incident in self.store.incidents_in((State.VERIFYING.value,)):
            svc = self.policy.services.get(incident.service)
            if svc:
                self.timeline.record(incident.id, "resumed", wording.VERIFICATION_CONTINUES)
                self.runs.schedule_verification(incident.id, svc)
        for incident in self.store.incidents_in((State.EXECUTING.value,)):
            self.interrupt(incident)
        for incident in self.store.incidents_in((State.OPEN.value,)):
            if incident.auto_at is not None:
                self.schedule_auto(incident)
        for incident in self.store.incidents_in(tuple(s.value for s in ACTIVE)):
            self.timeline.refresh_warning(incident.id)
        self.close_unclosed()

    def close_unclosed(self) -> None:
        """Close an incident whose verdict was stored but whose close (freeze, checklist, summary) never ran
        because the process died in between. The freeze and the version tag are idempotent."""
        for incident in self.store.incidents_in(tuple(s.value for s in CLOSED_BY_VERDICT)):
            svc = self.policy.services.get(incident.service)
            recent = (incident.finished_at or 0) > self.clock() - UNCLOSED_WITHIN
            if svc and recent and not any(e.kind == "summary" for e in self.store.events(incident.id)):
                self.timeline.record(incident.id, "resumed", wording.CLOSING_NOW)
                self.runs.finish(incident, svc)

    def interrupt(self, incident: Incident) -> None:
        """Halt a plan that was running when the old process died, and say in the thread what is known of it."""
        steps = self.store.steps(incident.id)
        done = {s.position for s in steps if s.status == "done"}
        svc = self.policy.services.get(incident.service)
        resume_from = first_not_done(steps, svc)
        running = [s for s in steps if s.status == "running"]
        moved = move(self.store, incident.id, State.EXECUTING, State.HALTED, resume_from=resume_from,
                     halt_kind="interrupted", error="the bot restarted while the plan was running")
        if moved is None:
            return
        names = blocks.step_names(svc.rollback) if svc else []
        self.timeline.record(incident.id, "interrupted", wording.interrupted(
            [names[i] for i in sorted(done) if i < len(names)],
            (running[-1].position, running[-1].executor) if running else None,
            names[resume_from:], resume_from, self.timeline.mention_approvers(incident.service)))
        self.timeline.refresh_warning(incident.id)
