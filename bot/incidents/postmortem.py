"""The postmortem draft: the facts of an incident gathered from the store (incident, timeline events, steps) and
Prometheus (one range query per SLO), worded as Markdown by bot.slack.postmortem and uploaded into the incident's
thread.

Called by bot.incidents.close at the close, after the summary (`post_draft`, which never raises), and by
bot.incidents.oncall for `/rollback postmortem <incident-id>` (`Postmortems.regenerate`, the same function at any
time). Anyone may ask: the draft goes into the incident's own thread, which everyone in the channel can read.
SLO values: over [breach start − 10 min, end + 2 min]; before = the last value before the breach, worst = the
lowest (or highest) during the incident by the SLO's healthy direction, after = the last value. A grouped SLO
(`by:`) reads this service's series; where a query gives several series, each moment counts its worst one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from bot.incidents.replies import Reply
from bot.incidents.runner import outcome_from
from bot.infra import redact
from bot.infra.prom import RangeResult
from bot.infra.store import Incident, Step, Store
from bot.slack import answers, chart
from bot.slack import postmortem as draft
from bot.slack.postmortem import Facts, SloValues, StepFacts
from bot.slack.slack_out import SlackError, SlackOut
from bot.slo.policy import Policy, Service, Slo

log = logging.getLogger(__name__)

BEFORE_SECONDS = 600.0  # the SLO queries start this long before the breach
AFTER_SECONDS = 120.0  # and end this long after the recovery (or the close, or now)


class RangeQueries(Protocol):
    def query_range(self, query: str, start: float, end: float, step: float) -> RangeResult: ...


def slo_window(incident: Incident, now: float) -> tuple[float, float]:
    start, _, end, _ = draft.impact_window(incident, now)
    return start - BEFORE_SECONDS, max(end, start) + AFTER_SECONDS


def slo_values(slo: Slo, result: RangeResult, *, service: str, breach: float, end: float) -> SloValues:
    """Before / worst / after of one SLO from its range query (`breach`, `end`: the impact window)."""
    healthy = slo.target_text()
    if result.error is not None:
        return SloValues(slo.name, healthy, note=f"query failed: {result.error}")
    series = [s for s in result.series if slo.by is None or s.labels.get(slo.by) == (slo.match or service)]
    worse = min if slo.higher_is_better else max
    merged: dict[float, float] = {}
    for one in series:
        for at, value in one.points:
            merged[at] = worse(merged[at], value) if at in merged else value
    points = sorted(merged.items())
    if not points:
        return SloValues(slo.name, healthy, note="no data")
    before = [v for at, v in points if at < breach]
    during = [v for at, v in points if breach <= at <= end] or [v for _, v in points]
    note = f"worst of {len(series)} series at each moment" if len(series) > 1 else ""
    return SloValues(slo.name, healthy, before[-1] if before else None, worse(during), points[-1][1], note)


def read_slos(prom: RangeQueries, incident: Incident, svc: Service, now: float) -> tuple[SloValues, ...]:
    """One range query per SLO; a burn-rate SLO is not queried (its burn over two windows is on the chart)."""
    start, end = slo_window(incident, now)
    breach, _, until, _ = draft.impact_window(incident, now)
    step = chart.step_seconds(start, end)
    rows = []
    for slo in svc.slos:
        if slo.burn_rate is not None or not slo.query:
            rows.append(SloValues(slo.name, slo.target_text(), note="burn rate: see the chart"))
            continue
        rows.append(slo_values(slo, prom.query_range(slo.query, start, end, step), service=svc.name,
                               breach=breach, end=until))
    return tuple(rows)


def step_facts(step: Step) -> StepFacts:
    outcome = outcome_from(step.outcome)
    stored_error = (step.outcome or {}).get("error")
    return StepFacts(position=step.position, executor=step.executor, status=step.status,
                     started_at=step.started_at, finished_at=step.finished_at,
                     summary=outcome.summary if outcome else None,
                     changes=tuple(c.describe() for c in outcome.changes) if outcome else (),
                     error=(outcome.error if outcome else None) or (str(stored_error) if stored_error else None))


def gather(store: Store, prom: RangeQueries, incident: Incident, svc: Service | None, now: float) -> Facts:
    """Everything the draft says, from the store and Prometheus. `svc` None: the service left the policy, so
    its SLOs and target are unknown."""
    steps: Sequence[Step] = store.steps(incident.id)
    return Facts(incident=incident, model=svc.model if svc else None,
                 target=svc.targets.recover if svc else None,
                 events=tuple(store.events(incident.id)), steps=tuple(step_facts(s) for s in steps),
                 slos=read_slos(prom, incident, svc, now) if svc else (), window=slo_window(incident, now),
                 generated_at=now,
                 slo_problem=None if svc else f"{incident.service} is no longer in the policy: its SLOs are unknown")


def markdown(store: Store, prom: RangeQueries, incident: Incident, svc: Service | None, now: float) -> str:
    """The draft as it leaves the process: without credentials (bot.infra.redact), like every other Slack text."""
    return redact.redact(draft.render(gather(store, prom, incident, svc, now)))


def post_draft(store: Store, prom: RangeQueries, slack: SlackOut, incident: Incident, svc: Service | None,
               now: float | None = None) -> str | None:
    """Draft the postmortem and upload it into the incident's thread. None when it was posted, else the reason
    (for the thread's timeline, or the person who asked). Never raises: a missing draft must not stop a close."""
    if not incident.channel or not incident.message_ts:
        return answers.postmortem_no_thread(incident.id)
    try:
        text = markdown(store, prom, incident, svc, now if now is not None else time.time())
        slack.upload_file(incident.channel, incident.message_ts, text.encode(), draft.filename(incident.id),
                          draft.title(incident.service, incident.id))
    except SlackError as exc:
        # Slack refused or was unreachable: the reason goes to the thread or the person instead of the file.
        log.warning("incident %s: postmortem draft not posted: %s", incident.id, exc)
        return answers.postmortem_not_posted(str(exc))
    except Exception as exc:  # noqa: BLE001 - a drafting bug must not stop the close around it
        log.exception("incident %s: postmortem drafting failed", incident.id)
        return answers.postmortem_not_posted(f"{type(exc).__name__}: {exc}")
    return None


class Postmortems:
    """`/rollback postmortem <incident-id>`: the draft again, from the store as it is now."""

    def __init__(self, *, policy: Policy, store: Store, prom: RangeQueries, slack: SlackOut,
                 clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.store = store
        self.prom = prom
        self.slack = slack
        self.clock = clock

    def regenerate(self, incident_id: int, user: str) -> Reply:
        incident = self.store.find_incident(incident_id)
        if incident is None:
            return Reply(False, answers.postmortem_unknown(incident_id))
        problem = post_draft(self.store, self.prom, self.slack, incident, self.policy.services.get(incident.service),
                             self.clock())
        self.store.audit(actor=user, action="postmortem", result="ok" if problem is None else "failed",
                         incident_id=incident_id, detail={"problem": problem} if problem else None)
        if problem is not None:
            return Reply(False, problem)
        return Reply(True, answers.postmortem_posted(incident, draft.filename(incident_id)))
