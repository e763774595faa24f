"""What a replica does with the durable work it takes, and what a (re)started one adopts.

bot.app registers `plan`, `verify`, `auto` and `close` as the replica's handlers (bot.infra.replica runs them).
Each is told whether the row was taken over from a replica that died (or was paused past its lease):

- a plan taken over is halted as interrupted, with what was done, what was running and a Resume button (a
  half-run plan is never re-run by itself); a fresh one runs;
- a verification taken over says so in the thread and goes on in the same progress message;
- an automatic rollback runs when its grace period ends (whoever holds the row);
- a close runs once; a verdict stored just before a crash gets its close from the verification row.

`adopt_in_flight` (at start, and every evaluation cycle for what is older than a lease ttl) gives a row to
in-flight incidents that have none (a database from before replicas; a replica that died between moving an
incident and writing its row), leaving existing rows alone; at start it also redraws active warnings (their
throttled edits died with the old process). It never touches work a live replica holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bot.incidents.runs import Runs, first_not_done
from bot.incidents.states import ACTIVE, AUTO, CLOSE, CLOSED_BY_VERDICT, PLAN, VERIFY, State, move
from bot.infra.replica import Replica
from bot.infra.store import Incident, Store
from bot.slack import blocks, wording
from bot.slack.timeline import Timeline
from bot.slo.policy import Policy

INTERRUPTED = "the bot running the plan stopped (restarted, killed or cut off) before it finished"
UNCLOSED_WITHIN = 86_400.0  # seconds: older verdicts without a close are left as they are


class Recovery:
    def __init__(self, *, policy: Policy, store: Store, timeline: Timeline, runs: Runs, work: Replica,
                 auto_approve: Callable[[int], None], clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.store = store
        self.timeline = timeline
        self.runs = runs
        self.work = work
        self.auto_approve = auto_approve
        self.clock = clock

    # -- the handlers of the durable work ---------------------------------------------------------------
    def plan(self, incident_id: int, taken_over: bool) -> None:
        if taken_over:
            self.interrupt(self.store.incident(incident_id))
        else:
            self.runs.execute(incident_id)

    def verify(self, incident_id: int, taken_over: bool) -> float | None:
        incident = self.store.incident(incident_id)
        if incident.state in CLOSED_BY_VERDICT:  # the verdict was stored, its close may not have run
            self.runs.close(incident_id)
            return None
        if incident.state != State.VERIFYING:
            return None
        if taken_over:  # a line in the thread; the warning has not changed (its edit would delay the progress one)
            self.timeline.record(incident_id, "resumed", wording.VERIFICATION_CONTINUES)
        return self.runs.verify_tick(incident_id)

    def auto(self, incident_id: int, taken_over: bool) -> None:
        self.auto_approve(incident_id)

    def close(self, incident_id: int, taken_over: bool) -> None:
        self.runs.close(incident_id)

    # -- at start ----------------------------------------------------------------------------------------
    def adopt_in_flight(self, older_than: float = 0.0, at_start: bool = True) -> None:
        """Give every in-flight incident the row it needs, without touching rows that exist. `older_than`: only
        incidents whose last move is at least that many seconds old (a live replica may be writing the row of a
        younger one right now). `at_start` also closes recent verdicts left unclosed by a bot from before
        replicas and redraws the active warnings (a replica's own closes are guarded by their rows)."""
        settled = self.clock() - older_than
        for incident in self.store.incidents_in((State.VERIFYING.value,)):
            svc = self.policy.services.get(incident.service)
            if svc and (incident.executed_at or 0) <= settled and not self.store.pending_work(incident.id):
                self.work.adopt(VERIFY, incident.id, every=svc.verify.every, interrupted=True)
        for incident in self.store.incidents_in((State.EXECUTING.value,)):
            if (incident.approved_at or 0) <= settled and not self.store.pending_work(incident.id):
                self.work.adopt(PLAN, incident.id, interrupted=True)
        for incident in self.store.incidents_in((State.OPEN.value,)):
            if incident.auto_at is not None and incident.opened_at <= settled:
                self.work.adopt(AUTO, incident.id, due_in=max(0.0, incident.auto_at - self.clock()))
        if not at_start:
            return
        for incident in self.store.incidents_in(tuple(s.value for s in CLOSED_BY_VERDICT)):
            recent = (incident.finished_at or 0) > self.clock() - UNCLOSED_WITHIN
            closing = self.store.pending_work(incident.id)  # a live replica's verification closing it now
            if recent and not closing and not any(e.kind == "summary" for e in self.store.events(incident.id)):
                self.work.adopt(CLOSE, incident.id, interrupted=True)
        for incident in self.store.incidents_in(tuple(s.value for s in ACTIVE)):
            self.timeline.refresh_warning(incident.id)

    def interrupt(self, incident: Incident) -> None:
        """Halt a plan that was running when its replica died, and say in the thread what is known of it."""
        steps = self.store.steps(incident.id)
        done = {s.position for s in steps if s.status == "done"}
        svc = self.policy.services.get(incident.service)
        resume_from = first_not_done(steps, svc)
        running = [s for s in steps if s.status == "running"]
        moved = move(self.store, incident.id, State.EXECUTING, State.HALTED, resume_from=resume_from,
                     halt_kind="interrupted", error=INTERRUPTED)
        if moved is None:
            return
        names = blocks.step_names(svc.rollback) if svc else []
        self.timeline.record(incident.id, "interrupted", wording.interrupted(
            [names[i] for i in sorted(done) if i < len(names)],
            (running[-1].position, running[-1].executor) if running else None,
            names[resume_from:], resume_from, self.timeline.mention_approvers(incident.service)))
        self.timeline.refresh_warning(incident.id)
