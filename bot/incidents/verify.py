"""Verification after a rollback: re-query the SLOs every `verify.every` until they have been within target
continuously for `stable_for`, or `within` runs out.

Called by bot.incidents.runs' scheduled verification job, one tick at a time. Progress lives in the incident's
stored `verification` field (so a restarted bot continues where it was) and is shown in ONE thread message
updated in place, at most once per `update_every` seconds; state changes (stable, unstable again,
recovered, failed) are timeline events. No data never counts as within target.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bot.incidents.states import State, move
from bot.infra.prom import Prometheus
from bot.infra.store import Incident, Store
from bot.slack import blocks, wording
from bot.slack.timeline import Timeline
from bot.slo import evaluation
from bot.slo.baselines import Baselines
from bot.slo.evaluation import CYCLE_JITTER
from bot.slo.policy import Service

RECOVERED, FAILED = State.RECOVERED, State.VERIFY_FAILED


class Verifier:
    def __init__(self, store: Store, prom: Prometheus, timeline: Timeline, *, update_every: float = 3.0,
                 clock: Callable[[], float] = time.time, baselines: Baselines | None = None) -> None:
        self.store = store
        self.baselines = baselines  # relative SLOs wait for their baseline like absolute ones for their threshold
        self.prom = prom
        self.timeline = timeline
        self.update_every = update_every
        self.clock = clock

    def start(self, incident: Incident, service: Service) -> Incident:
        if self.baselines is not None:
            self.baselines.moved(service)  # the plan just ran: relative SLOs judge the version it restored
        now = self.clock()
        state = {"started_at": now, "stable_since": None, "last_update": now}
        text, body = blocks.progress([], elapsed=0, stable_for=0, need_stable=service.verify.stable_for,
                                     within=service.verify.within)
        ts = self.timeline.post_in_thread(incident, text, body)
        return self.store.update_incident(incident.id, verification=state, progress_ts=ts)

    def tick(self, incident_id: int, service: Service) -> str | None:
        """One verification round. Returns "recovered" / "verify_failed" when this tick decided it."""
        incident = self.store.incident(incident_id)
        if incident.state != State.VERIFYING:
            return None
        v = dict(incident.verification or {})
        now = self.clock()
        started = v.get("started_at") or incident.executed_at or now
        readings = evaluation.read(self.prom, [service], baselines=self.baselines)[service.name]
        within_target = all(r.within_target for r in readings)
        was_stable = v.get("stable_since")
        # A change of streak is stored before the thread is told: a replica taking the verification over after this
        # one died in between goes on with the streak instead of starting (and announcing) it again.
        if within_target and not was_stable:
            v["stable_since"] = now
            self.store.update_incident(incident_id, verification=v)
            self.timeline.record(incident_id, "stable", wording.stable(readings, service.verify.stable_for))
        elif not within_target and was_stable:
            v["stable_since"] = None
            self.store.update_incident(incident_id, verification=v)
            self.timeline.record(incident_id, "unstable", wording.unstable(readings))
        stable_for = now - v["stable_since"] if v.get("stable_since") else 0.0
        elapsed = now - started
        verdict: State | None = None
        # Ticks start a few ms early or late: a streak within a tenth of a tick of stable_for has held it, or
        # the verdict would wait a whole extra tick (the same allowance as evaluation's CYCLE_JITTER).
        if v.get("stable_since") and stable_for >= service.verify.stable_for - CYCLE_JITTER * service.verify.every:
            verdict = RECOVERED
        elif elapsed >= service.verify.within:
            verdict = FAILED
        done_text = {RECOVERED: ":white_check_mark: Recovered", FAILED: ":x: Verification failed"}.get(verdict) \
            if verdict else None
        if verdict or now - v.get("last_update", 0) >= self.update_every:
            v["last_update"] = now
            if incident.progress_ts:
                text, body = blocks.progress(readings, elapsed=elapsed, stable_for=stable_for,
                                             need_stable=service.verify.stable_for, within=service.verify.within,
                                             done=done_text)
                self.timeline.update_in_thread(incident, incident.progress_ts, text, body)
        self.store.update_incident(incident_id, verification=v)
        if verdict == RECOVERED:
            if move(self.store, incident_id, State.VERIFYING, State.RECOVERED, recovered_at=now):
                self.timeline.record(incident_id, "recovered", wording.recovered(stable_for, readings))
                return RECOVERED
        elif verdict == FAILED:
            if move(self.store, incident_id, State.VERIFYING, State.VERIFY_FAILED, error="SLOs did not recover in time"):
                self.timeline.record(incident_id, "verify_failed", wording.verify_failed(
                    service.verify.stable_for, service.verify.within, readings,
                    self.timeline.mention_approvers(service.name)))
                return FAILED
        return None

