"""IncidentService: the domain's front door. Handlers, the Alertmanager intake and the evaluation cycle call it
with plain values; it opens incidents and makes the decisions people take on them (bot.incidents.states has
the diagram), each a conditional move in the store and an event on the timeline.

Its collaborators are handed in (bot.app wires them): the store, the timeline, the one authorization rule,
the planner, the plan runs and the scheduler. Who may move an incident towards an executor is decided by
bot.incidents.authorization, asked here at each click and again by bot.incidents.runs right before a plan
runs. Returns Reply values for the person who asked; what happened goes to the incident's thread, worded by
bot.slack.wording.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bot.incidents.authorization import Authorization, arms_automatic
from bot.incidents.escalation import Escalation
from bot.incidents.planning import Planner
from bot.incidents.replies import Reply
from bot.incidents.runs import Runs
from bot.incidents.states import AUTO, State, move
from bot.infra import metrics
from bot.infra.actors import AUTO_ACTOR
from bot.infra.plans import Baseline
from bot.infra.replica import Replica
from bot.infra.store import Incident, Store
from bot.slack import blocks, wording
from bot.slack.timeline import Timeline
from bot.slo.evaluation import Reading
from bot.slo.policy import Policy, Service


class IncidentService:
    def __init__(self, *, policy: Policy, store: Store, timeline: Timeline, authz: Authorization, planner: Planner,
                 runs: Runs, work: Replica, clock: Callable[[], float] = time.time,
                 escalation: Escalation | None = None) -> None:
        self.escalation = escalation  # re-mentions and pages when nobody acts on a warning (escalate:)
        self.policy = policy
        self.store = store
        self.timeline = timeline
        self.authz = authz
        self.planner = planner
        self.runs = runs
        self.work = work
        self.clock = clock

    # -- lookups -----------------------------------------------------------------------------------------
    def service(self, name: str) -> Service | None:
        return self.policy.services.get(name)

    def service_of(self, incident_id: int) -> Service | None:
        incident = self.store.find_incident(incident_id)
        return self.service(incident.service) if incident else None

    def channel_of(self, incident_id: int) -> str | None:
        incident = self.store.find_incident(incident_id)
        return incident.channel if incident else None

    # -- opening -----------------------------------------------------------------------------------------
    def open_detected(self, svc: Service, reading: Reading) -> Incident:
        """A breach the bot found itself (bot.incidents.detection)."""
        return self.open_incident(svc, reading, source="detection")

    def open_incident(self, svc: Service, reading: Reading | None, *, source: str = "detection",
                      requested_by: str | None = None, baseline: Baseline | None = None) -> Incident:
        """Open (or return the already open) incident for a service and post its warning.

        `source` is what opened it: detection (the bot's own evaluation), alertmanager (an authenticated
        alert) or request (a person's /rollback). Only the first two may arm the automatic rollback."""
        existing = self.store.active_incident(svc.name)
        if existing:
            return existing
        detail: dict[str, Any] = {}
        if reading is not None:
            detail = {"value": reading.value, "target": reading.target, "status": reading.status,
                      "words": reading.detail}
        auto_at = self.clock() + svc.auto_rollback_grace if arms_automatic(svc, source) else None
        first = None
        if source == "request" and requested_by and svc.two_person and self.authz.is_approver(svc, requested_by)[0]:
            first = requested_by  # an approver's own request is the first of the two approvals
        baseline = baseline or self.planner.baseline(svc)
        changed = self._promotion_note(svc, baseline.bad_version)
        if changed:
            detail["changed"] = changed
        incident = self.store.open_incident(
            service=svc.name, trigger=reading.slo if reading else "manual", detail=detail,
            baseline=baseline.to_dict(),
            breach_started_at=reading.breach_since if reading else None,
            channel=svc.channel, requested_by=requested_by, auto_at=auto_at, armed_by=source, first_approver=first)
        if incident is None:  # another thread or process opened one between our check and our insert
            existing = self.store.active_incident(svc.name)
            assert existing is not None
            return existing
        if auto_at is not None:  # the timer is a row before anything else can fail or the replica die
            self.schedule_auto(incident)
        if reading is not None:
            self.timeline.record(incident.id, "detected", wording.detected(reading))
        else:
            self.timeline.record(incident.id, "requested", wording.requested(
                requested_by, first_approval=first is not None, two_person=svc.two_person))
        self.store.audit(actor=requested_by or AUTO_ACTOR, action="open", result="ok", incident_id=incident.id,
                         detail={"service": svc.name, "trigger": incident.trigger, "source": source})
        incident = self.timeline.post_warning(incident)
        if self.escalation is not None:
            self.escalation.arm(incident, svc)
        if auto_at is not None:
            self.timeline.record(incident.id, "auto_armed", wording.auto_armed(auto_at, svc.auto_rollback_grace))
        return incident

    def _promotion_note(self, svc: Service, version: str | None) -> dict[str, str]:
        """"What changed" from the bot's own record: the gate's promotion of the version served now, if it made it."""
        if not version:
            return {}
        promotion = self.store.last_promotion(svc.name, version)
        return {"mlflow_alias": wording.promoted_by_gate(promotion["at"])} if promotion else {}

    def request_rollback(self, service: str, user: str, channel: str, *, to: str | None = None) -> Reply:
        """`/rollback <service> [--to V]`: the warning-with-buttons flow, always in the service's channel. It
        never runs anything itself: approvers confirm it with the button (a person's request never arms the
        automatic mode)."""
        svc = self.service(service)
        if svc is None:
            return Reply(False, wording.unknown_service(service, self.policy.services))
        existing = self.store.active_incident(svc.name)
        if existing:
            return Reply(True, wording.already_open(svc.name, existing.id, blocks.status_line(existing),
                                                    existing.channel))
        baseline = None
        if to is not None:
            baseline, problem = self.planner.baseline_to(svc, to)
            if problem:
                self.store.audit(actor=user, action="open", result="refused",
                                 detail={"service": svc.name, "to": to, "reason": problem})
                return Reply(False, problem)
        incident = self.open_incident(svc, None, source="request", requested_by=user, baseline=baseline)
        return Reply(True, wording.request_posted(svc.name, incident.id, here=channel == svc.channel,
                                                  channel=svc.channel))

    def plan_preview(self, service: str, user: str, *, to: str | None = None) -> Reply:
        """`/rollback <service> --dry-run`: post the plan into the service's channel; change nothing."""
        svc = self.service(service)
        if svc is None:
            return Reply(False, wording.unknown_service(service, self.policy.services))
        if to is not None:
            base, problem = self.planner.baseline_to(svc, to)
            if problem or base is None:
                return Reply(False, problem or "no plan")
            steps = list(base.steps)
        else:
            steps = self.planner.service_plan(svc)
        self.store.audit(actor=user, action="dry_run", result="ok",
                         detail={"service": svc.name, "steps": [s.to_dict() for s in steps]})
        self.timeline.say(svc.channel, wording.service_dry_run(svc.name, user, steps))
        return Reply(True, wording.plan_posted(svc.name, svc.channel))

    # -- decisions ---------------------------------------------------------------------------------------
    def authorize(self, incident_id: int, user: str, action: str = "approve") -> tuple[Incident | None, Reply | None]:
        """The incident and None if `user` may act on it; otherwise a refusal to show them (and the audit log)."""
        incident = self.store.find_incident(incident_id)
        if incident is None:
            self.store.audit(actor=user, action=action, result="refused", incident_id=None,
                             detail={"reason": "unknown incident", "incident": incident_id})
            return None, Reply(False, wording.no_incident(incident_id))
        svc = self.service(incident.service)
        if svc is None:
            self.store.audit(actor=user, action=action, result="refused", incident_id=incident_id,
                             detail={"reason": "service not in the policy"})
            return None, Reply(False, wording.not_in_policy(incident.service))
        refusal = self.check_approver(svc, user, action, incident_id)
        return (None, refusal) if refusal else (incident, None)

    def check_approver(self, svc: Service, user: str, action: str, incident_id: int | None = None) -> Reply | None:
        allowed, reason = self.authz.is_approver(svc, user)
        if allowed:
            return None
        return self._refuse(svc, user, action, incident_id, reason)

    def check_admin(self, user: str, action: str) -> Reply | None:
        """None if `user` is one of the policy's admins; otherwise the (audited) refusal to show them."""
        allowed, reason = self.authz.is_admin(self.policy.admins, user)
        if allowed:
            return None
        self.store.audit(actor=user, action=action, result="refused", detail={"reason": reason, "scope": "all"})
        return Reply(False, wording.refused(action, reason, self.policy.admins) if self.policy.admins
                     else f"Not done ({action}): {reason}.")

    def _refuse(self, svc: Service, user: str, action: str, incident_id: int | None, reason: str) -> Reply:
        self.store.audit(actor=user, action=action, result="refused", incident_id=incident_id,
                         detail={"reason": reason, "service": svc.name})
        return Reply(False, wording.refused(action, reason, svc.approvers))

    def press_approve(self, incident_id: int, user: str) -> Reply:
        """The Roll back button. With `confirm: dialog` Slack showed the confirm already: approve. With `confirm:
        typed` nothing moves yet: an approver of an open incident gets the modal to type the service name in
        (Reply.view), whose submission approves; anyone else gets the refusal."""
        svc = self.service_of(incident_id)
        if svc is None or svc.confirm != "typed":
            return self.approve(incident_id, user)
        incident, refusal = self.authorize(incident_id, user)
        if refusal or incident is None:
            return refusal or Reply(False, "Not allowed.")
        if incident.state != State.OPEN:  # an old copy of the message: nothing left to confirm
            return Reply(False, wording.incident_status(incident_id, blocks.status_line(incident)))
        return Reply(True, "", view=blocks.confirm_modal(incident_id=incident_id, service=svc.name,
                                                         baseline=blocks.baseline_text(incident)))

    def approve(self, incident_id: int, user: str) -> Reply:
        """An approver's confirmed Roll back: runs the plan, or with two_person records the first approval."""
        incident, refusal = self.authorize(incident_id, user)
        if refusal or incident is None:
            return refusal or Reply(False, "not allowed")
        svc = self.service(incident.service)
        assert svc is not None
        if incident.state != State.OPEN:
            return self._past_approval(incident_id, user)
        decision = self.authz.approval(incident, svc, user)
        approvers = self.timeline.mention_approvers(incident.service)
        if decision.outcome == "refuse" and decision.reason == "two_person":
            self.store.audit(actor=user, action="approve", result="refused", incident_id=incident_id,
                             detail={"reason": "two_person"})
            return Reply(False, wording.second_approver_needed(approvers))
        if decision.outcome == "refuse":
            return self._refuse(svc, user, "approve", incident_id, decision.reason)
        if decision.outcome == "first":
            if self.store.set_if(incident_id, State.OPEN.value, "first_approver", None, user) is None:
                return self.approve(incident_id, user)  # someone else approved first a moment ago: decide again
            self.store.audit(actor=user, action="approve_first", result="ok", incident_id=incident_id)
            self.timeline.record(incident_id, "first_approval", wording.first_approval(user, approvers))
            self.timeline.refresh_warning(incident_id)
            self._acted(incident_id)
            return Reply(True, wording.FIRST_APPROVAL_REPLY)
        moved = move(self.store, incident_id, State.OPEN, State.EXECUTING, approved_by=user,
                     approved_at=self.clock(), auto_at=None,
                     first_approver_other_than=user if svc.two_person else None)
        if moved is None:
            return self._past_approval(incident_id, user)
        self.work.cancel(AUTO, incident_id)
        self.store.audit(actor=user, action="approve", result="ok", incident_id=incident_id)
        self.timeline.record(incident_id, "approved",
                             wording.approved(user, moved.first_approver if svc.two_person else None))
        self.timeline.refresh_warning(incident_id)
        self.runs.run_soon(incident_id)
        self._acted(incident_id)
        return Reply(True, wording.rolling_back(moved.service, incident_id))

    def _acted(self, incident_id: int) -> None:
        if self.escalation is not None:
            self.escalation.acted(incident_id)

    def _past_approval(self, incident_id: int, user: str) -> Reply:
        current = self.store.incident(incident_id)
        self.store.audit(actor=user, action="approve", result="ignored", incident_id=incident_id,
                         detail={"state": current.state})
        return Reply(False, wording.past_approval(incident_id, blocks.status_line(current)))

    def schedule_auto(self, incident: Incident) -> None:
        self.work.schedule(AUTO, incident.id, due_in=max(0.0, (incident.auto_at or 0) - self.clock()))

    def auto_approve(self, incident_id: int) -> None:
        """The grace period of an automatic rollback ran out with nobody pressing Stop: run the plan."""
        incident = self.store.find_incident(incident_id)
        svc = self.service(incident.service) if incident else None
        if incident is None or svc is None or not arms_automatic(svc, incident.armed_by or ""):
            return  # never armed by detection or Alertmanager: only a person's approval runs it
        moved = move(self.store, incident_id, State.OPEN, State.EXECUTING, auto=True, approved_by=AUTO_ACTOR,
                     approved_at=self.clock(), auto_at=None)
        if moved is None:
            return  # approved, dismissed or stopped meanwhile
        self.store.audit(actor=AUTO_ACTOR, action="approve", result="ok", incident_id=incident_id,
                         detail={"automatic": True})
        self.timeline.record(incident_id, "approved", wording.AUTO_APPROVED)
        self.timeline.refresh_warning(incident_id)
        self.runs.run_soon(incident_id)
        self._acted(incident_id)

    def dismiss(self, incident_id: int, user: str) -> Reply:
        incident, refusal = self.authorize(incident_id, user, action="dismiss")
        if refusal or incident is None:
            return refusal or Reply(False, "not allowed")
        moved = move(self.store, incident_id, State.OPEN, State.DISMISSED, approved_by=user, auto_at=None)
        if moved is None:
            return Reply(False, wording.cannot_dismiss(incident_id,
                                                       blocks.status_line(self.store.incident(incident_id))))
        self.work.cancel(AUTO, incident_id)
        self.store.audit(actor=user, action="dismiss", result="ok", incident_id=incident_id)
        self.timeline.record(incident_id, "dismissed", wording.dismissed(user))
        self.timeline.refresh_warning(incident_id)
        if self.escalation is not None:
            self.escalation.ended(incident_id)
        metrics.INCIDENTS.labels(outcome=State.DISMISSED.value).inc()
        return Reply(True, wording.dismissed_reply(incident_id))

    def stop(self, incident_id: int, user: str) -> Reply:
        """"Stop": disarm an automatic rollback still in its grace period, or end a halted plan as failed."""
        incident, refusal = self.authorize(incident_id, user, action="stop")
        if refusal or incident is None:
            return refusal or Reply(False, "not allowed")
        if incident.state == State.OPEN:
            if self.store.set_if(incident_id, State.OPEN.value, "auto_at", incident.auto_at, None) is None:
                return Reply(False, wording.no_auto_to_stop(incident_id))
            self.work.cancel(AUTO, incident_id)
            self.store.audit(actor=user, action="stop_auto", result="ok", incident_id=incident_id)
            self.timeline.record(incident_id, "auto_stopped", wording.auto_stopped(user))
            self.timeline.refresh_warning(incident_id)
            self._acted(incident_id)
            return Reply(True, wording.AUTO_STOPPED_REPLY)
        moved = move(self.store, incident_id, State.HALTED, State.FAILED)
        if moved is None:
            return Reply(False, wording.nothing_to("stop", incident_id, blocks.status_line(incident)))
        self.store.audit(actor=user, action="stop", result="ok", incident_id=incident_id)
        self.timeline.record(incident_id, "stopped", wording.stopped(user, moved.error))
        self.runs.close_guarded(incident_id)
        return Reply(True, wording.stopped_reply(incident_id))

    def retry(self, incident_id: int, user: str) -> Reply:
        """"Retry step" after a failure, "Resume" after a restart: run the plan on from the first step not done."""
        incident, refusal = self.authorize(incident_id, user, action="retry")
        if refusal or incident is None:
            return refusal or Reply(False, "not allowed")
        svc = self.service(incident.service)
        assert svc is not None
        allowed, why = self.authz.may_run(incident, svc)
        if incident.state == State.HALTED and not allowed:
            return self._refuse(svc, user, "retry", incident_id, why)
        moved = move(self.store, incident_id, State.HALTED, State.EXECUTING)
        if moved is None:
            return Reply(False, wording.nothing_to("retry", incident_id, blocks.status_line(incident)))
        verb = "Resumed" if incident.halt_kind == "interrupted" else "Retry"
        position = (incident.resume_from or 0) + 1
        self.store.audit(actor=user, action="retry", result="ok", incident_id=incident_id,
                         detail={"from_step": position})
        self.timeline.record(incident_id, "retry", wording.retried(verb, position, user))
        self.timeline.refresh_warning(incident_id)
        self.runs.run_soon(incident_id)
        return Reply(True, wording.retried_reply(verb, incident_id, position))

    def dry_run(self, incident_id: int, user: str) -> Reply:
        """Post exactly what the plan would change into the thread; change nothing. The plan is computed at
        most once per incident per planning.DRY_RUN_SHARED_FOR and shared by every Dry run in that time."""
        incident = self.store.find_incident(incident_id)
        svc = self.service(incident.service) if incident else None
        if incident is None or svc is None:
            return Reply(False, wording.no_incident(incident_id))
        steps = self.planner.incident_plan(svc, incident_id, Baseline.from_dict(incident.baseline).pins)
        self.store.audit(actor=user, action="dry_run", result="ok", incident_id=incident_id,
                         detail={"steps": [s.to_dict() for s in steps]})
        self.timeline.record(incident_id, "dry_run", wording.incident_dry_run(user, steps))
        return Reply(True, wording.DRY_RUN_POSTED)
