"""Plan runs and what follows them: run an approved plan step by step, halt it when a step fails, verify the SLOs
until they are back, and close the incident.

Called by bot.incidents.service (an approval, Retry step / Resume) and by bot.incidents.recovery, which runs the
durable work rows (a plan run, the verification ticks, a close) that `run_soon`, `schedule_verification` and
`close_soon` leave for whichever replica takes them (bot.infra.replica). Who may run a plan is
asked of the one rule in bot.incidents.authorization once more right before anything reaches an executor; a
run that fails outside its steps halts the incident (Retry step / Stop), so nothing stays `executing` with
nothing running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from bot.incidents.authorization import Authorization
from bot.incidents.close import Closer
from bot.incidents.escalation import Escalation
from bot.incidents.runner import Runner, stored_outcome
from bot.incidents.states import CLOSE, PLAN, VERIFY, State, move
from bot.incidents.verify import Verifier
from bot.infra.actors import AUTO_ACTOR
from bot.infra.plans import Baseline
from bot.infra.replica import Replica
from bot.infra.store import Fenced, Incident, Step, Store
from bot.slack import wording
from bot.slack.timeline import Timeline
from bot.slo.gate import Gate
from bot.slo.policy import Policy, Service
from executors.base import StepOutcome

log = logging.getLogger(__name__)


class Runs:
    def __init__(self, *, policy: Policy, store: Store, timeline: Timeline, runner: Runner, authz: Authorization,
                 verifier: Verifier, closer: Closer, gate: Gate, work: Replica,
                 clock: Callable[[], float] = time.time, escalation: Escalation | None = None) -> None:
        self.escalation = escalation  # a page sent for the incident is resolved at its close
        self.policy = policy
        self.store = store
        self.timeline = timeline
        self.runner = runner
        self.authz = authz
        self.verifier = verifier
        self.closer = closer
        self.gate = gate
        self.work = work
        self.clock = clock

    def run_soon(self, incident_id: int) -> None:
        """Leave the plan run of an incident just moved to `executing` for a replica to take (a durable row); if
        that fails, halt it at once so it never sits in `executing` with nothing running."""
        try:
            self.work.schedule(PLAN, incident_id)
        except Exception as exc:  # noqa: BLE001 - e.g. the database is unreachable: the incident must not be stuck
            self.halt_unexpected(incident_id, exc)

    def execute(self, incident_id: int) -> None:
        """Run the approved plan (a replica's work thread), from the first step not yet done. Never raises but
        Fenced: the outcome goes to the thread, and any failure around a step (the freeze, the store, the
        timeline) halts the incident with its cause, *Retry step* and *Stop*. Fenced (this replica lost its
        lease meanwhile) ends the run where it is: the replica that took the plan over halts it as interrupted."""
        try:
            self._execute(incident_id)
        except Fenced:
            raise
        except Exception as exc:  # noqa: BLE001 - the invariant: no incident stays executing with nothing running
            log.exception("incident %s: the plan run failed outside its steps", incident_id)
            self.halt_unexpected(incident_id, exc)

    def _execute(self, incident_id: int) -> None:
        incident = self.store.incident(incident_id)
        svc = self.policy.services.get(incident.service)
        if incident.state != State.EXECUTING:
            return
        if svc is None:
            self.halt(incident_id, 0, f"service `{incident.service}` is no longer in the policy")
            return
        allowed, why = self.authz.may_run(incident, svc)
        if not allowed:  # the one rule, checked right before anything can reach an executor
            self.store.audit(actor=incident.approved_by or AUTO_ACTOR, action="execute", result="refused",
                             incident_id=incident_id, detail={"reason": why})
            self.halt(incident_id, incident.resume_from or 0, f"not authorized: {why}")
            return
        baseline = Baseline.from_dict(incident.baseline)
        # Auto-promotion stops as soon as a rollback runs. The incident stops being active (recovered) a moment
        # before the close freezes the service and tags the bad version; without this the gate could promote
        # the bad @candidate again in between (seen in the six-step story test).
        self.gate.freeze(svc, incident_id=incident_id, bad_version=baseline.bad_version, block=False,
                         reason=wording.in_progress_freeze(incident_id))

        def record(kind: str, text: str, data: dict[str, Any]) -> None:
            self.timeline.record(incident_id, kind, text, data)

        start = incident.resume_from or 0
        outcome = self.runner.run(svc, incident_id, baseline.pins, record, start=start,
                                  earlier=self._earlier_outcomes(incident_id, start))
        now = self.clock()
        if not outcome.ok:
            halted = move(self.store, incident_id, State.EXECUTING, State.HALTED, resume_from=outcome.position,
                          halt_kind="failed", error=f"{outcome.failed}: {outcome.error}")
            self.timeline.record(incident_id, "failed", wording.run_failed(
                outcome.failed, outcome.error, outcome.done, outcome.not_run,
                self.timeline.mention_approvers(svc.name)))
            if halted:
                self.timeline.refresh_warning(incident_id)
            return
        moved = move(self.store, incident_id, State.EXECUTING, State.VERIFYING, executed_at=now, resume_from=None,
                     halt_kind=None, error=None)
        if moved is None:
            return
        self.timeline.record(incident_id, "executed", wording.executed(now - (moved.approved_at or now), svc))
        self.timeline.refresh_warning(incident_id)
        self.verifier.start(moved, svc)
        self.schedule_verification(incident_id, svc)

    def halt_unexpected(self, incident_id: int, exc: BaseException) -> None:
        """Halt an `executing` incident after a failure outside its steps, from the first step not done."""
        try:
            incident = self.store.incident(incident_id)
            svc = self.policy.services.get(incident.service)
            self.halt(incident_id, first_not_done(self.store.steps(incident_id), svc),
                      f"internal error around the plan: {type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001 - the store itself is failing; restart pick-up halts it later
            log.exception("incident %s: could not halt it after a failure", incident_id)

    def halt(self, incident_id: int, resume_from: int, error: str) -> None:
        halted = move(self.store, incident_id, State.EXECUTING, State.HALTED, resume_from=resume_from,
                      halt_kind="failed", error=error)
        if halted is None:
            return
        self.timeline.record(incident_id, "failed", wording.halted(resume_from + 1, error,
                                                                   self.timeline.mention_approvers(halted.service)))
        self.timeline.refresh_warning(incident_id)

    def _earlier_outcomes(self, incident_id: int, start: int) -> list[StepOutcome]:
        latest: dict[int, StepOutcome | None] = {}
        for step in self.store.steps(incident_id):
            if step.position < start and step.status == "done":
                latest[step.position] = stored_outcome(step.outcome)
        return [o for p in sorted(latest) if (o := latest[p]) is not None]

    # -- verification and the close --------------------------------------------------------------------------
    def schedule_verification(self, incident_id: int, svc: Service) -> None:
        self.work.schedule(VERIFY, incident_id, every=svc.verify.every, keep_here=True)

    def verify_tick(self, incident_id: int) -> float | None:
        """One verification tick; the seconds until the next one, or None once the verdict is in and closed."""
        incident = self.store.incident(incident_id)
        svc = self.policy.services.get(incident.service)
        if svc is None or incident.state != State.VERIFYING:
            return None
        if self.verifier.tick(incident_id, svc):
            self.finish(self.store.incident(incident_id), svc)
            return None
        return svc.verify.every

    def close_guarded(self, incident_id: int) -> None:
        """Close an incident that ended without verification (Stop) now, with a close row due a lease ttl later
        as the guard: if this replica dies before the close is done, another one closes it."""
        self.work.schedule(CLOSE, incident_id, due_in=self.work.ttl)
        self.close(incident_id)
        self.work.cancel(CLOSE, incident_id)

    def close(self, incident_id: int) -> None:
        """Close an incident whose end is stored (freeze, checklist, summary), unless its summary is written."""
        incident = self.store.incident(incident_id)
        svc = self.policy.services.get(incident.service)
        if svc and not any(e.kind == "summary" for e in self.store.events(incident_id)):
            self.finish(incident, svc)

    def finish(self, incident: Incident, svc: Service) -> None:
        self.closer.close(incident, svc)
        if self.escalation is not None:
            self.escalation.ended(incident.id)


def first_not_done(steps: Sequence[Step], svc: Service | None) -> int:
    """Where a halted or interrupted plan goes on: the first of the service's steps not done."""
    done = {s.position for s in steps if s.status == "done"}
    total = len(svc.rollback) if svc else 0
    return next((i for i in range(total) if i not in done), total)
