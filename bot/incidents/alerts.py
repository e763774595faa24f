"""What the bot does with Alertmanager's alerts: a second way into the same incidents.

Called by handlers.alertmanager with parsed webhook values. A firing alert whose `service` label
(ALERTMANAGER_SERVICE_LABEL) names a known service opens an incident exactly like a breach the bot found
itself (armed as `alertmanager`, so it may arm the automatic mode), or, when that service already has one, goes
into its thread; a resolved alert becomes a line in the thread. Alerts are deduplicated by fingerprint +
startsAt in the store, so Alertmanager's repeat sends open nothing new.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bot.infra import metrics
from bot.infra.store import TRIGGER_LENGTH, Store, fit
from bot.slack import wording
from bot.slack.timeline import Timeline
from bot.slo.evaluation import BREACH, Reading
from bot.slo.policy import Policy, Service

log = logging.getLogger(__name__)

FIRING, RESOLVED = "firing", "resolved"
_VALUE_KEYS = ("value", "current_value")
_TARGET_KEYS = ("target", "threshold")

Open = Callable[[Service, Reading], Any]  # opens (or finds) the service's incident for a firing alert


@dataclass(frozen=True)
class Alert:
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    ends_at: str
    fingerprint: str
    generator_url: str = ""
    starts: float = 0.0  # startsAt in unix seconds (parsed by the adapter)
    ends: float | None = None  # endsAt in unix seconds, when given

    @property
    def name(self) -> str:
        """The alertname, shortened to what an incident's trigger holds (it becomes the trigger): a 10 KB
        alertname still opens its incident, named by its first 127 characters and "…"."""
        return fit(self.labels.get("alertname", "unnamed alert"), TRIGGER_LENGTH)


@dataclass(frozen=True)
class Webhook:
    version: str
    status: str
    receiver: str
    group_key: str
    alerts: tuple[Alert, ...]


# -- acting --------------------------------------------------------------------------------------------
class Intake:
    """What the bot does with each alert of a webhook; one result dict per alert (the 200 answer)."""

    def __init__(self, *, policy: Policy, store: Store, timeline: Timeline, open_incident: Open,
) -> None:
        self.policy = policy
        self.store = store
        self.timeline = timeline
        self.open_incident = open_incident

    def handle(self, hook: Webhook, *, label: str = "service") -> list[dict[str, Any]]:
        """`label` is the alert label that names the service (ALERTMANAGER_SERVICE_LABEL)."""
        results = []
        for alert in hook.alerts:
            result = self._one(alert, label)
            metrics.ALERTMANAGER_ALERTS.labels(result=result["result"]).inc()
            results.append(result)
        return results

    def _one(self, alert: Alert, label: str) -> dict[str, Any]:
        service = alert.labels.get(label, "")
        out: dict[str, Any] = {"fingerprint": alert.fingerprint, "alertname": alert.name, "status": alert.status,
                               "service": service or None, "incident_id": None}
        if not service:
            log.info("alertmanager: %s (%s) has no %r label: ignored", alert.name, alert.fingerprint, label)
            return {**out, "result": "ignored_no_service_label"}
        svc = self.policy.services.get(service)
        if svc is None:
            log.info("alertmanager: %s (%s) names unknown service %r: ignored", alert.name, alert.fingerprint,
                     service)
            return {**out, "result": "ignored_unknown_service"}
        if alert.status == RESOLVED:
            return {**out, **self._resolved(alert, svc.name)}
        store = self.store
        if not store.claim_alert(alert.fingerprint, alert.starts_at, service=svc.name, alertname=alert.name):
            return {**out, "result": "duplicate"}
        try:
            result, incident_id = self._firing(alert, svc.name)
        except BaseException:
            # Nothing was opened or recorded for sure: drop the claim so Alertmanager's retry (it retries on
            # the 500 this becomes) is handled instead of deduplicated.
            store.update_alert(alert.fingerprint, alert.starts_at, delete=True)
            raise
        store.update_alert(alert.fingerprint, alert.starts_at, incident_id=incident_id)
        return {**out, "result": result, "incident_id": incident_id}

    def _firing(self, alert: Alert, service: str) -> tuple[str, int]:
        svc = self.policy.services.get(service)
        assert svc is not None
        line = firing_text(alert)
        active = self.store.active_incident(service)
        if active is not None:
            self.timeline.record(active.id, "alert", line)
            return "recorded_in_incident", active.id
        incident = self.open_incident(svc, reading(alert, service))
        if incident.trigger != alert.name or incident.breach_started_at != alert.starts:
            # Another opener (the bot's own evaluation, another alert) won the race: same thread, one line.
            self.timeline.record(incident.id, "alert", line)
            return "recorded_in_incident", incident.id
        self.timeline.record(incident.id, "alert", wording.opened_from(line))
        return "opened", incident.id

    def _resolved(self, alert: Alert, service: str) -> dict[str, Any]:
        store = self.store
        ended = alert.ends if alert.ends is not None else time.time()
        row = store.update_alert(alert.fingerprint, alert.starts_at, unresolved_only=True, resolved_at=ended)
        if row is None:  # never seen firing (the bot was down then), or this resolution was handled already
            if not store.claim_alert(alert.fingerprint, alert.starts_at, service=service, alertname=alert.name,
                                     resolved_at=ended):
                return {"result": "duplicate"}
            active = store.active_incident(service)
            row = {"incident_id": active.id if active else None}
        incident_id = row.get("incident_id")
        if incident_id is None:
            return {"result": "resolved_without_incident"}
        self.timeline.record(int(incident_id), "alert_resolved", wording.alert_resolved(alert.name, ended))
        return {"result": "resolved", "incident_id": int(incident_id)}


def reading(alert: Alert, service: str) -> Reading:
    """The evaluation Reading a firing alert stands for: slo = alertname, status breach since startsAt."""
    value = _number(alert.annotations, alert.labels, keys=_VALUE_KEYS)
    target = next((source[k] for k in _TARGET_KEYS for source in (alert.annotations, alert.labels)
                   if source.get(k)), "per the alert rule")
    # Without a `value` annotation the reading is still a breach (the alert fired); it reads "firing".
    return Reading(service=service, slo=alert.name, status=BREACH, value=value, target=target,
                   breach_since=alert.starts, sustained=True, detail=None if value is not None else "firing")


def firing_text(alert: Alert) -> str:
    summary = alert.annotations.get("summary") or alert.annotations.get("description") or ""
    return wording.alert_firing(alert.name, alert.starts, _number(alert.annotations, alert.labels, keys=_VALUE_KEYS),
                                summary, alert.generator_url)


def _number(*sources: dict[str, str], keys: Iterable[str]) -> float | None:
    for key in keys:
        for source in sources:
            try:
                value = float(source[key])
            except (KeyError, ValueError):  # absent or not a number: try the next place, else no value
                continue
            if math.isfinite(value):
                return value
    return None
