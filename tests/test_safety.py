"""Safe under pressure, at the Slack surface: Slack's retries and replayed signed requests run nothing twice,
the two-person rule, and the automatic rollback with its Stop button. Real HTTP against the real app
(tests/handler_env.py), real MLflow, the fake Slack Web API."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from sandbox.servers import MlflowServer
from sandbox.signing import block_actions_body, signed_headers
from sandbox.slack_api import FakeSlackAPI
from tests.handler_env import (
    APPROVER,
    BAD_VERSION,
    GOOD_VERSION,
    GROUP,
    GROUP_MEMBER,
    MODEL_CHANNEL,
    SECRET,
    STRANGER,
    HandlerEnv,
    button,
    seed_models,
    wait_until,
)

SETTLE = 0.5


@pytest.fixture
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as api:
        yield api


def _env(tmp_path: Path, slack: FakeSlackAPI, mlflow_server: MlflowServer, client: MlflowClient, model: str,
         extra: dict[str, str] | None = None) -> HandlerEnv:
    return HandlerEnv(tmp_path, slack, client, seed_models(client, model), mlflow_url=mlflow_server.url,
                      extra=extra).start()


@pytest.fixture
def env(tmp_path: Path, slack: FakeSlackAPI, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str) -> Iterator[HandlerEnv]:
    bench = _env(tmp_path, slack, mlflow_server, mlflow_client, unique_model)
    try:
        yield bench
    finally:
        bench.stop()


def _approve_body(env: HandlerEnv, warning: dict, user: str) -> str:
    return block_actions_body(user_id=user, channel_id=MODEL_CHANNEL, message_ts=warning["ts"],
                              action_id="rollback_approve", value=button(warning, "rollback_approve")["value"],
                              message=warning, response_url=env.slack.response_url)


def _concurrently(count: int, send: object) -> list[requests.Response]:
    start = threading.Barrier(count)
    out: list[requests.Response] = []

    def run(i: int) -> None:
        start.wait()
        out.append(send(i))  # type: ignore[operator]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def test_slack_retries_of_one_click_run_the_rollback_once(env: HandlerEnv) -> None:
    incident, warning = env.open_warning()
    body = _approve_body(env, warning, GROUP_MEMBER)

    def send(i: int) -> requests.Response:
        # Slack re-sends the same payload, re-signed, with X-Slack-Retry-Num 1..3 when an ack is slow.
        headers = {**signed_headers(SECRET, body), "Content-Type": "application/x-www-form-urlencoded"}
        if i:
            headers |= {"X-Slack-Retry-Num": str(i % 3 + 1), "X-Slack-Retry-Reason": "http_timeout"}
        return requests.post(env.events_url, data=body.encode(), headers=headers, timeout=10)

    responses = _concurrently(10, send)
    assert [r.status_code for r in responses] == [200] * 10
    # Every retry is told not to retry again, and so is the first send when a retry was stored before it (the
    # inbox keeps whichever came first and answers the rest as repeats).
    assert sum(r.headers.get("X-Slack-No-Retry") == "1" for r in responses) in (9, 10), "answered as repeats"
    wait_until(lambda: env.audits(incident.id, "execute:mlflow_alias"), "the rollback to run")
    time.sleep(SETTLE)
    assert env.champion() == GOOD_VERSION
    assert len(env.audits(incident.id, "execute:mlflow_alias")) == 1
    assert len(env.audits(incident.id, "approve")) == 1, "the repeats never reached the domain"
    assert sum("Approved by" in t for t in env.thread_texts(incident)) == 1


def test_a_replayed_signed_request_changes_nothing(env: HandlerEnv) -> None:
    incident, warning = env.open_warning()
    body = block_actions_body(user_id=APPROVER, channel_id=MODEL_CHANNEL, message_ts=warning["ts"],
                              action_id="rollback_dry_run", value=str(incident.id), message=warning)
    headers = {**signed_headers(SECRET, body), "Content-Type": "application/x-www-form-urlencoded"}
    first = requests.post(env.events_url, data=body.encode(), headers=headers, timeout=10)
    wait_until(lambda: any("Dry run requested" in t for t in env.thread_texts(incident)), "the dry run")
    # The captured request, byte for byte with its valid signature, sent again three times.
    replays = _concurrently(3, lambda _: requests.post(env.events_url, data=body.encode(), headers=headers,
                                                        timeout=10))
    time.sleep(SETTLE)
    assert first.status_code == 200 and [r.status_code for r in replays] == [200] * 3
    assert sum("Dry run requested" in t for t in env.thread_texts(incident)) == 1
    assert len(env.audits(incident.id, "dry_run")) == 1

    command = env.command("model-svc --dry-run")  # a slash command replayed: one plan posted, not two
    replay = requests.post(env.events_url, data=env.last_body.encode(),
                           headers={**signed_headers(SECRET, env.last_body),
                                    "Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
    time.sleep(SETTLE)
    assert command.status_code == replay.status_code == 200
    assert sum("Dry run of `/rollback model-svc`" in c.params.get("text", "")
               for c in env.channel_posts()) == 1


@pytest.fixture
def two_person(tmp_path: Path, slack: FakeSlackAPI, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
               unique_model: str) -> Iterator[HandlerEnv]:
    bench = _env(tmp_path, slack, mlflow_server, mlflow_client, unique_model, {"model-svc": "two_person: true"})
    try:
        yield bench
    finally:
        bench.stop()


def test_two_person_rule_the_requester_cannot_approve(two_person: HandlerEnv) -> None:
    env = two_person
    incident, warning = env.open_warning(user=APPROVER)  # /rollback by APPROVER makes them the requester
    env.click(warning, "rollback_approve", user=APPROVER)
    told = env.ephemeral_to(APPROVER, "two-person rule")
    assert "another approver" in told.params["text"]
    assert env.champion() == BAD_VERSION
    refusals = [a for a in env.audits(incident.id, "approve") if a["result"] == "refused"]
    assert refusals and refusals[0]["detail"]["reason"] == "two_person"

    env.click(warning, "rollback_approve", user=STRANGER)  # not an approver at all: refused as before
    env.ephemeral_to(STRANGER, "Not rolled back")
    env.click(warning, "rollback_approve", user=GROUP_MEMBER)
    wait_until(lambda: env.champion() == GOOD_VERSION, "the second person's approval to roll back")
    assert env.store.incident(incident.id).approved_by == GROUP_MEMBER


def test_two_person_rule_on_a_detected_breach_first_click_requests_second_approves(two_person: HandlerEnv) -> None:
    env = two_person
    svc = env.runtime.bot.incidents.service("model-svc")
    assert svc is not None
    opened = env.runtime.bot.incidents.open_incident(svc, None)  # as a detected breach would: nobody requested it yet
    warning = env.slack.message(MODEL_CHANNEL, opened.message_ts or "")
    env.click(warning, "rollback_approve", user=GROUP_MEMBER)
    wait_until(lambda: env.store.incident(opened.id).first_approver == GROUP_MEMBER, "the first approval")
    assert env.store.incident(opened.id).state == "open" and env.champion() == BAD_VERSION
    env.click(warning, "rollback_approve", user=GROUP_MEMBER)
    env.ephemeral_to(GROUP_MEMBER, "two-person rule")
    env.click(warning, "rollback_approve", user=APPROVER)
    wait_until(lambda: env.champion() == GOOD_VERSION, "the rollback")
    texts = env.thread_texts(opened)
    assert any("Approved by <@U0ONCALL1> — waiting for a second approver" in t for t in texts)


@pytest.fixture
def automatic(tmp_path: Path, slack: FakeSlackAPI, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
              unique_model: str) -> Iterator[HandlerEnv]:
    extra = {"model-svc": "auto_rollback: true\nauto_rollback_grace: 2s",
             "ranker-svc": "auto_rollback: true\nauto_rollback_grace: 2s"}
    bench = _env(tmp_path, slack, mlflow_server, mlflow_client, unique_model, extra)
    try:
        yield bench
    finally:
        bench.stop()


def test_automatic_rollback_runs_after_the_grace_period_unless_stopped(automatic: HandlerEnv) -> None:
    env = automatic
    bot = env.runtime.bot
    model_svc, ranker_svc = bot.incidents.service("model-svc"), bot.incidents.service("ranker-svc")
    assert model_svc is not None and ranker_svc is not None
    auto = bot.incidents.open_incident(model_svc, None)
    stopped = bot.incidents.open_incident(ranker_svc, None)
    warning = env.slack.message(MODEL_CHANNEL, auto.message_ts or "")
    assert "automatically" in str(warning["blocks"]) and button(warning, "rollback_stop")
    ranker_warning = env.slack.message(stopped.channel or "", stopped.message_ts or "")
    env.click(ranker_warning, "rollback_stop", user=STRANGER, channel=stopped.channel or "")
    env.ephemeral_to(STRANGER, "Not done")
    env.click(ranker_warning, "rollback_stop", user=APPROVER, channel=stopped.channel or "")
    wait_until(lambda: env.store.incident(stopped.id).auto_at is None, "the Stop")

    wait_until(lambda: env.store.incident(auto.id).state == "verifying", "the automatic rollback", timeout=15)
    done = env.store.incident(auto.id)
    assert done.approved_by == "rollback-bot" and env.champion() == GOOD_VERSION
    texts = env.thread_texts(done)
    assert any("Automatic rollback at" in t for t in texts)
    assert any("rolling back automatically" in t for t in texts)

    time.sleep(2.5)  # past the ranker's grace period too
    assert env.store.incident(stopped.id).state == "open", "a stopped automatic rollback waits for a human"
    assert env.champion("ranker-svc") == BAD_VERSION
    assert any("Automatic rollback stopped by <@U0APPROVER>" in t for t in env.thread_texts(stopped))
