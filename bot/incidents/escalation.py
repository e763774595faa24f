"""Escalation: a warning nobody acts on does nothing at 3 a.m., so after `escalate.after` the bot mentions the
approvers again in the thread and, with `escalate.pagerduty`, pages through PagerDuty's Events API v2.

Called by bot.incidents.service (`arm` when the warning is posted, `acted` when an approver acts on it, `ended` on a
dismissal), bot.incidents.runs (`ended` at every close) and bot.incidents.recovery (the ESCALATE work's handler,
`due`). The timer is a durable work row (bot.infra.replica), so it survives restarts and moves with a dead replica's
work. Each PagerDuty action (trigger, acknowledge, resolve) is sent at most once per incident, whichever replica
gets there (a `once:` claim in the store), in that order, on one background thread: PagerDuty slow or down never
delays a click or a rollback. The dedup_key is stable per incident and differs between incidents. A refused event
(400) or PagerDuty unreachable after the client's retries is said in the thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from bot.incidents.states import ESCALATE, State
from bot.infra.replica import Replica
from bot.infra.store import Incident, Store
from bot.slack import wording
from bot.slack.timeline import Timeline
from bot.slo.policy import Policy, Service

log = logging.getLogger(__name__)

TRIGGER, ACKNOWLEDGE, RESOLVE = "trigger", "acknowledge", "resolve"
ACTED = ("first_approval", "auto_stopped")  # an approver's act on an incident that stays open


class Result(Protocol):
    """What the PagerDuty client (bot.infra.pagerduty) answers."""

    @property
    def ok(self) -> bool: ...

    @property
    def status(self) -> int | None: ...

    @property
    def message(self) -> str: ...


class Pager(Protocol):
    def trigger(self, dedup_key: str, *, summary: str, source: str, severity: str, links: list[dict[str, str]],
                custom_details: dict[str, Any]) -> Result: ...

    def acknowledge(self, dedup_key: str) -> Result: ...

    def resolve(self, dedup_key: str) -> Result: ...


@dataclass(frozen=True)
class Sent:
    """One PagerDuty action sent for an incident (for tests and the thread)."""

    incident_id: int
    action: str
    ok: bool
    message: str


def dedup_key(incident: Incident) -> str:
    """Stable for an incident, different between incidents (and between databases that reuse an id)."""
    return f"rollback-bot/{incident.service}/incident-{incident.id}-{int(incident.opened_at)}"


class Escalation:
    def __init__(self, *, policy: Policy, store: Store, timeline: Timeline, work: Replica, pager: Pager | None,
                 thread_link: Callable[[Incident], str | None] = lambda _: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.store = store
        self.timeline = timeline
        self.work = work
        self.pager = pager  # None: PAGERDUTY_ROUTING_KEY is not set, nobody is paged (the re-mention still happens)
        self.thread_link = thread_link
        self.clock = clock
        self.sent: list[Sent] = []
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pagerduty")  # one thread: the actions stay in order

    # -- the timer ------------------------------------------------------------------------------------------
    def arm(self, incident: Incident, svc: Service) -> None:
        """The warning is posted: escalate `escalate.after` from now unless an approver acts first."""
        if svc.escalate is not None:
            self.work.schedule(ESCALATE, incident.id, due_in=svc.escalate.after)

    def due(self, incident_id: int, taken_over: bool = False) -> None:
        """The timer ran out: if the warning is still unattended, mention the approvers again and page."""
        incident = self.store.incident(incident_id)
        svc = self.policy.services.get(incident.service)
        if svc is None or svc.escalate is None or not self._unattended(incident):
            return
        if not self.store.claim_request(f"once:escalate:{incident_id}"):
            return  # another replica escalated it
        paging = svc.escalate.pagerduty and self.pager is not None
        self.timeline.record(incident_id, "escalated", wording.escalated(
            self.timeline.mention_approvers(svc.name), svc.escalate.after, paging=paging,
            configured=self.pager is not None or not svc.escalate.pagerduty), {"paging": paging})
        if paging:
            self._send(incident, TRIGGER)

    def _unattended(self, incident: Incident) -> bool:
        return incident.state == State.OPEN and not any(e.kind in ACTED for e in self.store.events(incident.id))

    # -- what ends it ---------------------------------------------------------------------------------------
    def acted(self, incident_id: int) -> None:
        """An approver acted (approved, gave the first approval, stopped the automatic rollback): no escalation;
        a page already sent is acknowledged."""
        self.work.cancel(ESCALATE, incident_id)
        self._follow_up(incident_id, ACKNOWLEDGE)

    def ended(self, incident_id: int) -> None:
        """The incident ended (recovered, failed, stopped, dismissed): a page already sent is resolved."""
        self.work.cancel(ESCALATE, incident_id)
        self._follow_up(incident_id, RESOLVE)

    def _follow_up(self, incident_id: int, action: str) -> None:
        if self.pager is None or not self._was_paged(incident_id):
            return
        self._send(self.store.incident(incident_id), action)

    def _was_paged(self, incident_id: int) -> bool:
        """Whether its escalation pages (stored before the trigger is sent, so an act right after it still
        acknowledges)."""
        return any(e.kind == "escalated" and e.data.get("paging") for e in self.store.events(incident_id))

    # -- PagerDuty ------------------------------------------------------------------------------------------
    def _send(self, incident: Incident, action: str) -> None:
        if self.store.claim_request(f"once:pagerduty:{incident.id}:{action}"):
            self._pool.submit(self._deliver, incident, action)

    def _deliver(self, incident: Incident, action: str) -> None:
        assert self.pager is not None
        key = dedup_key(incident)
        try:
            if action == TRIGGER:
                result = self.pager.trigger(key, **self._payload(incident))
            elif action == ACKNOWLEDGE:
                result = self.pager.acknowledge(key)
            else:
                result = self.pager.resolve(key)
        except Exception as exc:  # noqa: BLE001 - the client never raises; if it does, say so and go on
            log.exception("incident %s: PagerDuty %s failed", incident.id, action)
            self.sent.append(Sent(incident.id, action, False, str(exc)))
            self.timeline.record(incident.id, "page_failed", wording.page_failed(action, str(exc)))
            return
        self.sent.append(Sent(incident.id, action, result.ok, result.message))
        if not result.ok:
            self.timeline.record(incident.id, "page_failed", wording.page_failed(action, result.message))
        elif action == TRIGGER:
            self.timeline.record(incident.id, "paged", wording.paged(key), {"dedup_key": key})
        else:
            self.timeline.record(incident.id, f"page_{action}d", wording.page_followed(action))

    def _payload(self, incident: Incident) -> dict[str, Any]:
        detail = incident.detail or {}
        link = self.thread_link(incident)
        value = detail.get("words") or detail.get("value")
        return {
            "summary": wording.page_summary(incident, value)[:1024],
            "source": f"rollback-bot/{incident.service}",
            "severity": "critical",
            "links": [{"href": link, "text": "Slack thread"}] if link else [],
            "custom_details": {"service": incident.service, "incident": incident.id, "slo": incident.trigger,
                               "value": value, "target": detail.get("target"), "status": detail.get("status"),
                               "channel": incident.channel, "thread": link},
        }

    def wait(self, timeout: float = 10.0) -> None:
        """Block until the actions submitted so far are sent (tests, shutdown)."""
        self._pool.submit(lambda: None).result(timeout=timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
