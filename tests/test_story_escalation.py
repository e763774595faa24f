"""Escalation and "what changed" in the whole story: a real `rollback-bot serve`, real MLflow, a real Prometheus
scraping the simulated model service, the fake Slack Web API, signed clicks, and the HTTPS fake of PagerDuty's Events
API v2 (trusted through REQUESTS_CA_BUNDLE, as a private CA would be).

The gate promotes a bad v2, the warning says what changed (the MLflow version and the gate's promotion); nobody acts
for `escalate.after`: the approvers are mentioned again and PagerDuty is triggered once; an approver's click
acknowledges, recovery resolves. An attended warning never pages. PagerDuty answering 500 first pages once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bot.infra.store import Store
from bot.slack import postmortem
from sandbox.chat.server import app_home_opened_body
from sandbox.model_service import ModelServiceSimulator, VersionProfile, alias_reader, seed_registry
from sandbox.pagerduty_api import FakePagerDuty
from sandbox.servers import MlflowServer, PrometheusServer
from sandbox.signing import block_actions_body, post_signed
from sandbox.slack_api import FakeSlackAPI
from tests.story_env import APPROVER, CHANNEL, GROUP, SECRET, BotProcess, button, policy_yaml, wait_until

pytestmark = pytest.mark.story

FAST = VersionProfile(latency_seconds=0.05, error_rate=0.0, auc=0.86)
SLOW = VersionProfile(latency_seconds=0.45, error_rate=0.02, auc=0.71)
ROUTING_KEY = "R0UTINGKEY0000000000000000000000"


def escalating_policy(model: str, after: str) -> str:
    return policy_yaml(model=model) + f"    escalate: {{after: {after}, pagerduty: true}}\n"


def run(tmp_path: Path, prometheus_bin: str, mlflow_server: MlflowServer, mlflow_client: MlflowClient, model: str,
        pagerduty: FakePagerDuty, *, after: str, story) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = seed_registry(mlflow_client, model, versions=2)
    mlflow_client.set_registered_model_alias(model, "champion", v1)
    mlflow_client.set_registered_model_alias(model, "candidate", v2)
    policy = tmp_path / "policy.yaml"
    policy.write_text(escalating_policy(model, after))
    with FakeSlackAPI(users_by_group={GROUP: ["U0ONCALL1"]}) as slack, \
            ModelServiceSimulator(champion=alias_reader(mlflow_client, model), profiles={v1: FAST, v2: SLOW},
                                  default=FAST) as sim, \
            PrometheusServer(tmp_path / "prom", targets=[sim.target], binary=prometheus_bin) as prom:
        prom.wait_for_series('model_auc{service="model-svc"}')
        bot = BotProcess(tmp_path, policy, slack_url=slack.url, prometheus_url=prom.url, mlflow_url=mlflow_server.url,
                         extra_env={"PAGERDUTY_ROUTING_KEY": ROUTING_KEY, "PAGERDUTY_EVENTS_URL": pagerduty.url,
                                    "REQUESTS_CA_BUNDLE": pagerduty.ca_file})
        try:
            bot.start()
            slack.wait_for(lambda c: c.method == "chat.postMessage" and c.params.get("blocks")
                           and any(b.get("type") == "actions" for b in c.params["blocks"]), timeout=60)
            warning = next(m for m in slack.messages(CHANNEL)
                           if any(b.get("type") == "actions" for b in m.get("blocks") or []))
            story(bot, slack, warning, v1, v2)
        finally:
            bot.stop()
    assert ROUTING_KEY not in bot.log()


def click(bot: BotProcess, warning: dict, user: str = APPROVER) -> None:
    body = block_actions_body(user_id=user, channel_id=CHANNEL, message_ts=warning["ts"], action_id="rollback_approve",
                              value=button(warning, "rollback_approve")["value"], message=warning)
    assert post_signed(f"{bot.url}/slack/events", SECRET, body).status_code == 200


def thread(slack: FakeSlackAPI, warning: dict) -> list[str]:
    return [str(m.get("text", "")) for m in slack.thread(CHANNEL, warning["ts"])]


def mine(pagerduty: FakePagerDuty) -> list[str]:
    return [e.action or "?" for e in pagerduty.accepted(ROUTING_KEY)]


def test_an_unattended_warning_escalates_once_then_a_click_acknowledges_and_recovery_resolves(
        tmp_path: Path, prometheus_bin: str, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str, pagerduty_fake: FakePagerDuty) -> None:
    pagerduty_fake.reset()

    def story(bot: BotProcess, slack: FakeSlackAPI, warning: dict, v1: str, v2: str) -> None:
        # What changed, in the warning itself: the MLflow version that became champion and the gate's promotion.
        shown = json.dumps(warning["blocks"], ensure_ascii=False)
        assert "What changed" in shown and f"v{v2} is @champion" in shown and "promoted by rollback-bot's gate" in shown
        # The Home tab, opened now, shows the service with its open incident and the link to its thread.
        before = len(slack.calls("views.publish"))
        assert post_signed(f"{bot.url}/slack/events", SECRET, app_home_opened_body(user_id=APPROVER),
                           extra_headers={"Content-Type": "application/json"}).status_code == 200
        slack.wait_for(lambda c: c.method == "views.publish" and len(slack.calls("views.publish")) > before, 20)
        home = json.dumps(slack.home_view(APPROVER), ensure_ascii=False)
        assert "model-svc" in home and "you approve it" in home
        assert f"https://sandbox.slack.com/archives/{CHANNEL}/p{warning['ts'].replace('.', '')}" in home
        # 1. Nobody acts for 4s: the approvers are mentioned again, then PagerDuty is triggered, once.
        pagerduty_fake.wait_for(lambda events: any(e.action == "trigger" for e in events), timeout=60)
        texts = thread(slack, warning)
        assert any("No approver has acted on this warning for 4s" in t and "<@U0APPROVER>" in t for t in texts)
        trigger = next(e for e in pagerduty_fake.accepted(ROUTING_KEY) if e.action == "trigger")
        payload = trigger.body["payload"]
        assert payload["severity"] == "critical" and payload["source"] == "rollback-bot/model-svc"
        assert payload["summary"].startswith("model-svc: ") and "waits for an approver" in payload["summary"]
        assert trigger.body["links"][0]["href"].startswith(f"https://sandbox.slack.com/archives/{CHANNEL}/p")
        assert payload["custom_details"]["service"] == "model-svc"
        wait_until(lambda: any("Paged PagerDuty" in t for t in thread(slack, warning)), 20, "the paged line")
        # 2. An approver's click acknowledges; recovery resolves. Each once, in that order, one dedup key.
        click(bot, warning)
        pagerduty_fake.wait_for(lambda events: any(e.action == "resolve" for e in events), timeout=90)
        assert mine(pagerduty_fake) == ["trigger", "acknowledge", "resolve"]
        assert len({e.dedup_key for e in pagerduty_fake.accepted(ROUTING_KEY)}) == 1
        assert pagerduty_fake.alerts[trigger.dedup_key or ""].state == "resolved"
        assert any("Recovered:" in t for t in thread(slack, warning))
        # 3. The postmortem draft in the thread holds every event of the incident, each with its time.
        incident_id = int(button(warning, "rollback_approve")["value"])
        draft = wait_until(lambda: next((u for u in slack.uploads() if u.get("thread_ts") == warning["ts"]
                                         and u.get("name") == postmortem.filename(incident_id)), None), 30,
                           "the postmortem draft")
        text = draft["content"].decode()
        events = Store(bot.env["DATABASE_URL"]).events(incident_id)
        assert {"paged", "approved", "recovered", "summary"} <= {e.kind for e in events}
        for event in events:
            if event.kind == "postmortem":
                continue
            first = postmortem.from_mrkdwn(event.text).splitlines()[0][:40]
            assert first.split("`")[0] in text, f"event {event.kind} ({first!r}) missing from the draft"
            assert time.strftime("%H:%M:%S", time.gmtime(event.at)) in text

    run(tmp_path, prometheus_bin, mlflow_server, mlflow_client, unique_model, pagerduty_fake, after="4s", story=story)


def test_an_attended_warning_never_pages(
        tmp_path: Path, prometheus_bin: str, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str, pagerduty_fake: FakePagerDuty) -> None:
    pagerduty_fake.reset()

    def story(bot: BotProcess, slack: FakeSlackAPI, warning: dict, v1: str, v2: str) -> None:
        click(bot, warning)
        slack.wait_for(lambda c: c.method == "chat.postMessage" and "Summary" in c.params.get("text", ""), timeout=90)
        wait_until(lambda: mlflow_client.get_model_version_by_alias(unique_model, "champion").version == v1, 10,
                   "rolled back")
        assert mine(pagerduty_fake) == []
        assert not any("No approver has acted" in t for t in thread(slack, warning))

    run(tmp_path, prometheus_bin, mlflow_server, mlflow_client, unique_model, pagerduty_fake, after="8s", story=story)


def test_pagerduty_answering_500_first_pages_once(
        tmp_path: Path, prometheus_bin: str, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str, pagerduty_fake: FakePagerDuty) -> None:
    pagerduty_fake.reset()
    pagerduty_fake.fail_next(500)

    def story(bot: BotProcess, slack: FakeSlackAPI, warning: dict, v1: str, v2: str) -> None:
        pagerduty_fake.wait_for(lambda events: any(e.action == "trigger" and e.status == 202 for e in events),
                                timeout=60)
        statuses = [e.status for e in pagerduty_fake.events if e.action == "trigger"]
        assert statuses == [500, 202]
        key = next(e.dedup_key for e in pagerduty_fake.accepted(ROUTING_KEY))
        assert pagerduty_fake.alerts[key or ""].triggers == 1 and pagerduty_fake.alerts[key or ""].state == "triggered"
        wait_until(lambda: any("Paged PagerDuty" in t for t in thread(slack, warning)), 20, "the paged line")
        assert not any("did not take" in t for t in thread(slack, warning))

    run(tmp_path, prometheus_bin, mlflow_server, mlflow_client, unique_model, pagerduty_fake, after="3s", story=story)
