"""POST /alertmanager: Alertmanager's webhook (version 4) as a second way into the same incidents.

Served by bot.app's WSGI app through `Route`. The request must carry `Authorization: Bearer <token>` with
the token from ALERTMANAGER_TOKEN (compared in constant time; without a configured token the route answers
503). `parse` turns the body into frozen values or a clear BadWebhook (400, nothing opened). `Intake` acts
on each alert through bot.incidents.service: a firing alert whose `service` label (ALERTMANAGER_SERVICE_LABEL) names a
known service opens an incident exactly like a breach the bot found itself, or, when that service already
has one, goes into its thread; a resolved alert becomes a line in the thread. Alerts are deduplicated by
fingerprint + startsAt in the store, so Alertmanager's repeat sends open nothing new.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from bot.incidents.service import IncidentService
from bot.infra import metrics
from bot.infra.store import TRIGGER_LENGTH, fit
from bot.slack import blocks
from bot.slo.evaluation import BREACH, Reading
from handlers.bodies import MAX_BODY, TOO_LARGE, BadLength, TooLarge, read_body

log = logging.getLogger(__name__)

FIRING, RESOLVED = "firing", "resolved"
_VALUE_KEYS = ("value", "current_value")
_TARGET_KEYS = ("target", "threshold")


class BadWebhook(ValueError):
    """The body is not an Alertmanager version 4 webhook; the message names the field at fault."""


@dataclass(frozen=True)
class Alert:
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    ends_at: str
    fingerprint: str
    generator_url: str = ""

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


# -- parsing -------------------------------------------------------------------------------------------
def parse(body: bytes) -> Webhook:
    """The webhook body as values; BadWebhook naming the first problem."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:  # the caller answers 400 with this text
        raise BadWebhook(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadWebhook("body must be a JSON object (Alertmanager's webhook payload)")
    if data.get("version") != "4":
        raise BadWebhook(f'version: expected "4" (Alertmanager webhook), got {data.get("version")!r}')
    status = _choice(data, "status", "")
    raw_alerts = data.get("alerts")
    if not isinstance(raw_alerts, list):
        raise BadWebhook("alerts: required, a list")
    alerts = tuple(_alert(a, f"alerts[{i}]") for i, a in enumerate(raw_alerts))
    return Webhook("4", status, _text(data, "receiver", "", required=False),
                   _text(data, "groupKey", "", required=False), alerts)


def _alert(raw: Any, where: str) -> Alert:
    if not isinstance(raw, dict):
        raise BadWebhook(f"{where}: must be an object")
    labels = _strings(raw.get("labels"), f"{where}.labels", required=True)
    annotations = _strings(raw.get("annotations"), f"{where}.annotations", required=False)
    starts_at = _text(raw, "startsAt", where)
    epoch(starts_at, f"{where}.startsAt")
    ends_at = _text(raw, "endsAt", where, required=False)
    if ends_at:
        epoch(ends_at, f"{where}.endsAt")
    fingerprint = _text(raw, "fingerprint", where)
    if len(fingerprint) > 64 or len(starts_at) > 64:
        raise BadWebhook(f"{where}: fingerprint and startsAt must be at most 64 characters")
    return Alert(_choice(raw, "status", where), labels, annotations, starts_at, ends_at, fingerprint,
                 _text(raw, "generatorURL", where, required=False))


def _choice(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if value not in (FIRING, RESOLVED):
        raise BadWebhook(f"{_at(where, key)}: expected \"firing\" or \"resolved\", got {value!r}")
    return str(value)


def _text(raw: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = raw.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise BadWebhook(f"{_at(where, key)}: required, a non-empty string" if required
                         else f"{_at(where, key)}: must be a string")
    return value


def _strings(value: Any, where: str, *, required: bool) -> dict[str, str]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise BadWebhook(f"{where}: {'required, ' if required else ''}an object of string values")
    return dict(value)


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def epoch(stamp: str, where: str = "time") -> float:
    """RFC 3339 (as Alertmanager writes it, nanoseconds included) to unix seconds."""
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError as exc:  # reported to the sender as a 400
        raise BadWebhook(f"{where}: not an RFC 3339 time: {stamp!r}") from exc
    if parsed.tzinfo is None:
        raise BadWebhook(f"{where}: the time needs a zone (Z or +hh:mm): {stamp!r}")
    return parsed.timestamp()


# -- acting --------------------------------------------------------------------------------------------
class Intake:
    """What the bot does with each alert of a webhook; one result dict per alert (the 200 answer)."""

    def __init__(self, bot: IncidentService, *, label: str = "service") -> None:
        self.bot = bot
        self.label = label

    def handle(self, hook: Webhook) -> list[dict[str, Any]]:
        results = []
        for alert in hook.alerts:
            result = self._one(alert)
            metrics.ALERTMANAGER_ALERTS.labels(result=result["result"]).inc()
            results.append(result)
        return results

    def _one(self, alert: Alert) -> dict[str, Any]:
        service = alert.labels.get(self.label, "")
        out: dict[str, Any] = {"fingerprint": alert.fingerprint, "alertname": alert.name, "status": alert.status,
                               "service": service or None, "incident_id": None}
        if not service:
            log.info("alertmanager: %s (%s) has no %r label: ignored", alert.name, alert.fingerprint, self.label)
            return {**out, "result": "ignored_no_service_label"}
        svc = self.bot.service(service)
        if svc is None:
            log.info("alertmanager: %s (%s) names unknown service %r: ignored", alert.name, alert.fingerprint,
                     service)
            return {**out, "result": "ignored_unknown_service"}
        if alert.status == RESOLVED:
            return {**out, **self._resolved(alert, svc.name)}
        store = self.bot.store
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
        svc = self.bot.service(service)
        assert svc is not None
        line = firing_text(alert)
        active = self.bot.store.active_incident(service)
        if active is not None:
            self.bot.timeline.record(active.id, "alert", line)
            return "recorded_in_incident", active.id
        incident = self.bot.open_incident(svc, reading(alert, service), source="alertmanager")
        if incident.trigger != alert.name or incident.breach_started_at != epoch(alert.starts_at):
            # Another opener (the bot's own evaluation, another alert) won the race: same thread, one line.
            self.bot.timeline.record(incident.id, "alert", line)
            return "recorded_in_incident", incident.id
        self.bot.timeline.record(incident.id, "alert", f"Opened from {line}")
        return "opened", incident.id

    def _resolved(self, alert: Alert, service: str) -> dict[str, Any]:
        store = self.bot.store
        ended = epoch(alert.ends_at) if alert.ends_at else time.time()
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
        self.bot.timeline.record(int(incident_id), "alert_resolved",
                                 f"Alertmanager: {blocks.inert(alert.name)} resolved at {blocks.clock(ended)}")
        return {"result": "resolved", "incident_id": int(incident_id)}


def reading(alert: Alert, service: str) -> Reading:
    """The evaluation Reading a firing alert stands for: slo = alertname, status breach since startsAt."""
    value = _number(alert.annotations, alert.labels, keys=_VALUE_KEYS)
    target = next((source[k] for k in _TARGET_KEYS for source in (alert.annotations, alert.labels)
                   if source.get(k)), "per the alert rule")
    # Without a `value` annotation the reading is still a breach (the alert fired); it reads "firing".
    return Reading(service=service, slo=alert.name, status=BREACH, value=value, target=target,
                   breach_since=epoch(alert.starts_at), sustained=True, detail=None if value is not None else "firing")


def firing_text(alert: Alert) -> str:
    summary = alert.annotations.get("summary") or alert.annotations.get("description") or ""
    value = _number(alert.annotations, alert.labels, keys=_VALUE_KEYS)
    shown = f" (value {value:.4g})" if value is not None else ""
    link = f" <{_link_target(alert.generator_url)}|source>" if alert.generator_url.startswith(("http://", "https://")) \
        else ""
    return (f"Alertmanager: {blocks.inert(alert.name)} firing since {blocks.clock(epoch(alert.starts_at))}{shown}"
            + (f": {blocks.inert(summary)}" if summary else "") + link)


def _link_target(url: str) -> str:
    """A URL from outside as the target of a link the bot writes: the characters that would end the link or
    start its label (< > | and spaces) are percent-encoded, so the label stays the bot's own."""
    return quote(url, safe=":/?#[]@!$&'()*+,;=%-._~")


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


# -- HTTP ----------------------------------------------------------------------------------------------
class Route:
    """The WSGI handler for POST /alertmanager (bot.app routes the path here)."""

    def __init__(self, bot: IncidentService, token: str | None, label: str = "service") -> None:
        self.token = token
        self.intake = Intake(bot, label=label)
        if not token:
            log.warning("POST /alertmanager is off: ALERTMANAGER_TOKEN is not set, so it answers 503")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        def answer(status: str, body: dict[str, Any], headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
            data = json.dumps(body).encode()
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                                    *headers])
            return [data]

        if not self.token:
            return answer("503 Service Unavailable",
                          {"ok": False, "error": "the Alertmanager intake is off: ALERTMANAGER_TOKEN is not set"})
        if environ.get("REQUEST_METHOD") != "POST":
            return answer("405 Method Not Allowed", {"ok": False, "error": "use POST"}, [("Allow", "POST")])
        if not self._authorized(environ.get("HTTP_AUTHORIZATION", "")):
            return answer("401 Unauthorized", {"ok": False, "error": "missing or wrong bearer token"},
                          [("WWW-Authenticate", 'Bearer realm="alertmanager"')])
        try:
            raw = read_body(environ)
        except TooLarge as exc:  # refused before more than MAX_BODY is read (with a Content-Length, before any)
            return answer(TOO_LARGE, {"ok": False, "error": str(exc)})
        except BadLength:  # a Content-Length that is not a number is a bad request like any other
            raw = b""
        if not raw:
            return answer("400 Bad Request", {"ok": False, "error": f"body must be 1 to {MAX_BODY} bytes of JSON"})
        try:
            hook = parse(raw)
        except BadWebhook as exc:  # answered, not raised: Alertmanager logs the 400 and does not retry it
            log.info("alertmanager: bad webhook: %s", exc)
            return answer("400 Bad Request", {"ok": False, "error": str(exc)})
        results = self.intake.handle(hook)
        return answer("200 OK", {"ok": True, "alerts": results})

    def _authorized(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        expected = self.token or ""
        # compare_digest on bytes: constant time whatever the length or content of what was sent.
        return scheme.lower() == "bearer" and bool(expected) and hmac.compare_digest(
            given.strip().encode(), expected.encode())
