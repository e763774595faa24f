"""IncidentService: the domain's front door. Handlers call it with plain values; it moves incidents through
their states, each move a conditional transition in the store and an event on the timeline:

    open -> executing -> verifying -> recovered | verify_failed
    open -> dismissed
    executing -> halted (a step failed, or the bot restarted mid-plan) -> executing (Retry step / Resume)
                                                                      -> failed (Stop)

Called by handlers/ (requests from Slack), by the scheduler (evaluation, verification, plan runs, the
automatic rollback after its grace period) and by the CLI. Returns Reply values for the person who asked;
failures go to the incident's thread. Who may move an incident towards an executor is decided by the one
rule in bot.incidents.authorization, asked at each click and again right before a plan runs; a plan run that fails
outside its steps halts the incident (Retry step / Stop), so nothing stays `executing` with nothing running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from bot.incidents import checklist, recovery
from bot.incidents.approvers import Approvers
from bot.incidents.authorization import Authorization, arms_automatic
from bot.incidents.replies import Reply
from bot.incidents.runner import Runner, stored_outcome
from bot.incidents.verify import RECOVERED, Verifier
from bot.infra import metrics
from bot.infra.actors import AUTO_ACTOR
from bot.infra.model_registry import ModelRegistry
from bot.infra.prom import Prometheus
from bot.infra.scheduler import Scheduler
from bot.infra.store import Incident, Store
from bot.slack import blocks
from bot.slack.slack_out import SlackOut
from bot.slack.timeline import Timeline
from bot.slo.durations import format_duration
from bot.slo.evaluation import Evaluator, Reading
from bot.slo.gate import Gate
from bot.slo.policy import Policy, Service
from executors.registry import Clients, Registry, default_registry

log = logging.getLogger(__name__)

SEEN_REQUESTS_KEPT = 3600.0  # seconds a Slack request's key is kept to spot its retries and replays
DRY_RUN_SHARED_FOR = 30.0  # seconds a dry run's plan is reused by the next Dry run of the same incident
OPENERS = 8
OPEN_WAIT = 2.0  # seconds an evaluation cycle waits for the incidents it opens (planned on their own threads)



def auto_job(incident_id: int) -> str:
    """The scheduler job that runs an automatic rollback when its grace period ends."""
    return f"auto-{incident_id}"


def verify_job(incident_id: int) -> str:
    """The scheduler job that ticks an incident's verification."""
    return f"verify-{incident_id}"

class IncidentService:
    def __init__(self, *, policy: Policy, store: Store, prom: Prometheus, slack: SlackOut, mlflow: Any,
                 scheduler: Scheduler, registry: Registry | None = None, clients: Clients | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.store = store
        self.prom = prom
        self.slack = slack
        self.scheduler = scheduler
        self.clock = clock
        self.timeline = Timeline(store, slack, self.service)
        self.approvers = Approvers(slack.usergroup_users)
        self.authz = Authorization(self.approvers)
        # Opening an incident plans its rollback (git, helm, Kubernetes, MLflow): done on threads of its own so
        # one slow system delays only that service's warning, never the evaluation of the others.
        self._openers = ThreadPoolExecutor(OPENERS, thread_name_prefix="open")
        self._opening: set[str] = set()
        self._opening_lock = threading.Lock()
        # Dry runs: the plan per incident (or service + pin), computed once per DRY_RUN_SHARED_FOR and shared.
        self._dry_plans: dict[Any, tuple[float, list[dict[str, Any]]]] = {}
        self._dry_locks: defaultdict[Any, threading.Lock] = defaultdict(threading.Lock)
        self.runner = Runner(registry or default_registry(), clients or Clients(mlflow=mlflow), store)
        self.evaluator = Evaluator(store, prom)
        self.verifier = Verifier(store, prom, self.timeline, clock=clock)
        self.gate = Gate(store, ModelRegistry(mlflow), clock=clock)

    # -- lookups -----------------------------------------------------------------------------------
    def service(self, name: str) -> Service | None:
        return self.policy.services.get(name)

    def service_of(self, incident_id: int) -> Service | None:
        incident = self.store.find_incident(incident_id)
        return self.service(incident.service) if incident else None

    def known_services(self) -> str:
        return ", ".join(f"`{n}`" for n in sorted(self.policy.services))

    # -- loops -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Pick up what was in flight before a restart (bot.incidents.recovery), then schedule the evaluation loop."""
        recovery.resume_in_flight(self)
        self.scheduler.every("evaluate", self.policy.evaluate_every, self.evaluate_once)
        self.scheduler.start()

    def evaluate_once(self) -> dict[str, list[Reading]]:
        """One evaluation cycle: read every SLO, open incidents for sustained breaches, run the gate."""
        started = time.perf_counter()
        readings = self.evaluator.evaluate(self.policy, now=self.clock())
        opening: list[Future[None]] = []
        for name, service_readings in readings.items():
            for r in service_readings:
                metrics.SLO_STATUS.labels(service=name, slo=r.slo).set(1 if r.status == "breach" else 0)
            sustained = [r for r in service_readings if r.sustained and self._is_new_breach(name, r)]
            if sustained and not self.store.active_incident(name):
                opening.extend(self._open_detected(self.policy.services[name], sustained[0]))
        wait(opening, timeout=OPEN_WAIT)  # the rest go on in the background; their warnings follow
        for svc in self.policy.services.values():
            decision = self.gate.consider(svc)
            if decision.promoted:
                text = (f":rocket: `{svc.model}` version {decision.version} promoted to @{svc.promote.to} for "
                        f"*{svc.name}* (SLOs healthy; previous @{svc.promote.to} version {decision.previous} "
                        f"kept as @{svc.promote.previous})") if svc.promote else ""
                self._say(svc.channel, text)
        self.timeline.flush_all()
        self.store.forget_requests(older_than=self.clock() - SEEN_REQUESTS_KEPT)
        metrics.EVALUATION_SECONDS.observe(time.perf_counter() - started)
        return readings

    def _open_detected(self, svc: Service, reading: Reading) -> list[Future[None]]:
        """Open a detected breach's incident on an opener thread (at most one at a time per service)."""
        with self._opening_lock:
            if svc.name in self._opening:
                return []  # still planning since an earlier cycle
            self._opening.add(svc.name)

        def run() -> None:
            try:
                self.open_incident(svc, reading, source="detection")
            except Exception:  # noqa: BLE001 - the breach is still there next cycle, which tries again
                log.exception("%s: could not open the incident for %s", svc.name, reading.slo)
            finally:
                with self._opening_lock:
                    self._opening.discard(svc.name)

        return [self._openers.submit(run)]

    def _is_new_breach(self, service: str, reading: Reading) -> bool:
        """A breach that began before the last incident about a breach ended (dismissed, or not recovered by
        the rollback) already had its warning: the thread of that incident is where it is being handled. A
        person's /rollback request is not a warning about the breach, so its end silences nothing."""
        ended = self.store.last_warned_finished_at(service)
        return ended is None or (reading.breach_since or 0) > ended

    # -- opening -----------------------------------------------------------------------------------
    def baseline(self, svc: Service, pins: list[str | None] | None = None) -> dict[str, Any]:
        """Plan every step now and pin its target, so the rollback goes where the warning says."""
        steps = self.runner.plan_all(svc, 0, pins or [])
        base: dict[str, Any] = {"steps": steps, "pins": [s.get("pin") for s in steps]}
        errors = [f"{s['executor']}: {s['error']}" for s in steps if s.get("error")]
        if errors:
            base["error"] = "; ".join(errors)
        for s in steps:
            if s.get("executor") == "mlflow_alias" and not s.get("error"):
                data = s["data"]
                base.update(model=data["model"], version=data["to_version"], run_id=data["to_run_id"],
                            bad_version=data["from_version"])
                break
        if "bad_version" not in base and svc.promote:
            try:
                current = self.gate.registry.by_alias(svc.model, svc.promote.to)
            except Exception as exc:  # noqa: BLE001 - the registry being down leaves the bad version unknown
                log.warning("%s: could not read @%s: %s", svc.name, svc.promote.to, exc)
                current = None
            base["bad_version"] = current.version if current else None
        return base

    def open_incident(self, svc: Service, reading: Reading | None, *, source: str = "detection",
                      requested_by: str | None = None, baseline: dict[str, Any] | None = None) -> Incident:
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
        incident = self.store.open_incident(
            service=svc.name, trigger=reading.slo if reading else "manual", detail=detail,
            baseline=baseline or self.baseline(svc), breach_started_at=reading.breach_since if reading else None,
            channel=svc.channel, requested_by=requested_by, auto_at=auto_at, armed_by=source, first_approver=first)
        if incident is None:  # another thread or process opened one between our check and our insert
            existing = self.store.active_incident(svc.name)
            assert existing is not None
            return existing
        if reading is not None:
            self.timeline.record(incident.id, "detected",
                                 f"Detected: {blocks.inert(reading.slo)} = {blocks.inert(blocks.value_text(reading))} "
                                 f"(target {blocks.inert(reading.target)}), "
                                 f"breaching since {blocks.clock(reading.breach_since)}")
        else:
            line = f"Rollback requested by {blocks.mention(requested_by or '?')}"
            if first:
                line += "; that counts as the first approval (two-person rule): a second approver runs it"
            elif svc.two_person:
                line += "; two approvers must confirm it (two-person rule)"
            self.timeline.record(incident.id, "requested", line)
        self.store.audit(actor=requested_by or AUTO_ACTOR, action="open", result="ok", incident_id=incident.id,
                         detail={"service": svc.name, "trigger": incident.trigger, "source": source})
        incident = self.timeline.post_warning(incident)
        if auto_at is not None:
            self.timeline.record(incident.id, "auto_armed",
                                 f":robot_face: Automatic rollback at {blocks.clock(auto_at)} (in "
                                 f"{format_duration(svc.auto_rollback_grace)}) unless an approver presses *Stop*")
            self.schedule_auto(incident)
        return incident

    def request_rollback(self, service: str, user: str, channel: str, *, to: str | None = None) -> Reply:
        """`/rollback <service> [--to V]`: the warning-with-buttons flow, always in the service's channel. It
        never runs anything itself: approvers confirm it with the button (a person's request never arms the
        automatic mode)."""
        svc = self.service(service)
        if svc is None:
            return Reply(False, f"Unknown service `{service}`. Known services: {self.known_services()}")
        existing = self.store.active_incident(svc.name)
        if existing:
            return Reply(True, f"*{svc.name}* already has incident #{existing.id} open "
                               f"({blocks.status_line(existing)}) in <#{existing.channel}>.")
        baseline = None
        if to is not None:
            baseline, problem = self._baseline_to(svc, to)
            if problem:
                self.store.audit(actor=user, action="open", result="refused",
                                 detail={"service": svc.name, "to": to, "reason": problem})
                return Reply(False, problem)
        incident = self.open_incident(svc, None, source="request", requested_by=user, baseline=baseline)
        where = "here" if channel == svc.channel else f"in <#{svc.channel}> (the service's channel)"
        return Reply(True, f"Rollback request for *{svc.name}* posted {where} as incident #{incident.id}: "
                           "an approver confirms it with the *Roll back* button.")

    def _baseline_to(self, svc: Service, to: str) -> tuple[dict[str, Any] | None, str | None]:
        """The baseline with the first targetable step pinned to `to`, or a problem naming the step and what
        it accepts. Refused: a value of the wrong kind, a version tagged rollback_blocked (the executor says
        so), and the version being rolled back from (the step would change nothing)."""
        registry = self.runner.registry
        targetable = registry.targetable()
        position = next((i for i, s in enumerate(svc.rollback) if s.executor in targetable), None)
        if position is None:
            return None, (f"`--to` needs a step that can go to a named version ({', '.join(targetable)}); "
                          f"*{svc.name}* has {', '.join(s.executor for s in svc.rollback)}.")
        step_name = f"step {position + 1} `{svc.rollback[position].executor}`"
        target = registry.get(svc.rollback[position].executor).target
        assert target is not None
        shown = blocks.inert(to)
        if not target.admits(to):
            return None, f"`--to {shown}` does not fit {step_name} of *{svc.name}*: it accepts {target.accepts}."
        pins: list[str | None] = [None] * len(svc.rollback)
        pins[position] = to
        base = self.baseline(svc, pins)
        step = base["steps"][position]
        if step.get("error"):
            return None, f"Cannot roll *{svc.name}* back to `{shown}` ({step_name}): {blocks.inert(step['error'])}"
        if step.get("noop"):
            return None, (f"Cannot roll *{svc.name}* back to `{shown}` ({step_name}): that is what it runs now, "
                          "the version being rolled back from.")
        return base, None

    def plan_preview(self, service: str, user: str, *, to: str | None = None) -> Reply:
        """`/rollback <service> --dry-run`: post the plan into the service's channel; change nothing."""
        svc = self.service(service)
        if svc is None:
            return Reply(False, f"Unknown service `{service}`. Known services: {self.known_services()}")
        if to is not None:
            base, problem = self._baseline_to(svc, to)
            if problem or base is None:
                return Reply(False, problem or "no plan")
            steps = base["steps"]
        else:
            steps = self._shared_plan(("service", svc.name), lambda: self.runner.plan_all(svc, 0))
        text = blocks.plan_text(f"Dry run of `/rollback {svc.name}` by {blocks.mention(user)} — nothing was "
                                "changed. The plan:", steps)
        self.store.audit(actor=user, action="dry_run", result="ok", detail={"service": svc.name, "steps": steps})
        self._say(svc.channel, text)
        return Reply(True, f"Plan for *{svc.name}* posted in <#{svc.channel}>; nothing was changed.")

    def _shared_plan(self, key: Any, plan: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """A dry run's plan, computed at most once per DRY_RUN_SHARED_FOR for `key`: concurrent dry runs
        wait for the one being computed and share it (anyone may press Dry run; a plan reads git, helm,
        Kubernetes and MLflow)."""
        with self._dry_locks[key]:
            hit = self._dry_plans.get(key)
            if hit and time.monotonic() - hit[0] < DRY_RUN_SHARED_FOR:
                return hit[1]
            steps = plan()
            now = time.monotonic()
            for old in [k for k, (at, _) in list(self._dry_plans.items()) if now - at >= DRY_RUN_SHARED_FOR]:
                self._dry_plans.pop(old, None)  # plans nobody can share any more (their locks are cheap to keep)
            self._dry_plans[key] = (now, steps)
            return steps

    # -- decisions ---------------------------------------------------------------------------------
    def authorize(self, incident_id: int, user: str, action: str = "approve") -> tuple[Incident | None, Reply | None]:
        """The incident and None if `user` may act on it; otherwise a refusal to show them (and the audit log)."""
        incident = self.store.find_incident(incident_id)
        if incident is None:
            self.store.audit(actor=user, action=action, result="refused", incident_id=None,
                             detail={"reason": "unknown incident", "incident": incident_id})
            return None, Reply(False, f"Incident #{incident_id} does not exist.")
        svc = self.service(incident.service)
        if svc is None:
            self.store.audit(actor=user, action=action, result="refused", incident_id=incident_id,
                             detail={"reason": "service not in the policy"})
            return None, Reply(False, f"Service `{incident.service}` is no longer in the policy.")
        refusal = self.check_approver(svc, user, action, incident_id)
        return (None, refusal) if refusal else (incident, None)

    def check_approver(self, svc: Service, user: str, action: str, incident_id: int | None = None) -> Reply | None:
        allowed, reason = self.authz.is_approver(svc, user)
        if allowed:
            return None
        return self._refuse(svc, user, action, incident_id, reason)

    def _refuse(self, svc: Service, user: str, action: str, incident_id: int | None, reason: str) -> Reply:
        self.store.audit(actor=user, action=action, result="refused", incident_id=incident_id,
                         detail={"reason": reason, "service": svc.name})
        approvers = ", ".join(blocks.mention(a) for a in svc.approvers)
        refused = "Not rolled back" if action == "approve" else f"Not done ({action})"
        return Reply(False, f"{refused}: {reason}. Ask one of: {approvers}.")

    def approve(self, incident_id: int, user: str) -> Reply:
        """An approver's confirmed Roll back: runs the plan, or with two_person records the first approval."""
        incident, refusal = self.authorize(incident_id, user)
        if refusal or incident is None:
            return refusal or Reply(False, "not allowed")
        svc = self.service(incident.service)
        assert svc is not None
        if incident.state != "open":
            return self._past_approval(incident_id, user)
        decision = self.authz.approval(incident, svc, user)
        if decision.outcome == "refuse" and decision.reason == "two_person":
            self.store.audit(actor=user, action="approve", result="refused", incident_id=incident_id,
                             detail={"reason": "two_person"})
            return Reply(False, "Not rolled back: two-person rule — you gave the first approval, so another "
                                f"approver must confirm it ({self.timeline.mention_approvers(incident.service)}).")
        if decision.outcome == "refuse":
            return self._refuse(svc, user, "approve", incident_id, decision.reason)
        if decision.outcome == "first":
            if self.store.set_if(incident_id, "open", "first_approver", None, user) is None:
                return self.approve(incident_id, user)  # someone else approved first a moment ago: decide again
            self.store.audit(actor=user, action="approve_first", result="ok", incident_id=incident_id)
            self.timeline.record(incident_id, "first_approval",
                                 f"Approved by {blocks.mention(user)} — waiting for a second approver "
                                 f"(two-person rule): {self.timeline.mention_approvers(incident.service)}")
            self.timeline.refresh_warning(incident_id)
            return Reply(True, "Approved. Two-person rule: a second approver must confirm it.")
        moved = self.store.transition(incident_id, ("open",), "executing", approved_by=user,
                                      approved_at=self.clock(), auto_at=None,
                                      first_approver_other_than=user if svc.two_person else None)
        if moved is None:
            return self._past_approval(incident_id, user)
        self.scheduler.cancel(auto_job(incident_id))
        self.store.audit(actor=user, action="approve", result="ok", incident_id=incident_id)
        second = f" (second approval; first by {blocks.mention(moved.first_approver)})" if svc.two_person and \
            moved.first_approver else ""
        self.timeline.record(incident_id, "approved", f"Approved by {blocks.mention(user)}{second}; running the plan")
        self.timeline.refresh_warning(incident_id)
        self._run_soon(incident_id)
        return Reply(True, f"Rolling back *{moved.service}* (incident #{incident_id}).")

    def _past_approval(self, incident_id: int, user: str) -> Reply:
        current = self.store.incident(incident_id)
        self.store.audit(actor=user, action="approve", result="ignored", incident_id=incident_id,
                         detail={"state": current.state})
        return Reply(False, f"Incident #{incident_id} is already past approval: {blocks.status_line(current)}")

    def auto_approve(self, incident_id: int) -> None:
        """The grace period of an automatic rollback ran out with nobody pressing Stop: run the plan."""
        incident = self.store.find_incident(incident_id)
        svc = self.service(incident.service) if incident else None
        if incident is None or svc is None or not arms_automatic(svc, incident.armed_by or ""):
            return  # never armed by detection or Alertmanager: only a person's approval runs it
        moved = self.store.transition(incident_id, ("open",), "executing", auto=True, approved_by=AUTO_ACTOR,
                                      approved_at=self.clock(), auto_at=None)
        if moved is None:
            return  # approved, dismissed or stopped meanwhile
        self.store.audit(actor=AUTO_ACTOR, action="approve", result="ok", incident_id=incident_id,
                         detail={"automatic": True})
        self.timeline.record(incident_id, "approved", "Grace period over with no *Stop*: rolling back automatically")
        self.timeline.refresh_warning(incident_id)
        self.execute(incident_id)

    def dismiss(self, incident_id: int, user: str) -> Reply:
        incident, refusal = self.authorize(incident_id, user, action="dismiss")
        if refusal or incident is None:
            return refusal or Reply(False, "not allowed")
        moved = self.store.transition(incident_id, ("open",), "dismissed", approved_by=user, auto_at=None)
        if moved is None:
            return Reply(False, f"Incident #{incident_id} can no longer be dismissed: "
                                f"{blocks.status_line(self.store.incident(incident_id))}")
        self.scheduler.cancel(auto_job(incident_id))
        self.store.audit(actor=user, action="dismiss", result="ok", incident_id=incident_id)
        self.timeline.record(incident_id, "dismissed", f"Dismissed by {blocks.mention(user)}; nothing was changed")
        self.timeline.refresh_warning(incident_id)
        metrics.INCIDENTS.labels(outcome="dismissed").inc()
        return Reply(True, f"Dismissed incident #{incident_id}.")

    def stop(self, incident_id: int, user: str) -> Reply:
        """"Stop": disarm an automatic rollback still in its grace period, or end a halted plan as failed."""
        incident, refusal = self.authorize(incident_id, user, action="stop")
        if refusal or incident is None:
            return refusal or Reply(False, "not allowed")
        if incident.state == "open":
            if self.store.set_if(incident_id, "open", "auto_at", incident.auto_at, None) is None:
                return Reply(False, f"Incident #{incident_id} has no automatic rollback to stop.")
            self.scheduler.cancel(auto_job(incident_id))
            self.store.audit(actor=user, action="stop_auto", result="ok", incident_id=incident_id)
            self.timeline.record(incident_id, "auto_stopped", f"Automatic rollback stopped by {blocks.mention(user)}; "
                                 "an approver decides with the buttons")
            self.timeline.refresh_warning(incident_id)
            return Reply(True, "Automatic rollback stopped; nothing was changed.")
        moved = self.store.transition(incident_id, ("halted",), "failed")
        if moved is None:
            return Reply(False, f"Incident #{incident_id}: {blocks.status_line(incident)} — nothing to stop.")
        self.store.audit(actor=user, action="stop", result="ok", incident_id=incident_id)
        self.timeline.record(incident_id, "stopped", f"Stopped by {blocks.mention(user)} with the plan incomplete: "
                             f"{blocks.inert(moved.error or 'unknown error')}")
        svc = self.service(moved.service)
        if svc:
            self.finish(moved, svc)
        return Reply(True, f"Stopped incident #{incident_id}.")

    def retry(self, incident_id: int, user: str) -> Reply:
        """"Retry step" after a failure, "Resume" after a restart: run the plan on from the first step not done."""
        incident, refusal = self.authorize(incident_id, user, action="retry")
        if refusal or incident is None:
            return refusal or Reply(False, "not allowed")
        svc = self.service(incident.service)
        assert svc is not None
        allowed, why = self.authz.may_run(incident, svc)
        if incident.state == "halted" and not allowed:
            return self._refuse(svc, user, "retry", incident_id, why)
        moved = self.store.transition(incident_id, ("halted",), "executing")
        if moved is None:
            return Reply(False, f"Incident #{incident_id}: {blocks.status_line(incident)} — nothing to retry.")
        verb = "Resumed" if incident.halt_kind == "interrupted" else "Retry"
        position = (incident.resume_from or 0) + 1
        self.store.audit(actor=user, action="retry", result="ok", incident_id=incident_id,
                         detail={"from_step": position})
        self.timeline.record(incident_id, "retry", f"{verb} from step {position} by {blocks.mention(user)}")
        self.timeline.refresh_warning(incident_id)
        self._run_soon(incident_id)
        return Reply(True, f"{verb} incident #{incident_id} from step {position}.")

    def dry_run(self, incident_id: int, user: str) -> Reply:
        """Post exactly what the plan would change into the thread; change nothing. The plan is computed at
        most once per incident per DRY_RUN_SHARED_FOR and shared by every Dry run in that time."""
        incident = self.store.find_incident(incident_id)
        svc = self.service(incident.service) if incident else None
        if incident is None or svc is None:
            return Reply(False, f"Incident #{incident_id} does not exist.")
        pins = incident.baseline.get("pins", [])
        steps = self._shared_plan(("incident", incident_id), lambda: self.runner.plan_all(svc, incident_id, pins))
        text = blocks.plan_text(f"Dry run requested by {blocks.mention(user)} — nothing was changed. The plan:", steps)
        self.store.audit(actor=user, action="dry_run", result="ok", incident_id=incident_id, detail={"steps": steps})
        self.timeline.record(incident_id, "dry_run", text)
        return Reply(True, "Dry run posted in the incident thread.")

    # -- background work ---------------------------------------------------------------------------
    def schedule_auto(self, incident: Incident) -> None:
        delay = max(0.0, (incident.auto_at or 0) - self.clock())
        self.scheduler.soon(self.auto_approve, incident.id, delay=delay, job_id=auto_job(incident.id))

    def _run_soon(self, incident_id: int) -> None:
        """Hand an incident just moved to `executing` to a scheduler thread; if that fails, halt it at once so
        it never sits in `executing` with nothing running."""
        try:
            self.scheduler.soon(self.execute, incident_id)
        except Exception as exc:  # noqa: BLE001 - e.g. the scheduler shut down: the incident must not be stuck
            self._halt_unexpected(incident_id, exc)

    def execute(self, incident_id: int) -> None:
        """Run the approved plan (scheduler thread), from the first step not yet done. Never raises: the
        outcome goes to the thread, and any failure around a step (the freeze, the store, the timeline)
        halts the incident with its cause, *Retry step* and *Stop*."""
        try:
            self._execute(incident_id)
        except Exception as exc:  # noqa: BLE001 - the invariant: no incident stays executing with nothing running
            log.exception("incident %s: the plan run failed outside its steps", incident_id)
            self._halt_unexpected(incident_id, exc)

    def _execute(self, incident_id: int) -> None:
        incident = self.store.incident(incident_id)
        svc = self.service(incident.service)
        if incident.state != "executing":
            return
        if svc is None:
            self._halt(incident_id, 0, f"service `{incident.service}` is no longer in the policy")
            return
        allowed, why = self.authz.may_run(incident, svc)
        if not allowed:  # the one rule, checked right before anything can reach an executor
            self.store.audit(actor=incident.approved_by or AUTO_ACTOR, action="execute", result="refused",
                             incident_id=incident_id, detail={"reason": why})
            self._halt(incident_id, incident.resume_from or 0, f"not authorized: {why}")
            return
        # Auto-promotion stops as soon as a rollback runs. The incident stops being active (recovered) a moment
        # before finish() freezes the service and tags the bad version; without this the gate could promote
        # the bad @candidate again in between (seen in the six-step story test).
        self.store.freeze(service=svc.name, reason=f"rollback incident #{incident_id} in progress", actor=AUTO_ACTOR,
                          incident_id=incident_id, blocked_version=incident.baseline.get("bad_version"))

        def record(kind: str, text: str, data: dict[str, Any]) -> None:
            self.timeline.record(incident_id, kind, text, data)

        start = incident.resume_from or 0
        earlier = self._earlier_outcomes(incident_id, start)
        outcome = self.runner.run(svc, incident_id, incident.baseline.get("pins", []), record, start=start,
                                  earlier=earlier)
        now = self.clock()
        if not outcome.ok:
            halted = self.store.transition(incident_id, ("executing",), "halted", resume_from=outcome.position,
                                           halt_kind="failed", error=f"{outcome.failed}: {outcome.error}")
            done = ", ".join(outcome.done) or "none"
            not_run = ", ".join(outcome.not_run) or "none"
            self.timeline.record(incident_id, "failed",
                                 f":x: Rollback stopped at {outcome.failed}: {blocks.inert(outcome.error or '')}. "
                                 f"Done: {done}. Not run: {not_run}. *Retry step* runs it again and goes on; *Stop* "
                                 f"ends the incident as failed. {self.timeline.mention_approvers(svc.name)}")
            if halted:
                self.timeline.refresh_warning(incident_id)
            return
        moved = self.store.transition(incident_id, ("executing",), "verifying", executed_at=now, resume_from=None,
                                      halt_kind=None, error=None)
        if moved is None:
            return
        took = format_duration(now - (moved.approved_at or now))
        self.timeline.record(incident_id, "executed", f"Plan executed in {took}; verifying the SLOs "
                             f"(every {format_duration(svc.verify.every)}, stable for "
                             f"{format_duration(svc.verify.stable_for)}, within {format_duration(svc.verify.within)})")
        self.timeline.refresh_warning(incident_id)
        self.verifier.start(moved, svc)
        self.schedule_verification(incident_id, svc)

    def _halt_unexpected(self, incident_id: int, exc: BaseException) -> None:
        """Halt an `executing` incident after a failure outside its steps, from the first step not done."""
        try:
            incident = self.store.incident(incident_id)
            svc = self.service(incident.service)
            done = {s.position for s in self.store.steps(incident_id) if s.status == "done"}
            total = len(svc.rollback) if svc else 0
            resume_from = next((i for i in range(total) if i not in done), total)
            self._halt(incident_id, resume_from, f"internal error around the plan: {type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001 - the store itself is failing; restart pick-up halts it later
            log.exception("incident %s: could not halt it after a failure", incident_id)

    def _halt(self, incident_id: int, resume_from: int, error: str) -> None:
        halted = self.store.transition(incident_id, ("executing",), "halted", resume_from=resume_from,
                                       halt_kind="failed", error=error)
        if halted is None:
            return
        svc = self.service(halted.service)
        self.timeline.record(incident_id, "failed",
                             f":x: Rollback halted before step {resume_from + 1}: {blocks.inert(error)}. *Retry step* "
                             f"runs the plan on from there; *Stop* ends the incident as failed. "
                             f"{self.timeline.mention_approvers(svc.name) if svc else ''}")
        self.timeline.refresh_warning(incident_id)

    def _earlier_outcomes(self, incident_id: int, start: int) -> list[Any]:
        latest: dict[int, Any] = {}
        for step in self.store.steps(incident_id):
            if step.position < start and step.status == "done":
                latest[step.position] = stored_outcome(step.outcome)
        return [latest[p] for p in sorted(latest) if latest[p] is not None]

    def schedule_verification(self, incident_id: int, svc: Service) -> None:
        self.scheduler.every(verify_job(incident_id), svc.verify.every, self.verify_tick, incident_id)

    def verify_tick(self, incident_id: int) -> None:
        incident = self.store.incident(incident_id)
        svc = self.service(incident.service)
        if svc is None or incident.state != "verifying":
            self.scheduler.cancel(verify_job(incident_id))
            return
        verdict = self.verifier.tick(incident_id, svc)
        if verdict:
            self.scheduler.cancel(verify_job(incident_id))
            self.finish(self.store.incident(incident_id), svc)

    def finish(self, incident: Incident, svc: Service) -> None:
        """Freeze, chart, checklist and summary; show the final state on the warning."""
        metrics.INCIDENTS.labels(outcome=incident.state).inc()
        if incident.state == RECOVERED and incident.recovered_at and incident.approved_at:
            metrics.TIME_TO_RECOVER.observe(incident.recovered_at - incident.approved_at)
        steps = self.store.steps(incident.id)
        self.timeline.record(incident.id, "frozen", self.gate.freeze(incident, svc) + checklist.freeze_notes(steps))
        self.timeline.refresh_warning(incident.id)
        checklist.post_chart(self, incident, svc)
        self.timeline.record(incident.id, "checklist", checklist.render(self, incident, svc, steps))
        self.timeline.record(incident.id, "summary", checklist.summary(incident))

    def _say(self, channel: str, text: str) -> None:
        try:
            self.slack.post(channel, text)
        except Exception as exc:  # noqa: BLE001 - a channel note must never stop the evaluation loop
            log.warning("could not post to %s: %s", channel, exc)
