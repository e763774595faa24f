"""The level-2 test bench for tests/test_handlers.py: the real app built in-process by `bot.app.build`, served
by waitress over real HTTP on 127.0.0.1, talking to the fake Slack Web API and a real MLflow server.

`HandlerEnv` owns one runtime (its own SQLite file, so tests never share incidents) and gives the tests a
small vocabulary: send a signed slash command, click a button on the warning, submit the typed-confirm
modal, and read back what happened (Slack calls, MLflow aliases, store rows). Nothing talks to Prometheus
here: its URL points at a closed local port, so verification after an approval only sees query errors.
"""

from __future__ import annotations

import html
import threading
import time
from pathlib import Path
from typing import Any

import requests
import waitress
from mlflow.tracking import MlflowClient

from bot.app import Runtime, build
from bot.infra.config import Settings
from bot.infra.store import Incident
from bot.slo.policy_file import parse_policy
from sandbox.model_service import seed_registry
from sandbox.servers import free_port
from sandbox.signing import block_actions_body, post_signed, slash_command_body, view_submission_body
from sandbox.slack_api import Call, FakeSlackAPI

SECRET = "handler-signing-secret"
TOKEN = "xoxb-handler-token-0000"
APPROVER = "U0APPROVER"
GROUP, GROUP_MEMBER = "S0ONCALL", "U0ONCALL1"
STRANGER = "U0STRANGER"
MODEL_SVC, MODEL_CHANNEL = "model-svc", "C0MODELSVC"
RANKER_SVC, RANKER_CHANNEL = "ranker-svc", "C0RANKERSVC"
OTHER_CHANNEL = "C0OTHER"
BAD_VERSION, GOOD_VERSION = "2", "1"  # champion -> v2 (the bad one), previous_champion -> v1


def policy_yaml(models: dict[str, str], extra: dict[str, str] | None = None) -> str:
    """Two services: `model-svc` confirmed by Slack's dialog, `ranker-svc` by typing its name. `extra` adds
    policy lines to a service (e.g. `two_person: true`)."""
    services = {MODEL_SVC: (MODEL_CHANNEL, "dialog"), RANKER_SVC: (RANKER_CHANNEL, "typed")}
    text = "evaluate_every: 1s\nservices:\n"
    for name, (channel, confirm) in services.items():
        text += f"""
  {name}:
    channel: {channel}
    approvers: [{APPROVER}, {GROUP}]
    confirm: {confirm}
    model: {models[name]}
    slos:
      - name: auc
        query: 'min(model_auc{{service="{name}"}})'
        below: 0.8
    rollback:
      - mlflow_alias: {{model: {models[name]}, alias: champion, to: previous_champion}}
    verify: {{every: 2s, within: 10m, stable_for: 1m}}
"""
        for line in (extra or {}).get(name, "").splitlines():
            text += f"    {line}\n"
    return text


def seed_models(client: MlflowClient, prefix: str) -> dict[str, str]:
    """One fresh registered model per service on the shared MLflow server: champion v2, previous v1."""
    models = {MODEL_SVC: f"{prefix}-model", RANKER_SVC: f"{prefix}-ranker"}
    for model in models.values():
        v1, v2 = seed_registry(client, model, versions=2)
        client.set_registered_model_alias(model, "champion", v2)
        client.set_registered_model_alias(model, "previous_champion", v1)
    return models


def wait_until(predicate: Any, what: str, timeout: float = 10, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class HandlerEnv:
    """One runtime served over HTTP; `start()` / `stop()` bracket a test."""

    def __init__(self, workdir: Path, slack: FakeSlackAPI, mlflow: MlflowClient, models: dict[str, str], *,
                 mlflow_url: str, extra: dict[str, str] | None = None, policy: str | None = None,
                 database_url: str | None = None) -> None:
        self.slack = slack
        self.mlflow = mlflow
        self.models = models
        self.settings = Settings(
            slack_bot_token=TOKEN, slack_signing_secret=SECRET, slack_api_url=slack.url,
            prometheus_url=f"http://127.0.0.1:{free_port()}",  # nothing listens: no Prometheus in these tests
            mlflow_tracking_uri=mlflow_url, database_url=database_url or f"sqlite:///{workdir / 'bot.db'}")
        text = policy if policy is not None else policy_yaml(models, extra)
        self.runtime: Runtime = build(self.settings, parse_policy(text), mlflow=mlflow)
        self.store = self.runtime.bot.store
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> HandlerEnv:
        self._server = waitress.create_server(self.runtime.wsgi(), host="127.0.0.1", port=0, threads=8)
        self.url = f"http://127.0.0.1:{self._server.effective_port}"
        self.events_url = f"{self.url}/slack/events"
        self._thread = threading.Thread(target=self._server.run, name="waitress", daemon=True)
        self._thread.start()
        self.runtime.bot.start_work()
        return self

    def stop(self) -> None:
        self.runtime.bot.stop()
        if self._server is not None and self._thread is not None:
            close_waitress(self._server, self._thread)
        self.store.engine.dispose()

    # -- requests Slack would send -------------------------------------------------------------------
    def command(self, text: str, *, user: str = APPROVER, channel: str = MODEL_CHANNEL) -> requests.Response:
        body = slash_command_body(text=text, user_id=user, channel_id=channel, response_url=self.slack.response_url)
        self._answers_seen = len(self.slack.calls("response_url"))
        return self._post(body)

    def answer(self, text: str, *, user: str = APPROVER, channel: str = MODEL_CHANNEL, timeout: float = 10) -> str:
        """Send `/rollback <text>` and return the answer Slack shows: the ack body, or, for a command acked at
        once, what the bot posted to its response_url. Slack's &lt; &gt; &amp; read as < > &."""
        response = self.command(text, user=user, channel=channel)
        if response.text:
            return html.unescape(response.text)
        call = wait_until(lambda: next((c for c in self.slack.calls("response_url")[self._answers_seen:]
                                        if c.params.get("text")), None), f"the answer to /rollback {text}", timeout)
        assert call.params.get("response_type", "ephemeral") == "ephemeral", call.params
        return html.unescape(str(call.params["text"]))

    def click(self, warning: dict[str, Any], action_id: str, *, user: str, channel: str = MODEL_CHANNEL,
              value: str | None = None) -> requests.Response:
        """Click a button of the warning message as the fake Web API stores it."""
        incident_id = value if value is not None else button(warning, action_id)["value"]
        body = block_actions_body(user_id=user, channel_id=channel, message_ts=warning["ts"], action_id=action_id,
                                  value=incident_id, message=warning, response_url=self.slack.response_url)
        return self._post(body)

    def submit_confirm(self, view: dict[str, Any], typed: str, *, user: str) -> requests.Response:
        """Submit the typed-confirm modal the bot opened, with `typed` in its input."""
        block = next(b for b in view["blocks"] if b.get("type") == "input")
        values = {block["block_id"]: {block["element"]["action_id"]: {"type": "plain_text_input", "value": typed}}}
        body = view_submission_body(user_id=user, callback_id=view["callback_id"],
                                    private_metadata=view["private_metadata"], values=values, view_id=view["id"])
        return self._post(body)

    def _post(self, body: str) -> requests.Response:
        response = post_signed(self.events_url, SECRET, body)
        self.last_body = body
        assert response.status_code == 200, (response.status_code, response.text)
        return response

    # -- what happened -------------------------------------------------------------------------------
    def open_warning(self, service: str = MODEL_SVC, *, user: str = APPROVER) -> tuple[Incident, dict[str, Any]]:
        """`/rollback <service>` from the service's channel; returns the incident and its posted warning."""
        svc = self.runtime.bot.incidents.service(service)
        assert svc is not None
        self.command(service, user=user, channel=svc.channel)
        incident = wait_until(lambda: (i := self.store.active_incident(service)) and i.message_ts and i,
                              f"the {service} warning")
        return incident, self.slack.message(svc.channel, incident.message_ts)

    def champion(self, service: str = MODEL_SVC) -> str:
        return str(self.mlflow.get_model_version_by_alias(self.models[service], "champion").version)

    def audits(self, incident_id: int, action: str | None = None) -> list[dict[str, Any]]:
        return [a for a in self.store.audits(incident_id) if action in (None, a["action"])]

    def thread_texts(self, incident: Incident) -> list[str]:
        assert incident.channel and incident.message_ts
        return [m.get("text", "") for m in self.slack.thread(incident.channel, incident.message_ts)]

    def ephemeral_to(self, user: str, contains: str = "", timeout: float = 10) -> Call:
        return self.slack.wait_for(lambda c: c.method == "chat.postEphemeral" and c.params.get("user") == user
                                   and contains in c.params.get("text", ""), timeout=timeout)

    def channel_posts(self) -> list[Call]:
        return self.slack.calls("chat.postMessage")


def close_waitress(server: Any, thread: threading.Thread) -> None:
    """Stop a waitress server started with create_server() and run on `thread`.

    Closed from inside waitress's loop thread, which then has nothing left to serve and returns at once instead
    of after its 1 s select() timeout. The close is queued and the wake-up written under the trigger's lock:
    pull_trigger(server.close) queues it first and writes after, so a loop woken meanwhile by a worker's own
    wake-up can run the close (and close the pipe) before that write, which then fails with EBADF (seen 1 run
    in 10) or hits a reused descriptor."""
    trigger = server.trigger
    with trigger.lock:
        trigger.thunks.append(server.close)
        trigger.pull_trigger()
    thread.join(timeout=5)
    server.task_dispatcher.shutdown()


def button(message: dict[str, Any], action_id: str) -> dict[str, Any]:
    for block in message.get("blocks") or []:
        for element in block.get("elements") or []:
            if element.get("action_id") == action_id:
                return dict(element)
    raise AssertionError(f"no button {action_id} in {message.get('text')!r}")


def has_buttons(message: dict[str, Any]) -> bool:
    return any(block.get("type") == "actions" for block in message.get("blocks") or [])
