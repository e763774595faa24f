"""The close of an incident: the post-rollback checklist, the freeze notes of the layers rolled back, the SLO
chart in the thread, and the summary with the time to detect, approve, execute and recover.

Called by bot.incidents.service.IncidentService.finish. Each checklist line is checked against the world (Prometheus, the
stored steps, the freeze), not assumed: a line that could not be checked says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bot.infra.store import Incident, Step
from bot.slack import chart
from bot.slo.durations import format_duration
from bot.slo.policy import Service

if TYPE_CHECKING:
    from bot.incidents.service import IncidentService

YES, NO, UNKNOWN = ":white_check_mark:", ":x:", ":grey_question:"


def freeze_notes(steps: Sequence[Step]) -> str:
    """What keeps each rolled-back layer from moving forward again (e.g. the Rollout stays aborted,
    Argo CD auto-sync stays off), from the executors' own outcomes."""
    notes = [str((s.outcome or {}).get("data", {}).get("freeze_note")) for s in steps
             if s.status == "done" and (s.outcome or {}).get("data", {}).get("freeze_note")]
    # One line each: the notes are whole sentences (with their own periods and semicolons), so joining them
    # with "; " read as ".; " in the thread.
    return "".join(f"\n• {note}" for note in dict.fromkeys(notes))


def post_chart(bot: IncidentService, incident: Incident, svc: Service) -> None:
    problem = chart.post_chart(bot.prom, bot.slack, bot.store.incident(incident.id), svc)
    if problem:
        bot.timeline.record(incident.id, "chart_failed", problem)


def _traffic_line(steps: Sequence[Step]) -> str | None:
    argo = [s for s in steps if s.executor == "argo_rollouts"]
    if not argo:
        return None
    last = argo[-1]
    data = (last.outcome or {}).get("data", {})
    weight = data.get("canary_weight")
    if last.status == "done" and weight == 0:
        return f"{YES} Traffic to the bad version: 0% (stable ReplicaSet holds 100%)"
    if last.status == "done" and weight is None:
        return f"{UNKNOWN} Traffic to the bad version: the Rollout step did not report the canary weight"
    return f"{NO} Traffic to the bad version: {weight if weight is not None else 'unknown'}% (Rollout step {last.status})"


def _backlog_line(bot: IncidentService, svc: Service) -> str | None:
    query = svc.verify.backlog
    if not query:
        return None
    result = bot.prom.query(query)
    if result.error:
        return f"{UNKNOWN} Backlog drained: could not read it ({result.error})"
    if not result.values:
        return f"{UNKNOWN} Backlog drained: the backlog query returned no data"
    value = max(result.values)
    mark = YES if value <= svc.verify.backlog_max else NO
    return f"{mark} Backlog drained: {value:.4g} queued (at most {svc.verify.backlog_max:g} expected)"


def render(bot: IncidentService, incident: Incident, svc: Service, steps: Sequence[Step]) -> str:
    incident = bot.store.incident(incident.id)
    slos = (f"{YES} SLOs back in target (held for the verification's stable_for)" if incident.state == "recovered"
            else f"{NO} SLOs back in target: not confirmed ({incident.error or incident.state})")
    frozen = bot.store.frozen(svc.name)
    promotion = (f"{YES} Auto-promotion disabled (frozen: {frozen.reason})" if frozen
                 else f"{NO} Auto-promotion is NOT disabled")
    lines = [slos, _traffic_line(steps), _backlog_line(bot, svc), promotion,
             ":memo: Incident notes: reply in this thread (what changed, why it broke, follow-ups)"]
    return "*Post-rollback checklist*\n" + "\n".join(line for line in lines if line)

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
