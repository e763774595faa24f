"""Tests for POST /alertmanager (handlers/alertmanager.py): Alertmanager's webhook through the real WSGI app
served by waitress on 127.0.0.1 (tests/handler_env.py), against the fake Slack Web API and a real MLflow
server behind the rollback plan, and then the same route fed by a real Alertmanager (Debian's package).

What they show: the bearer token guards the route (401), a malformed body is a 400 that opens nothing, a
firing alert opens the same warning with buttons as a breach the bot found, repeat sends are deduplicated
by fingerprint + startsAt (even after the incident ended), a resolved alert is a line in the thread, and
alerts for unknown services are ignored and counted.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow.tracking import MlflowClient

from bot.infra.config import ConfigError, Settings
from handlers.alertmanager import BadWebhook, parse
from sandbox.servers import AlertmanagerServer, MlflowServer, alertmanager_binary
from sandbox.slack_api import FakeSlackAPI
from tests.handler_env import (
    GROUP,
    GROUP_MEMBER,
    MODEL_CHANNEL,
    MODEL_SVC,
    RANKER_CHANNEL,
    HandlerEnv,
    has_buttons,
    seed_models,
    wait_until,
)

AM_TOKEN = "am-webhook-token-0123456789"
ALERTNAME = "ModelAUCLow"


# -- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as api:
        yield api


def bench(tmp_path: Path, slack: FakeSlackAPI, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
          model: str, **settings: Any) -> HandlerEnv:
    """The handler bench with the Alertmanager settings given (the route is built when it starts)."""
    env = HandlerEnv(tmp_path, slack, mlflow_client, seed_models(mlflow_client, model), mlflow_url=mlflow_server.url)
    env.runtime.settings = replace(env.runtime.settings, **settings)
    return env.start()


@pytest.fixture
def env(tmp_path: Path, slack: FakeSlackAPI, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str) -> Iterator[HandlerEnv]:
    running = bench(tmp_path, slack, mlflow_server, mlflow_client, unique_model, alertmanager_token=AM_TOKEN)
    try:
        yield running
    finally:
        running.stop()


# -- helpers -----------------------------------------------------------------------------------------------
def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def alert(fingerprint: str = "a1b2c3d4e5f60718", *, status: str = "firing", service: str | None = MODEL_SVC,
          name: str = ALERTNAME, starts: float | None = None, ends: float | None = None,
          value: str | None = "0.71") -> dict[str, Any]:
    labels = {"alertname": name, "severity": "page"}
    if service is not None:
        labels["service"] = service
    annotations = {"summary": "AUC fell below 0.8", "threshold": "> 0.8"}
    if value is not None:
        annotations["value"] = value
    return {"status": status, "labels": labels, "annotations": annotations,
            "startsAt": rfc3339(starts if starts is not None else time.time() - 30),
            "endsAt": rfc3339(ends) if ends is not None else "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example/graph?g0.expr=auc", "fingerprint": fingerprint}


def webhook(*alerts: dict[str, Any]) -> dict[str, Any]:
    firing = any(a["status"] == "firing" for a in alerts)
    return {"version": "4", "groupKey": '{}:{alertname="ModelAUCLow"}', "truncatedAlerts": 0,
            "status": "firing" if firing else "resolved", "receiver": "rollback-bot",
            "groupLabels": {"alertname": ALERTNAME}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager.example", "alerts": list(alerts)}


def send(env: HandlerEnv, body: Any, *, token: str | None = AM_TOKEN, raw: bytes | None = None,
         scheme: str = "Bearer") -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(f"{env.url}/alertmanager", data=data, headers=headers, timeout=30)


def results(response: requests.Response) -> list[str]:
    assert response.status_code == 200, (response.status_code, response.text)
    return [a["result"] for a in response.json()["alerts"]]


def alert_count(env: HandlerEnv, result: str) -> float:
    """rollback_alertmanager_alerts_total{result=...} as GET /metrics serves it (0 before the first)."""
    text = requests.get(f"{env.url}/metrics", timeout=10).text
    found = re.search(rf'^rollback_alertmanager_alerts_total{{result="{result}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def warnings(env: HandlerEnv, channel: str = MODEL_CHANNEL) -> list[dict[str, Any]]:
    return env.slack.messages(channel)


# -- the token -----------------------------------------------------------------------------------------------
def test_missing_or_wrong_token_is_401_and_opens_nothing(env: HandlerEnv) -> None:
    body = webhook(alert())
    for response in (send(env, body, token=None), send(env, body, token="wrong-token"),
                     send(env, body, token=AM_TOKEN, scheme="Basic"), send(env, body, token=AM_TOKEN + "x")):
        assert response.status_code == 401
        assert response.json() == {"ok": False, "error": "missing or wrong bearer token"}
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert env.store.active_incident(MODEL_SVC) is None
    assert env.slack.calls("chat.postMessage") == []


def test_without_a_configured_token_the_route_is_off(
    tmp_path: Path, slack: FakeSlackAPI, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
    unique_model: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="handlers.alertmanager"):
        off = bench(tmp_path, slack, mlflow_server, mlflow_client, unique_model, alertmanager_token=None)
    try:
        assert "ALERTMANAGER_TOKEN is not set" in caplog.text  # said once, at start
        response = send(off, webhook(alert()), token="anything")
        assert response.status_code == 503
        assert "ALERTMANAGER_TOKEN is not set" in response.json()["error"]
        assert off.store.active_incident(MODEL_SVC) is None
    finally:
        off.stop()


def test_settings_read_the_token_and_label_and_never_show_the_token() -> None:
    base = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s", "PROMETHEUS_URL": "http://127.0.0.1:9",
            "MLFLOW_TRACKING_URI": "sqlite:///x.db"}
    default = Settings.from_env(base)
    assert (default.alertmanager_token, default.alertmanager_service_label) == (None, "service")
    settings = Settings.from_env({**base, "ALERTMANAGER_TOKEN": AM_TOKEN, "ALERTMANAGER_SERVICE_LABEL": "app"})
    assert (settings.alertmanager_token, settings.alertmanager_service_label) == (AM_TOKEN, "app")
    assert AM_TOKEN not in repr(settings) and AM_TOKEN in settings.secrets()
    with pytest.raises(ConfigError, match="ALERTMANAGER_SERVICE_LABEL"):
        Settings.from_env({**base, "ALERTMANAGER_SERVICE_LABEL": "not a label"})


# -- bad bodies ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "error"), [
    (b"{not json", "body is not JSON"),
    (b"[]", "body must be a JSON object"),
    (json.dumps({**webhook(alert()), "version": "3"}).encode(), 'version: expected "4"'),
    (json.dumps({**webhook(alert()), "alerts": None}).encode(), "alerts: required, a list"),
    (json.dumps(webhook({**alert(), "fingerprint": ""})).encode(), "alerts[0].fingerprint: required"),
    (json.dumps(webhook({**alert(), "status": "pending"})).encode(), 'alerts[0].status: expected "firing"'),
    (json.dumps(webhook({**alert(), "startsAt": "yesterday"})).encode(), "alerts[0].startsAt: not an RFC 3339"),
    (json.dumps(webhook({**alert(), "labels": {"service": 3}})).encode(), "alerts[0].labels: required, an object"),
    (b"", "body must be 1 to"),
])
def test_a_malformed_body_is_400_with_a_clear_error_and_opens_nothing(env: HandlerEnv, body: bytes,
                                                                       error: str) -> None:
    response = send(env, None, raw=body)
    assert response.status_code == 400, response.text
    assert response.json()["ok"] is False and error in response.json()["error"]
    assert env.store.active_incident(MODEL_SVC) is None
    assert env.slack.calls("chat.postMessage") == []


def test_parse_reads_every_field_alertmanager_sends() -> None:
    hook = parse(json.dumps(webhook(alert(starts=1_796_000_000.5))).encode())
    [one] = hook.alerts
    assert (hook.version, hook.status, hook.receiver) == ("4", "firing", "rollback-bot")
    assert (one.name, one.fingerprint, one.labels["service"], one.annotations["value"]) == (
        ALERTNAME, "a1b2c3d4e5f60718", MODEL_SVC, "0.71")
    nanos = {**alert(), "startsAt": "2026-11-30T01:20:00.123456789Z"}  # Go writes nanoseconds
    assert parse(json.dumps(webhook(nanos)).encode()).alerts[0].starts_at == "2026-11-30T01:20:00.123456789Z"
    with pytest.raises(BadWebhook, match="needs a zone"):
        parse(json.dumps(webhook({**alert(), "startsAt": "2026-11-30T01:20:00"})).encode())


# -- firing ----------------------------------------------------------------------------------------------
def test_a_firing_alert_opens_an_incident_with_the_warning_and_buttons(env: HandlerEnv) -> None:
    starts = time.time() - 42
    response = send(env, webhook(alert(starts=starts)))

    assert results(response) == ["opened"]
    incident = env.store.active_incident(MODEL_SVC)
    assert incident is not None and incident.state == "open"
    assert response.json()["alerts"][0]["incident_id"] == incident.id
    assert incident.trigger == ALERTNAME and incident.breach_started_at == pytest.approx(starts, abs=1e-3)
    assert incident.detail["value"] == pytest.approx(0.71) and incident.detail["target"] == "> 0.8"
    [warning] = warnings(env)
    assert warning["ts"] == incident.message_ts and has_buttons(warning)
    assert ALERTNAME in json.dumps(warning["blocks"]) and "0.71" in json.dumps(warning["blocks"])
    thread = env.thread_texts(incident)
    assert any(f"Detected: {ALERTNAME} = 0.71" in t for t in thread)
    assert any(f"Opened from Alertmanager: {ALERTNAME} firing since" in t and "AUC fell below 0.8" in t
               for t in thread)


def test_a_firing_alert_without_a_value_still_opens_the_warning(env: HandlerEnv) -> None:
    assert results(send(env, webhook(alert(value=None)))) == ["opened"]
    incident = env.store.active_incident(MODEL_SVC)
    assert incident is not None and incident.detail["value"] is None
    [warning] = warnings(env)
    assert has_buttons(warning)
    assert any(f"Opened from Alertmanager: {ALERTNAME} firing since" in t for t in env.thread_texts(incident))


def test_repeat_sends_open_nothing_new_even_after_the_incident_ended(env: HandlerEnv) -> None:
    body = webhook(alert(starts=time.time() - 10))
    assert results(send(env, body)) == ["opened"]
    posts = len(env.slack.calls("chat.postMessage"))
    before = alert_count(env, "duplicate")

    assert results(send(env, body)) == ["duplicate"]
    assert results(send(env, body)) == ["duplicate"]
    incident = env.store.active_incident(MODEL_SVC)
    assert incident is not None
    env.store.transition(incident.id, ("open",), "dismissed")  # an approver dismissed it
    assert results(send(env, body)) == ["duplicate"]  # Alertmanager's repeat_interval re-send

    assert env.store.active_incident(MODEL_SVC) is None
    assert len(env.store.recent_incidents(MODEL_SVC)) == 1
    assert len(env.slack.calls("chat.postMessage")) == posts
    assert alert_count(env, "duplicate") == before + 3


def test_another_alert_for_a_service_with_an_incident_goes_into_its_thread(env: HandlerEnv) -> None:
    assert results(send(env, webhook(alert("f1")))) == ["opened"]
    incident = env.store.active_incident(MODEL_SVC)
    assert incident is not None

    response = send(env, webhook(alert("f2", name="ModelLatencyHigh", value="0.41")))

    assert results(response) == ["recorded_in_incident"]
    assert response.json()["alerts"][0]["incident_id"] == incident.id
    assert len(warnings(env)) == 1
    assert any("Alertmanager: ModelLatencyHigh firing since" in t and "(value 0.41)" in t
               for t in env.thread_texts(incident))


# -- resolved ------------------------------------------------------------------------------------------------
def test_a_resolved_alert_is_a_line_in_the_incident_thread(env: HandlerEnv) -> None:
    starts = time.time() - 60
    assert results(send(env, webhook(alert(starts=starts)))) == ["opened"]
    incident = env.store.active_incident(MODEL_SVC)
    assert incident is not None
    ended = time.time()

    resolved = alert(status="resolved", starts=starts, ends=ended)
    assert results(send(env, webhook(resolved))) == ["resolved"]
    assert results(send(env, webhook(resolved))) == ["duplicate"]

    clock = time.strftime("%H:%M:%S", time.gmtime(ended))
    lines = [t for t in env.thread_texts(incident) if "resolved at" in t]
    assert len(lines) == 1 and f"Alertmanager: {ALERTNAME} resolved at {clock} UTC" in lines[0]
    assert len(warnings(env)) == 1


def test_a_resolved_alert_never_seen_firing_goes_to_the_open_incident_or_nowhere(env: HandlerEnv) -> None:
    resolved = alert("unseen", status="resolved", starts=time.time() - 60, ends=time.time())
    assert results(send(env, webhook(resolved))) == ["resolved_without_incident"]
    assert env.slack.calls("chat.postMessage") == []


# -- ignored ------------------------------------------------------------------------------------------------
def test_alerts_for_unknown_services_or_without_the_label_are_ignored_and_counted(env: HandlerEnv) -> None:
    unknown, unlabelled = alert_count(env, "ignored_unknown_service"), alert_count(env, "ignored_no_service_label")

    response = send(env, webhook(alert("u1", service="payments"), alert("u2", service=None)))

    assert results(response) == ["ignored_unknown_service", "ignored_no_service_label"]
    assert [a["service"] for a in response.json()["alerts"]] == ["payments", None]
    assert env.slack.calls("chat.postMessage") == [] and env.store.recent_incidents() == []
    assert alert_count(env, "ignored_unknown_service") == unknown + 1
    assert alert_count(env, "ignored_no_service_label") == unlabelled + 1


def test_the_service_label_name_is_configurable(
    tmp_path: Path, slack: FakeSlackAPI, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
    unique_model: str
) -> None:
    env = bench(tmp_path, slack, mlflow_server, mlflow_client, unique_model, alertmanager_token=AM_TOKEN,
                alertmanager_service_label="app")
    try:
        by_service = alert("s1", service="ranker-svc")
        by_app = {**alert("s2", service=None), "labels": {"alertname": ALERTNAME, "app": "ranker-svc"}}
        assert results(send(env, webhook(by_service, by_app))) == ["ignored_no_service_label", "opened"]
        assert len(env.slack.messages(RANKER_CHANNEL)) == 1
    finally:
        env.stop()


# -- a real Alertmanager -------------------------------------------------------------------------------------
def test_a_real_alertmanager_opens_one_incident_and_posts_the_resolution(
    env: HandlerEnv, tmp_path: Path
) -> None:
    if alertmanager_binary() is None:
        pytest.skip("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")
    duplicates = alert_count(env, "duplicate")
    starts = time.time() - 5
    labels = {"alertname": ALERTNAME, "service": MODEL_SVC, "severity": "page"}
    annotations = {"summary": "AUC fell below 0.8", "value": "0.69", "threshold": "> 0.8"}
    # repeat_interval 2s: Alertmanager re-sends the unchanged group, which must not open a second incident.
    with AlertmanagerServer(tmp_path / "am", f"{env.url}/alertmanager", AM_TOKEN, repeat_interval="2s",
                            binary=alertmanager_binary() or "") as am:
        am.push([{"labels": labels, "annotations": annotations, "startsAt": rfc3339(starts),
                  "generatorURL": "http://prometheus.example/graph"}])
        incident = wait_until(lambda: (i := env.store.active_incident(MODEL_SVC)) and i.message_ts and i,
                              "the warning of the incident Alertmanager opened")
        wait_until(lambda: alert_count(env, "duplicate") >= duplicates + 2, "Alertmanager's repeat sends",
                   timeout=20)
        [held] = am.alerts()
        assert held["labels"] == labels and held["status"]["state"] == "active"

        ended = time.time()
        am.push([{"labels": labels, "annotations": annotations, "startsAt": rfc3339(starts),
                  "endsAt": rfc3339(ended)}])
        line = wait_until(lambda: [t for t in env.thread_texts(incident) if "resolved at" in t],
                          "the resolved line in the thread", timeout=20)

    assert incident.trigger == ALERTNAME and incident.breach_started_at == pytest.approx(starts, abs=1)
    assert len(env.store.recent_incidents(MODEL_SVC)) == 1
    [warning] = warnings(env)
    assert has_buttons(warning)
    assert len(line) == 1 and f"Alertmanager: {ALERTNAME} resolved at" in line[0]
    assert not (tmp_path / "am" / "alertmanager.log").read_text().count(AM_TOKEN)
