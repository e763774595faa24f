"""Where an alert is born: the evaluation cycle reads every SLO, and a sustained new breach opens an incident.

Run every `evaluate_every` by the scheduler (bot.app starts it). One cycle: evaluate the policy against
Prometheus (bot.slo.evaluation, grouped queries), open an incident for each service with a sustained breach it
has not warned about yet (on opener threads: planning reads git, helm, Kubernetes and MLflow, so one slow system
delays only that service's warning), run the promotion gate (a promotion is followed by a drill, a candidate it
holds back is said once), and retry what did not reach Slack.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from bot.infra import metrics
from bot.infra.store import Store
from bot.slack import checklist, wording
from bot.slack.timeline import Timeline
from bot.slo.evaluation import BREACH, Evaluator, Reading
from bot.slo.gate import Decision, Gate
from bot.slo.policy import Policy, Service

log = logging.getLogger(__name__)

SEEN_REQUESTS_KEPT = 3600.0  # seconds a Slack request's key is kept to spot its retries and replays
OPENERS = 8
OPEN_WAIT = 2.0  # seconds an evaluation cycle waits for the incidents it opens (planned on their own threads)

Open = Callable[[Service, Reading], Any]  # opens (or finds) the service's incident for a detected breach
Promoted = Callable[[Service, "str | None", "str | None"], Any]  # (service, version, previous): the drill after it


class Detection:
    def __init__(self, *, policy: Policy, evaluator: Evaluator, store: Store, gate: Gate, timeline: Timeline,
                 open_incident: Open, owns: Callable[[str], bool] = lambda _: True,
                 after_promotion: Promoted | None = None, clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.evaluator = evaluator
        self.store = store
        self.gate = gate
        self.timeline = timeline
        self.open_incident = open_incident
        self.owns = owns  # whether this replica evaluates a service this cycle (its shard's lease)
        self.after_promotion = after_promotion
        self.clock = clock
        self._openers = ThreadPoolExecutor(OPENERS, thread_name_prefix="open")
        self._opening: set[str] = set()
        self._opening_lock = threading.Lock()
        self._exported: dict[tuple[str, str], int] = {}

    def evaluate_once(self) -> dict[str, list[Reading]]:
        """One evaluation cycle over the services this replica's shards hold: read their SLOs, open incidents for
        sustained breaches, run their gate; then retry what did not reach Slack."""
        started = time.perf_counter()
        metrics.EVALUATION_STARTED.set(time.time())
        mine = [svc for svc in self.policy.services.values() if self.owns(svc.name)]
        readings = self.evaluator.evaluate(self.policy, now=self.clock(), services=mine) if mine else {}
        active = self.store.active_services()
        opening: list[Future[None]] = []
        for name, service_readings in readings.items():
            self._export(name, service_readings)
            sustained = [r for r in service_readings if r.sustained]
            if sustained and name not in active:
                new = [r for r in sustained if self._is_new_breach(name, r)]
                if new:
                    opening.extend(self._open_detected(self.policy.services[name], new[0]))
        wait(opening, timeout=OPEN_WAIT)  # the rest go on in the background; their warnings follow
        for svc, decision in self.gate.consider_all(mine):
            self._said(svc, decision)
        self.timeline.flush_all()
        self.store.forget_requests(older_than=self.clock() - SEEN_REQUESTS_KEPT)
        self.store.forget_inbox(older_than=self.clock() - SEEN_REQUESTS_KEPT)
        took = time.perf_counter() - started
        metrics.EVALUATION_SECONDS.observe(took)
        metrics.EVALUATION_LAST.set(took)
        return readings

    def _said(self, svc: Service, decision: Decision) -> None:
        """A promotion (and the drill after it), or a candidate held back, said the first time only."""
        if decision.promoted:
            self.timeline.say(svc.channel, wording.promoted(svc, decision.version, decision.previous,
                                                            decision.comparisons, decision.baselines))
            if self.after_promotion is not None:
                self.after_promotion(svc, decision.version, decision.previous)
        elif decision.notify and decision.held == "window" and decision.window is not None:
            self.timeline.say(svc.channel, wording.held_by_window(svc, decision.version, decision.window.reason,
                                                                  decision.window.end))
        elif decision.notify and decision.held == "compare":
            self.timeline.say(svc.channel, wording.held_by_comparison(svc, decision.version, decision.comparisons))
        elif decision.notify and decision.held == "readiness":
            self.timeline.say(svc.channel, checklist.not_ready_notice(svc.name, decision.version or "?",
                                                                      decision.readiness))

    def _export(self, service: str, readings: list[Reading]) -> None:
        """rollback_slo_breaching of each SLO, set when it changes (20,000 SLOs: a gauge each)."""
        for r in readings:
            breaching = 1 if r.status == BREACH else 0
            if self._exported.get((service, r.slo)) != breaching:
                metrics.SLO_STATUS.labels(service=service, slo=r.slo).set(breaching)
                self._exported[(service, r.slo)] = breaching

    def _open_detected(self, svc: Service, reading: Reading) -> list[Future[None]]:
        """Open a detected breach's incident on an opener thread (at most one at a time per service)."""
        with self._opening_lock:
            if svc.name in self._opening:
                return []  # still planning since an earlier cycle
            self._opening.add(svc.name)

        def run() -> None:
            try:
                self.open_incident(svc, reading)
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
