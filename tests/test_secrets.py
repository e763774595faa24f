"""Secrets never leave the bot: the Slack bot token, the signing secret and the Alertmanager token are
searched for in ALL captured output of a real `rollback-bot serve` run through a whole story.

Scanned: the bot's log file (stdout and stderr), every call the fake Slack Web API recorded (params, text,
blocks, headers), GET /metrics and GET /healthz, and every row of every table in the bot's database (audit,
events, steps, incidents...). The story includes Slack calls that fail with the token in their error, a
user-group lookup failing the same way (its reason reaches an ephemeral refusal and the audit log),
Alertmanager webhooks with right and wrong bearer tokens, and a second run whose SLACK_API_URL carries the
token, so exception messages and tracebacks are exercised too.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import time
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from bot.app import RedactSecrets
from bot.infra.store import Store
from sandbox.model_service import seed_registry
from sandbox.servers import MlflowServer, free_port
from sandbox.signing import post_signed, slash_command_body
from sandbox.slack_api import FakeSlackAPI
from tests.story_env import APPROVER, CHANNEL, GROUP, SECRET, STRANGER, TOKEN, BotProcess, button, wait_until
from tests.test_alertmanager import alert, webhook
from tests.test_restart import SERVICE, story

pytestmark = pytest.mark.story

AM_TOKEN = "am-secret-token-4242"
SECRETS = {"SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET, "ALERTMANAGER_TOKEN": AM_TOKEN}


def _leaks(where: str, text: str) -> list[str]:
    return [f"{name} in {where}" for name, value in SECRETS.items() if value in text]


def _database(path: Path) -> str:
    """Every row of every table, as text."""
    with sqlite3.connect(path) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "\n".join(f"{table}: {row!r}" for table in tables for row in conn.execute(f'SELECT * FROM "{table}"'))


def _slack_calls(slack: FakeSlackAPI) -> str:
    return "\n".join(json.dumps({"method": c.method, "params": c.params, "headers": c.headers}, default=str)
                     for c in slack.calls())


def _scan(bot: BotProcess, slack: FakeSlackAPI, db: Path) -> dict[str, int]:
    sources = {"the bot's log": bot.log(), "Slack calls": _slack_calls(slack), "the database": _database(db),
               "/metrics": requests.get(f"{bot.url}/metrics", timeout=5).text,
               "/healthz": requests.get(f"{bot.url}/healthz", timeout=5).text}
    leaks = [leak for where, text in sources.items() for leak in _leaks(where, text)]
    assert leaks == [], leaks
    return {where: len(text) for where, text in sources.items()}


def _am(bot: BotProcess, token: str, body: dict[str, object]) -> requests.Response:
    return requests.post(f"{bot.url}/alertmanager", data=json.dumps(body),
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"}, timeout=30)


def test_no_secret_in_logs_thread_metrics_healthz_or_store_through_a_whole_story(
        tmp_path: Path, prometheus_bin: str, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str) -> None:
    steps = [f"mlflow_alias: {{model: {unique_model}}}"]
    with story(tmp_path, prometheus_bin, mlflow_server, mlflow_client, unique_model, steps,
               env={"ALERTMANAGER_TOKEN": AM_TOKEN}) as s:
        events = f"{s.bot.url}/slack/events"
        # Slack failures that carry the token in their error: the warning's first post and a group lookup.
        s.slack.fail_next("chat.postMessage", error=f"invalid_auth {TOKEN}")
        s.slack.fail_next("usergroups.users.list", error=f"token_revoked {TOKEN}")
        warning = s.warning()
        incident_id = int(button(warning, "rollback_approve")["value"])

        # Alertmanager: the right token (the alert goes into the open incident's thread), a wrong one (401).
        firing = webhook(alert(service=SERVICE, fingerprint="feedfacecafe0001"))
        assert _am(s.bot, AM_TOKEN, firing).status_code == 200
        assert _am(s.bot, "wrong-" + AM_TOKEN[::-1], firing).status_code == 401

        # A stranger's click: the group lookup fails with the token in its error; they are refused.
        s.click(warning["ts"], "rollback_approve", incident_id, user=STRANGER)
        refusal = s.slack.wait_for(lambda c: c.method == "chat.postEphemeral" and c.params.get("user") == STRANGER)
        assert "not an approver" in refusal.params["text"]
        for text in ("help", "status", SERVICE):
            body = slash_command_body(text=text, user_id=APPROVER, channel_id=CHANNEL)
            assert post_signed(events, SECRET, body).status_code == 200

        # An event post fails with the token in the error; the next cycle posts it.
        s.slack.fail_next("chat.postMessage", error=f"invalid_auth {TOKEN}")
        s.click(warning["ts"], "rollback_approve", incident_id)
        done = s.wait_state(incident_id, "recovered", "verify_failed", timeout=90)
        assert done.state == "recovered"
        wait_until(lambda: any("*Summary —" in t for t in s.thread(warning["ts"])), 30, "the summary")
        wait_until(lambda: not s.store.unposted_events(), 10, "every event posted")
        time.sleep(1.5)  # one more evaluation cycle into the log

        log = s.bot.log()
        assert "***" in log, "the token-bearing Slack errors were logged, redacted"
        sizes = _scan(s.bot, s.slack, tmp_path / "bot.db")
    print("\nscanned for 3 secrets, none found (characters per source):", json.dumps(sizes))


def test_a_slack_api_url_carrying_the_token_is_redacted_from_errors(
        tmp_path: Path, mlflow_server: MlflowServer, mlflow_client: MlflowClient, unique_model: str) -> None:
    good, bad = seed_registry(mlflow_client, unique_model, versions=2)
    mlflow_client.set_registered_model_alias(unique_model, "previous_champion", good)
    mlflow_client.set_registered_model_alias(unique_model, "champion", bad)
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""
evaluate_every: 1s
services:
  {SERVICE}:
    channel: {CHANNEL}
    approvers: [{APPROVER}, {GROUP}]
    model: {unique_model}
    slos:
      - {{name: latency, query: 'vector(0.1)', above: 0.25}}
    rollback:
      - mlflow_alias: {{model: {unique_model}}}
""")
    with FakeSlackAPI() as slack:
        bad_url = f"{slack.base}/{TOKEN}/api/"  # the token in the URL's path: it shows in slack_sdk's messages
        bot = BotProcess(tmp_path, policy, slack_url=bad_url, prometheus_url=f"http://127.0.0.1:{free_port()}",
                         mlflow_url=mlflow_server.url, extra_env={"ALERTMANAGER_TOKEN": AM_TOKEN})
        try:
            bot.start()
            slack.fail_next("chat.postMessage", status=429, retry_after=1)  # slack_sdk logs the URL it retries
            slack.fail_next("chat.postMessage", status=503)  # then the warning's post fails for this cycle
            body = slash_command_body(text=SERVICE, user_id=APPROVER, channel_id=CHANNEL)
            assert post_signed(f"{bot.url}/slack/events", SECRET, body).status_code == 200
            store = Store(f"sqlite:///{tmp_path / 'bot.db'}")
            incident = wait_until(lambda: store.active_incident(SERVICE), 20, "the requested incident")
            wait_until(lambda: "could not post the warning" in bot.log(), 20, "the failed post logged")
            wait_until(lambda: store.incident(incident.id).message_ts, 20, "the warning posted on a later cycle")
            assert "A retry handler found" in bot.log() and "/***/api/" in bot.log(), "the URL was logged, redacted"
            sizes = _scan(bot, slack, tmp_path / "bot.db")
        finally:
            bot.stop()
    print("\nSLACK_API_URL with the token: scanned, none found (characters per source):", json.dumps(sizes))


def test_the_log_filter_redacts_messages_tracebacks_and_stacks() -> None:
    """bot.app.RedactSecrets on a handler, as `serve` installs it: a secret in the message, its arguments, the
    exception's text in a traceback, or a stack dump comes out as ***."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactSecrets(SECRETS.values()))
    log = logging.getLogger("tests.test_secrets.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise ValueError(f"request to http://127.0.0.1/{TOKEN}/api/chat.postMessage failed ({AM_TOKEN})")
        except ValueError:
            log.exception("posting failed with secret %s", SECRET)
        log.warning("a stack with %s", TOKEN, stack_info=True)
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert "Traceback" in text and "ValueError: request to http://127.0.0.1/***/api/chat.postMessage failed (***)" in text
    assert "posting failed with secret ***" in text and "a stack with ***" in text
    assert _leaks("log output", text) == []
