"""POST /alertmanager: Alertmanager's webhook (version 4), an inbound adapter like the Slack ones.

Served by bot.app's WSGI app through `Route`. The request must carry `Authorization: Bearer <token>` with
the token from ALERTMANAGER_TOKEN (compared in constant time; without a configured token the route answers
503). `parse` turns the body into the domain's frozen values (bot.incidents.alerts.Alert) or a clear
BadWebhook (400, nothing opened); bot.incidents.alerts.Intake decides what each alert does.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from bot.incidents.alerts import FIRING, RESOLVED, Alert, Intake, Webhook
from handlers.bodies import MAX_BODY, TOO_LARGE, BadLength, TooLarge, read_body

log = logging.getLogger(__name__)


class BadWebhook(ValueError):
    """The body is not an Alertmanager version 4 webhook; the message names the field at fault."""


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
                 _text(raw, "generatorURL", where, required=False), starts=epoch(starts_at),
                 ends=epoch(ends_at) if ends_at else None)


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


# -- HTTP ----------------------------------------------------------------------------------------------
class Route:
    """The WSGI handler for POST /alertmanager (bot.app routes the path here)."""

    def __init__(self, intake: Intake, token: str | None, label: str = "service") -> None:
        self.token = token
        self.intake = intake
        self.label = label
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
        results = self.intake.handle(hook, label=self.label)
        return answer("200 OK", {"ok": True, "alerts": results})

    def _authorized(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        expected = self.token or ""
        # compare_digest on bytes: constant time whatever the length or content of what was sent.
        return scheme.lower() == "bearer" and bool(expected) and hmac.compare_digest(
            given.strip().encode(), expected.encode())
