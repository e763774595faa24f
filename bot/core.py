"""RollbackBot: the domain's front door. Handlers call it with plain values; it moves incidents through
their states (open -> executing -> verifying -> recovered | verify_failed | failed, or open -> dismissed),
each move a conditional transition in the store and an event on the timeline.

Called by handlers/ (requests from Slack), by the scheduler (evaluation, verification, plan runs) and by
the CLI. Returns Reply values for the person who asked; failures go to the incident's thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot import blocks, metrics
from bot.approvers import Approvers
from bot.durations import format_duration
from bot.evaluation import Evaluator, Reading
from bot.gate import Gate
from bot.model_registry import ModelRegistry
from bot.policy import Policy, Service
from bot.prom import Prometheus
from bot.runner import Runner
from bot.scheduler import Scheduler
from bot.slack_out import SlackOut
from bot.store import Incident, Store
from bot.timeline import Timeline
from bot.verify import RECOVERED, Verifier
from executors.registry import Clients, Registry, default_registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    """What the person who clicked or typed is told (ephemerally)."""

    ok: bool
    text: str


class RollbackBot:
    def __init__(self, *, policy: Policy, store: Store, prom: Prometheus, slack: SlackOut, mlflow: Any,
                 scheduler: Scheduler, registry: Registry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.store = store
        self.prom = prom
        self.slack = slack
        self.scheduler = scheduler
        self.clock = clock
        self.timeline = Timeline(store, slack, self.service)
        self.approvers = Approvers(slack.usergroup_users)
        self.runner = Runner(registry or default_registry(), Clients(mlflow=mlflow), store)
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
        """Schedule the evaluation loop and pick up incidents that were verifying before a restart."""
        for incident in self.store.incidents_in(("verifying",)):
            svc = self.service(incident.service)
            if svc:
                self.timeline.record(incident.id, "resumed", "Bot restarted: verification continues")
                self._schedule_verification(incident.id, svc)
        self.scheduler.every("evaluate", self.policy.evaluate_every, self.evaluate_once)
        self.scheduler.start()

    def evaluate_once(self) -> dict[str, list[Reading]]:
        """One evaluation cycle: read every SLO, open incidents for sustained breaches, run the gate."""
        started = time.perf_counter()
        readings = self.evaluator.evaluate(self.policy, now=self.clock())
        for name, service_readings in readings.items():
            for r in service_readings:
                metrics.SLO_STATUS.labels(service=name, slo=r.slo).set(1 if r.status == "breach" else 0)
            sustained = [r for r in service_readings if r.sustained and self._is_new_breach(name, r)]
            if sustained and not self.store.active_incident(name):
                self.open_incident(self.policy.services[name], sustained[0])
        for svc in self.policy.services.values():
            decision = self.gate.consider(svc)
            if decision.promoted:
                text = (f":rocket: `{svc.model}` version {decision.version} promoted to @{svc.promote.to} for "
                        f"*{svc.name}* (SLOs healthy; previous @{svc.promote.to} version {decision.previous} "
                        f"kept as @{svc.promote.previous})") if svc.promote else ""
                self._say(svc.channel, text)
        self.timeline.flush_all()
        metrics.EVALUATION_SECONDS.observe(time.perf_counter() - started)
        return readings

    def _is_new_breach(self, service: str, reading: Reading) -> bool:
        """A breach that began before the last incident ended (dismissed, or not recovered by the rollback)
        already had its warning: the thread of that incident is where it is being handled."""
        ended = self.store.last_finished_at(service)
        return ended is None or (reading.breach_since or 0) > ended

    # -- opening -----------------------------------------------------------------------------------
    def _baseline(self, svc: Service) -> dict[str, Any]:
        steps = self.runner.plan_all(svc, 0)
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
            current = self.gate.registry.by_alias(svc.model, svc.promote.to)
            base["bad_version"] = current.version if current else None
        return base

    def open_incident(self, svc: Service, reading: Reading | None, requested_by: str | None = None) -> Incident:
        """Open (or return the already open) incident for a service and post its warning."""
        existing = self.store.active_incident(svc.name)
        if existing:
            return existing
        detail: dict[str, Any] = {}
        if reading is not None:
            detail = {"value": reading.value, "target": reading.target, "status": reading.status}
        baseline = self._baseline(svc)
        incident = self.store.open_incident(
            service=svc.name, trigger=reading.slo if reading else "manual", detail=detail, baseline=baseline,
            breach_started_at=reading.breach_since if reading else None, channel=svc.channel,
            requested_by=requested_by)
        if incident is None:  # another thread or process opened one between our check and our insert
            existing = self.store.active_incident(svc.name)
            assert existing is not None
            return existing
        if reading is not None:
            self.timeline.record(incident.id, "detected",
                                 f"Detected: {reading.slo} = {blocks.value_text(reading)} (target {reading.target}), "
                                 f"breaching since {blocks.clock(reading.breach_since)}")
        else:
            self.timeline.record(incident.id, "requested", f"Rollback requested by {blocks.mention(requested_by or '?')}")
        self.store.audit(actor=requested_by or "rollback-bot", action="open", result="ok", incident_id=incident.id,
                         detail={"service": svc.name, "trigger": incident.trigger})
        return self.timeline.post_warning(incident)

    def request_rollback(self, service: str, user: str, channel: str) -> Reply:
        """`/rollback <service>`: the same warning-with-buttons flow, in the service's channel."""
        svc = self.service(service)
        if svc is None:
            return Reply(False, f"Unknown service `{service}`. Known services: {self.known_services()}")
        existing = self.store.active_incident(svc.name)
        if existing:
            return Reply(True, f"*{svc.name}* already has incident #{existing.id} open "
                               f"({blocks.status_line(existing)}) in <#{existing.channel}>.")
        incident = self.open_incident(svc, None, requested_by=user)
        where = "here" if channel == svc.channel else f"in <#{svc.channel}> (the service's channel)"
        return Reply(True, f"Rollback request for *{svc.name}* posted {where} as incident #{incident.id}: "
                           "an approver confirms it with the *Roll back* button.")

    # -- decisions ---------------------------------------------------------------------------------
    def authorize(self, incident_id: int, user: str, action: str = "approve") -> tuple[Incident | None, Reply | None]:
        """The incident and None if `user` may act on it; otherwise a refusal to show them (and the audit log)."""
        incident = self.store.find_incident(incident_id)
        if incident is None:
            return None, Reply(False, f"Incident #{incident_id} does not exist.")
        svc = self.service(incident.service)
        if svc is None:
            return None, Reply(False, f"Service `{incident.service}` is no longer in the policy.")
        allowed, reason = self.approvers.check(user, svc.approvers)
        if not allowed:
            self.store.audit(actor=user, action=action, result="refused", incident_id=incident_id,
                             detail={"reason": reason})
            approvers = ", ".join(blocks.mention(a) for a in svc.approvers)
            return None, Reply(False, f"Not rolled back: {reason}. Ask one of: {approvers}.")
        return incident, None

    def approve(self, incident_id: int, user: str) -> Reply:
        incident, refusal = self.authorize(incident_id, user)
        if refusal or incident is None:
            return refusal or Reply(False, "not allowed")
        moved = self.store.transition(incident_id, ("open",), "executing", approved_by=user,
                                      approved_at=self.clock())
        if moved is None:
            current = self.store.incident(incident_id)
            self.store.audit(actor=user, action="approve", result="ignored", incident_id=incident_id,
                             detail={"state": current.state})
            return Reply(False, f"Incident #{incident_id} is already past approval: {blocks.status_line(current)}")
        self.store.audit(actor=user, action="approve", result="ok", incident_id=incident_id)
        self.timeline.record(incident_id, "approved", f"Approved by {blocks.mention(user)}; running the plan")
        self.timeline.refresh_warning(incident_id)
        self.scheduler.soon(self.execute, incident_id)
        return Reply(True, f"Rolling back *{moved.service}* (incident #{incident_id}).")

    def dismiss(self, incident_id: int, user: str) -> Reply:
        incident, refusal = self.authorize(incident_id, user, action="dismiss")
        if refusal or incident is None:
            return refusal or Reply(False, "not allowed")
        moved = self.store.transition(incident_id, ("open",), "dismissed", approved_by=user)
        if moved is None:
            return Reply(False, f"Incident #{incident_id} can no longer be dismissed: "
                                f"{blocks.status_line(self.store.incident(incident_id))}")
        self.store.audit(actor=user, action="dismiss", result="ok", incident_id=incident_id)
        self.timeline.record(incident_id, "dismissed", f"Dismissed by {blocks.mention(user)}; nothing was changed")
        self.timeline.refresh_warning(incident_id)
        metrics.INCIDENTS.labels(outcome="dismissed").inc()
        return Reply(True, f"Dismissed incident #{incident_id}.")

    def dry_run(self, incident_id: int, user: str) -> Reply:
        """Post exactly what the plan would change into the thread; change nothing."""
        incident = self.store.find_incident(incident_id)
        svc = self.service(incident.service) if incident else None
        if incident is None or svc is None:
            return Reply(False, f"Incident #{incident_id} does not exist.")
        steps = self.runner.plan_all(svc, incident_id, incident.baseline.get("pins", []))
        text = blocks.plan_text(f"Dry run requested by {blocks.mention(user)} — nothing was changed. The plan:", steps)
        self.store.audit(actor=user, action="dry_run", result="ok", incident_id=incident_id, detail={"steps": steps})
        self.timeline.record(incident_id, "dry_run", text)
        return Reply(True, "Dry run posted in the incident thread.")

    # -- background work ---------------------------------------------------------------------------
    def execute(self, incident_id: int) -> None:
        """Run the approved plan (scheduler thread). Never raises: the outcome goes to the thread."""
        incident = self.store.incident(incident_id)
        svc = self.service(incident.service)
        if svc is None or incident.state != "executing":
            return

        def record(kind: str, text: str, data: dict[str, Any]) -> None:
            self.timeline.record(incident_id, kind, text, data)

        outcome = self.runner.run(svc, incident_id, incident.baseline.get("pins", []), record)
        now = self.clock()
        if not outcome.ok:
            failed = self.store.transition(incident_id, ("executing",), "failed", executed_at=now,
                                           error=f"{outcome.failed}: {outcome.error}")
            done = ", ".join(outcome.done) or "none"
            not_run = ", ".join(outcome.not_run) or "none"
            self.timeline.record(incident_id, "failed",
                                 f":x: Rollback failed at {outcome.failed}: {outcome.error}. Done: {done}. "
                                 f"Not run: {not_run}. {self.timeline.mention_approvers(svc.name)}")
            if failed:
                self.finish(failed, svc)
            return
        moved = self.store.transition(incident_id, ("executing",), "verifying", executed_at=now)
        if moved is None:
            return
        took = format_duration(now - (moved.approved_at or now))
        self.timeline.record(incident_id, "executed", f"Plan executed in {took}; verifying the SLOs "
                             f"(every {format_duration(svc.verify.every)}, stable for "
                             f"{format_duration(svc.verify.stable_for)}, within {format_duration(svc.verify.within)})")
        self.timeline.refresh_warning(incident_id)
        self.verifier.start(moved, svc)
        self._schedule_verification(incident_id, svc)

    def _schedule_verification(self, incident_id: int, svc: Service) -> None:
        self.scheduler.every(f"verify-{incident_id}", svc.verify.every, self.verify_tick, incident_id)

    def verify_tick(self, incident_id: int) -> None:
        incident = self.store.incident(incident_id)
        svc = self.service(incident.service)
        if svc is None or incident.state != "verifying":
            self.scheduler.cancel(f"verify-{incident_id}")
            return
        verdict = self.verifier.tick(incident_id, svc)
        if verdict:
            self.scheduler.cancel(f"verify-{incident_id}")
            self.finish(self.store.incident(incident_id), svc)

    def finish(self, incident: Incident, svc: Service) -> None:
        """Freeze, summarise, and show the final state on the warning."""
        self.timeline.record(incident.id, "frozen", self.gate.freeze(incident, svc))
        self.timeline.refresh_warning(incident.id)
        self.timeline.record(incident.id, "summary", summary(incident))
        metrics.INCIDENTS.labels(outcome=incident.state).inc()
        if incident.state == RECOVERED and incident.recovered_at and incident.approved_at:
            metrics.TIME_TO_RECOVER.observe(incident.recovered_at - incident.approved_at)

    def _say(self, channel: str, text: str) -> None:
        try:
            self.slack.post(channel, text)
        except Exception as exc:  # noqa: BLE001 - a channel note must never stop the evaluation loop
            log.warning("could not post to %s: %s", channel, exc)


def summary(incident: Incident) -> str:
    def span(a: float | None, b: float | None) -> str:
        return format_duration(b - a) if a is not None and b is not None else "—"

    outcome = {"recovered": "Recovered", "verify_failed": "Not recovered", "failed": "Rollback failed"}
    return (f"*Summary — {outcome.get(incident.state, incident.state)}* · "
            f"time to detect {span(incident.breach_started_at, incident.warned_at)} · "
            f"to approve {span(incident.warned_at, incident.approved_at)} · "
            f"to execute {span(incident.approved_at, incident.executed_at)} · "
            f"to recover {span(incident.executed_at, incident.recovered_at)} · "
            f"alert to stable {span(incident.warned_at, incident.recovered_at)}")
