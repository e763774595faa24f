"""Level-2 tests for handlers/: correctly signed Slack requests over real HTTP through the real app
(`bot.app.build` + `Runtime.wsgi()` served by waitress), against the fake Slack Web API and a real MLflow
server behind the MLflow executor.

Each test gets its own runtime, SQLite file, fake Slack API and freshly seeded MLflow models, and asserts
real effects: the Slack calls the bot made, the aliases in MLflow, the rows in the store. The bench itself
lives in tests/handler_env.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from sandbox.servers import MlflowServer
from sandbox.signing import signed_headers, slash_command_body
from sandbox.slack_api import FakeSlackAPI
from tests.handler_env import (
    APPROVER,
    BAD_VERSION,
    GOOD_VERSION,
    GROUP,
    GROUP_MEMBER,
    MODEL_CHANNEL,
    MODEL_SVC,
    OTHER_CHANNEL,
    RANKER_CHANNEL,
    RANKER_SVC,
    SECRET,
    STRANGER,
    TOKEN,
    HandlerEnv,
    button,
    has_buttons,
    seed_models,
    wait_until,
)

SETTLE = 0.5  # seconds to let background listeners finish before asserting that nothing happened


# -- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as api:
        yield api


@pytest.fixture
def env(tmp_path: Path, slack: FakeSlackAPI, mlflow_server: MlflowServer,
        mlflow_client: MlflowClient, unique_model: str) -> Iterator[HandlerEnv]:
    """A runtime of its own per test: fresh SQLite file, fake Slack API and MLflow models."""
    models = seed_models(mlflow_client, unique_model)
    bench = HandlerEnv(tmp_path, slack, mlflow_client, models, mlflow_url=mlflow_server.url)
    bench.start()
    try:
        yield bench
    finally:
        bench.stop()


# -- helpers -----------------------------------------------------------------------------------------------
def assert_nothing_opened(env: HandlerEnv) -> None:
    time.sleep(SETTLE)
    assert env.store.recent_incidents() == []
    assert env.channel_posts() == []
    assert env.champion(MODEL_SVC) == BAD_VERSION


# -- /rollback ---------------------------------------------------------------------------------------------
def test_unknown_service_is_answered_with_the_known_services(env: HandlerEnv) -> None:
    text = env.answer("payments-svc")
    assert "Unknown service `payments-svc`" in text
    assert f"`{MODEL_SVC}`" in text and f"`{RANKER_SVC}`" in text
    assert_nothing_opened(env)


BAD_INPUT = {
    "extra words": ("model-svc now please", "did not expect `now`"),
    "flag without value": ("model-svc --to", "`--to` needs a version"),
    "unknown flag": ("model-svc --force", "did not expect `--force`"),
    "subcommand without service": ("history", "needs a service"),
    "status with two services": ("status a b", "at most one service"),
    "5,000 characters": ("m" * 5000, "is not a service name"),
    "accented": ("modèl-svc", "is not a service name"),
    "CJK": ("模型", "is not a service name"),
    "shell chain": ("model-svc; rm -rf /", "is not a service name"),
    "shell in a flag": ("model-svc --to $(id)", "is not a version"),
    "subshell": ("$(id)", "is not a service name"),
    "backticks": ("`id`", "is not a service name"),
    "pipe": ("model-svc|cat", "is not a service name"),
}


def test_bad_input_is_refused_in_the_ack(env: HandlerEnv) -> None:
    for case, (text, expected) in BAD_INPUT.items():
        answer = env.answer(text, channel=OTHER_CHANNEL)
        assert expected in answer, case
        assert "Known services:" in answer and "/rollback help" in answer, case
        assert len(answer) < 400, f"{case}: a long argument is clipped, not echoed back whole"
        assert answer.count("`") % 2 == 0, f"{case}: the user's backticks cannot break out of the code span"
    assert env.slack.calls("chat.postEphemeral") == []
    assert_nothing_opened(env)


def test_help_lists_commands_and_services(env: HandlerEnv) -> None:
    for text in ("help", "", "   ", "HELP"):
        answer = env.answer(text)
        assert "`/rollback <service>`" in answer and "`/rollback help`" in answer, repr(text)
        assert f"Known services: `{MODEL_SVC}`, `{RANKER_SVC}`" in answer, repr(text)
    assert_nothing_opened(env)


def test_rollback_from_another_channel_posts_the_warning_in_the_service_channel(env: HandlerEnv) -> None:
    answer = env.answer(MODEL_SVC, user=STRANGER, channel=OTHER_CHANNEL)
    assert MODEL_SVC in answer

    told = env.ephemeral_to(STRANGER, f"<#{MODEL_CHANNEL}>")
    assert told.params["channel"] == OTHER_CHANNEL
    incident = env.store.active_incident(MODEL_SVC)
    assert incident is not None and incident.state == "open" and incident.requested_by == STRANGER
    assert f"#{incident.id}" in told.params["text"]

    [warning] = env.slack.messages(MODEL_CHANNEL)
    assert warning["ts"] == incident.message_ts
    assert env.slack.messages(OTHER_CHANNEL) == []
    roll = button(warning, "rollback_approve")
    assert roll["text"]["text"] == "Roll back" and roll["style"] == "danger"
    assert roll["confirm"]["confirm"]["text"] == "Roll back" and roll["value"] == str(incident.id)
    assert button(warning, "rollback_dry_run")["text"]["text"] == "Dry run"
    assert button(warning, "rollback_dismiss")["text"]["text"] == "Dismiss"
    assert f"version {GOOD_VERSION}" in json.dumps(warning["blocks"])

    # A second request while the incident is open answers where it is and posts nothing new.
    env.command(MODEL_SVC, user=APPROVER, channel=OTHER_CHANNEL)
    again = env.ephemeral_to(APPROVER, "already has incident")
    assert f"#{incident.id}" in again.params["text"] and f"<#{MODEL_CHANNEL}>" in again.params["text"]
    assert len(env.slack.messages(MODEL_CHANNEL)) == 1
    assert len(env.store.recent_incidents()) == 1


# -- buttons -----------------------------------------------------------------------------------------------
def test_non_approver_is_refused_and_nothing_changes(env: HandlerEnv) -> None:
    incident, warning = env.open_warning()

    env.click(warning, "rollback_approve", user=STRANGER)

    refusal = env.ephemeral_to(STRANGER)
    assert "not an approver" in refusal.params["text"] and refusal.params["channel"] == MODEL_CHANNEL
    time.sleep(SETTLE)
    assert env.champion() == BAD_VERSION
    assert env.store.incident(incident.id).state == "open"
    [refused] = env.audits(incident.id, "approve")
    assert (refused["actor"], refused["result"]) == (STRANGER, "refused")
    assert env.audits(incident.id, "execute:mlflow_alias") == []


def test_group_member_approves_and_the_champion_flips_back(env: HandlerEnv) -> None:
    incident, warning = env.open_warning()

    env.click(warning, "rollback_approve", user=GROUP_MEMBER)

    wait_until(lambda: env.champion() == GOOD_VERSION, "champion back on v1")
    texts = wait_until(lambda: (t := env.thread_texts(incident)) and any("Done step 1/1" in x for x in t) and t,
                       "the step in the thread")
    assert any("Approved by" in t and GROUP_MEMBER in t for t in texts)
    [approved] = env.audits(incident.id, "approve")
    assert (approved["actor"], approved["result"]) == (GROUP_MEMBER, "ok")
    [executed] = env.audits(incident.id, "execute:mlflow_alias")
    assert executed["result"] == "ok"
    assert env.store.incident(incident.id).approved_by == GROUP_MEMBER


def test_dry_run_posts_the_plan_and_changes_nothing(env: HandlerEnv) -> None:
    incident, warning = env.open_warning()

    env.click(warning, "rollback_dry_run", user=STRANGER)

    texts = wait_until(lambda: [t for t in env.thread_texts(incident) if "Dry run" in t], "the dry run reply")
    plan = texts[0]
    assert "nothing was changed" in plan
    assert f"models:/{env.models[MODEL_SVC]}@champion version: {BAD_VERSION} → {GOOD_VERSION}" in plan
    assert "set_registered_model_alias" in plan
    assert env.champion() == BAD_VERSION
    assert env.store.incident(incident.id).state == "open"
    assert [a["result"] for a in env.audits(incident.id, "dry_run")] == ["ok"]
    assert env.audits(incident.id, "execute:mlflow_alias") == []


def test_dismiss_removes_the_buttons_and_a_later_approval_does_nothing(env: HandlerEnv,
                                                                        slack: FakeSlackAPI) -> None:
    incident, warning = env.open_warning()

    env.click(warning, "rollback_dismiss", user=APPROVER)

    update = slack.wait_for(lambda c: c.method == "chat.update" and c.params.get("ts") == warning["ts"])
    assert "Dismissed" in json.dumps(update.params["blocks"])
    assert not has_buttons(update.params)
    assert not has_buttons(slack.message(MODEL_CHANNEL, warning["ts"]))
    assert env.store.incident(incident.id).state == "dismissed"

    # A stale client still shows the old buttons: clicking Roll back now changes nothing.
    env.click(warning, "rollback_approve", user=APPROVER)
    env.ephemeral_to(APPROVER, "already past approval")
    time.sleep(SETTLE)
    assert env.champion() == BAD_VERSION
    assert env.store.incident(incident.id).state == "dismissed"
    assert [a["result"] for a in env.audits(incident.id, "approve")] == ["ignored"]
    assert env.audits(incident.id, "execute:mlflow_alias") == []


def test_typed_confirm_opens_a_modal_and_only_the_exact_name_rolls_back(env: HandlerEnv,
                                                                        slack: FakeSlackAPI) -> None:
    incident, warning = env.open_warning(RANKER_SVC)
    assert "confirm" not in button(warning, "rollback_approve"), "typed confirm replaces the dialog"

    env.click(warning, "rollback_approve", user=APPROVER, channel=RANKER_CHANNEL)

    opened = slack.wait_for(lambda c: c.method == "views.open")
    assert opened.params["view"]["callback_id"] == "rollback_confirm"
    assert opened.params["view"]["private_metadata"] == str(incident.id)
    [view] = slack.views()
    time.sleep(SETTLE)
    assert env.champion(RANKER_SVC) == BAD_VERSION
    assert env.store.incident(incident.id).state == "open"
    assert env.audits(incident.id, "approve") == []

    for wrong in ("model-svc", "ranker", "RANKER-SVC", ""):
        answer = env.submit_confirm(view, wrong, user=APPROVER).json()
        assert answer["response_action"] == "errors"
        assert RANKER_SVC in next(iter(answer["errors"].values()))
    time.sleep(SETTLE)
    assert env.champion(RANKER_SVC) == BAD_VERSION
    assert env.store.incident(incident.id).state == "open"

    response = env.submit_confirm(view, RANKER_SVC, user=APPROVER)
    assert "response_action" not in response.text, "a plain ack closes the modal"
    wait_until(lambda: env.champion(RANKER_SVC) == GOOD_VERSION, "ranker champion back on v1")
    assert env.champion(MODEL_SVC) == BAD_VERSION, "the other service is untouched"
    assert [a["result"] for a in env.audits(incident.id, "approve")] == ["ok"]


# -- request verification ----------------------------------------------------------------------------------
def test_bad_signature_and_stale_timestamp_are_rejected(env: HandlerEnv, slack: FakeSlackAPI) -> None:
    body = slash_command_body(text=MODEL_SVC, user_id=APPROVER, channel_id=MODEL_CHANNEL)
    calls_before = len(slack.calls())  # Bolt's auth.test at build time

    forged = signed_headers("not-the-signing-secret", body)
    assert requests.post(env.events_url, data=body, headers=forged, timeout=10).status_code == 401

    tampered = signed_headers(SECRET, body)
    other = body.replace(MODEL_SVC, RANKER_SVC)
    assert requests.post(env.events_url, data=other, headers=tampered, timeout=10).status_code == 401

    stale = signed_headers(SECRET, body, timestamp=int(time.time()) - 6 * 60)
    assert requests.post(env.events_url, data=body, headers=stale, timeout=10).status_code == 401

    unsigned = {"Content-Type": "application/x-www-form-urlencoded"}
    assert requests.post(env.events_url, data=body, headers=unsigned, timeout=10).status_code == 401

    time.sleep(SETTLE)
    assert slack.calls()[calls_before:] == []
    assert env.store.recent_incidents() == []


# -- health and metrics ------------------------------------------------------------------------------------
def test_healthz_waits_for_ready_and_metrics_hide_secrets(env: HandlerEnv) -> None:
    assert requests.get(f"{env.url}/healthz", timeout=5).status_code == 503, "serving, but not ready yet"
    env.runtime.ready.set()
    assert requests.get(f"{env.url}/healthz", timeout=5).status_code == 200

    env.open_warning()  # makes Slack calls, so the counter has samples
    response = requests.get(f"{env.url}/metrics", timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    assert 'rollback_slack_calls_total{method="chat.postMessage"}' in response.text
    assert TOKEN not in response.text and SECRET not in response.text
    only = requests.get(f"{env.url}/metrics", params={"name[]": ["rollback_slack_calls_total",
                                                                 "rollback_evaluation_last_seconds"]}, timeout=5)
    names = {line.split("{")[0].split(" ")[0] for line in only.text.splitlines() if not line.startswith("#")}
    assert names == {"rollback_slack_calls_total", "rollback_evaluation_last_seconds"}, only.text


# -- concurrency -------------------------------------------------------------------------------------------
def test_concurrent_clicks_roll_back_exactly_once(env: HandlerEnv) -> None:
    incident, warning = env.open_warning()
    clickers = 10
    start = threading.Barrier(clickers)
    statuses: list[int] = []

    def click() -> None:
        start.wait()
        statuses.append(env.click(warning, "rollback_approve", user=GROUP_MEMBER).status_code)

    threads = [threading.Thread(target=click) for _ in range(clickers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert statuses == [200] * clickers

    wait_until(lambda: env.audits(incident.id, "execute:mlflow_alias"), "the rollback to run")
    wait_until(lambda: len(env.audits(incident.id, "approve")) == clickers, "every click to be decided")
    time.sleep(SETTLE)
    assert env.champion() == GOOD_VERSION
    assert len(env.audits(incident.id, "execute:mlflow_alias")) == 1
    results = sorted(a["result"] for a in env.audits(incident.id, "approve"))
    assert results == ["ignored"] * (clickers - 1) + ["ok"]
    assert sum("Approved by" in t for t in env.thread_texts(incident)) == 1
