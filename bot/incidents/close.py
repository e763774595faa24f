"""The close of an incident: the freeze, the SLO chart in the thread, the post-rollback checklist, the
summary with the time to detect, approve, execute and recover, and the verdict against the service's recover
target (counted in /metrics as rollback_recover_target_total), then the postmortem draft uploaded into the thread
(bot.incidents.postmortem).

Called by bot.incidents.runs when a verdict is stored (recovered, verify_failed, failed) and by
bot.incidents.recovery for a verdict whose close a restart interrupted. Each checklist line is checked against
the world (Prometheus, the stored steps, the freeze), not assumed: a line that could not be checked says so.
The executors' part comes from their typed outcomes (freeze_note, traffic_to_bad) and their specs
(reports_traffic), never from their private data.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.incidents import postmortem
from bot.incidents.runner import outcome_from
from bot.incidents.states import State
from bot.infra import metrics
from bot.infra.plans import Baseline
from bot.infra.prom import Prometheus
from bot.infra.store import Incident, Step, Store
from bot.slack import chart, wording
from bot.slack.slack_out import SlackOut
from bot.slack.timeline import Timeline
from bot.slo.gate import Gate
from bot.slo.policy import Service
from executors.base import StepOutcome
from executors.registry import Registry


class Closer:
    def __init__(self, *, store: Store, prom: Prometheus, slack: SlackOut, timeline: Timeline, gate: Gate,
                 registry: Registry) -> None:
        self.store = store
        self.prom = prom
        self.slack = slack
        self.timeline = timeline
        self.gate = gate
        self.registry = registry

    def close(self, incident: Incident, svc: Service) -> None:
        """Freeze, chart, checklist, summary and the postmortem draft; show the final state on the warning."""
        metrics.INCIDENTS.labels(outcome=incident.state).inc()
        if incident.state == State.RECOVERED and incident.recovered_at and incident.approved_at:
            metrics.TIME_TO_RECOVER.observe(incident.recovered_at - incident.approved_at)
        steps = self.store.steps(incident.id)
        frozen = self.gate.freeze(svc, incident_id=incident.id, reason=f"rollback incident #{incident.id}",
                                  bad_version=Baseline.from_dict(incident.baseline).bad_version)
        notes = [o.freeze_note for s, o in _outcomes(steps) if s.status == "done" and o and o.freeze_note]
        self.timeline.record(incident.id, "frozen", wording.frozen(svc.model, frozen.blocked, frozen.problems)
                             + wording.freeze_notes(notes))
        self.timeline.refresh_warning(incident.id)
        problem = chart.post_chart(self.prom, self.slack, self.store.incident(incident.id), svc)
        if problem:
            self.timeline.record(incident.id, "chart_failed", problem)
        self.timeline.record(incident.id, "checklist", self.checklist(incident, svc, steps))
        target = svc.targets.recover
        if target is not None and incident.alert_to_stable is not None:
            result = "within" if incident.alert_to_stable <= target else "over"
            metrics.RECOVER_TARGET.labels(service=svc.name, result=result).inc()
        self.timeline.record(incident.id, "summary", wording.summary(incident, target))
        not_drafted = postmortem.post_draft(self.store, self.prom, self.slack, self.store.incident(incident.id), svc)
        if not_drafted:
            self.timeline.record(incident.id, "postmortem_failed", not_drafted)

    def checklist(self, incident: Incident, svc: Service, steps: Sequence[Step]) -> str:
        incident = self.store.incident(incident.id)
        frozen = self.store.frozen(svc.name)
        return wording.checklist([
            wording.slos_line(incident.state == State.RECOVERED, incident.error or incident.state),
            self._traffic_line(steps),
            self._backlog_line(svc),
            wording.promotion_line(frozen.reason if frozen else None),
            wording.NOTES_LINE,
        ])

    def _traffic_line(self, steps: Sequence[Step]) -> str | None:
        reporting = [(s, o) for s, o in _outcomes(steps) if self.registry.reports_traffic(s.executor)]
        if not reporting:
            return None
        step, outcome = reporting[-1]
        return wording.traffic_line(step.status, outcome.traffic_to_bad if outcome else None)

    def _backlog_line(self, svc: Service) -> str | None:
        query = svc.verify.backlog
        if not query:
            return None
        result = self.prom.query(query)
        if result.error:
            return wording.backlog_line(None, svc.verify.backlog_max, f"could not read it ({result.error})")
        if not result.values:
            return wording.backlog_line(None, svc.verify.backlog_max, "the backlog query returned no data")
        return wording.backlog_line(max(result.values), svc.verify.backlog_max, None)


def _outcomes(steps: Sequence[Step]) -> list[tuple[Step, StepOutcome | None]]:
    return [(s, outcome_from(s.outcome)) for s in steps]

