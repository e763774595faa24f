"""The on-call command set over signed HTTP requests: help, status, history, freeze / unfreeze (--unblock),
policy, --dry-run and --to. Real app, real MLflow, the fake Slack Web API."""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sandbox.servers import MlflowServer
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
    STRANGER,
    HandlerEnv,
    seed_models,
    wait_until,
)


@pytest.fixture
def env(tmp_path: Path, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str) -> Iterator[HandlerEnv]:
    with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as slack:
        bench = HandlerEnv(tmp_path, slack, mlflow_client, seed_models(mlflow_client, unique_model),
                           mlflow_url=mlflow_server.url).start()
        try:
            yield bench
        finally:
            bench.stop()


def answer(env: HandlerEnv, text: str, user: str = APPROVER, contains: str = "") -> str:
    """The ephemeral answer to `/rollback <text>` (sent after the ack), never an earlier one, as Slack shows it."""
    before = len(env.slack.calls("chat.postEphemeral"))
    env.command(text, user=user, channel=OTHER_CHANNEL)
    call = wait_until(lambda: next((c for c in env.slack.calls("chat.postEphemeral")[before:]
                                    if c.params.get("user") == user and contains in c.params.get("text", "")), None),
                      f"the answer to /rollback {text}")
    return html.unescape(str(call.params["text"]))


def test_help_lists_every_command_with_examples(env: HandlerEnv) -> None:
    text = env.answer("help")
    for usage in ("`/rollback <service> --dry-run`", "`/rollback <service> --to <version|revision>`",
                  "`/rollback status [service]`", "`/rollback history <service>`", "`/rollback freeze <service>",
                  "`/rollback unfreeze <service> [--unblock <version>]`", "`/rollback policy <service>`",
                  "e.g. `/rollback model-svc --to 3`"):
        assert usage in text, usage


def test_status_shows_incidents_freezes_and_champion_per_service(env: HandlerEnv) -> None:
    text = answer(env, "status", contains="Rollback status")
    assert f"*{MODEL_SVC}* — @champion v{BAD_VERSION}, baseline @previous_champion v{GOOD_VERSION}" in text
    assert "no open incident" in text and "*ranker-svc*" in text

    incident, _ = env.open_warning()
    answer(env, "freeze ranker-svc model retraining", contains="Froze")
    text = answer(env, "status", contains="Rollback status")
    assert f"incident #{incident.id}: :hourglass: Requested by <@{APPROVER}>" in text
    assert ":ice_cube: frozen since" in text and "model retraining" in text
    only = answer(env, f"status {MODEL_SVC}", contains="Rollback status")
    assert "ranker-svc" not in only


def test_history_lists_trigger_approver_recovery_time_and_outcome(env: HandlerEnv) -> None:
    assert "has had no incidents" in answer(env, f"history {MODEL_SVC}", contains="no incidents")
    incident, warning = env.open_warning()
    env.click(warning, "rollback_dismiss", user=APPROVER)
    wait_until(lambda: env.store.incident(incident.id).state == "dismissed", "the dismissal")
    second, warning = env.open_warning()
    env.click(warning, "rollback_approve", user=GROUP_MEMBER)
    wait_until(lambda: env.champion() == GOOD_VERSION, "the rollback")
    text = answer(env, f"history {MODEL_SVC}", contains="Last 2 incidents")
    lines = text.splitlines()[1:]
    assert lines[0].startswith(f"#{second.id} ") and f"approved by <@{GROUP_MEMBER}>" in lines[0]
    assert "manual" in lines[0] and "time to recover" in lines[0]
    assert lines[1].startswith(f"#{incident.id} ") and ":no_entry_sign: dismissed" in lines[1]


def test_freeze_and_unfreeze_are_for_approvers_and_unblock_only_when_asked(env: HandlerEnv) -> None:
    assert "Not done" in answer(env, f"freeze {MODEL_SVC}", user=STRANGER, contains="Not done")
    assert env.store.frozen(MODEL_SVC) is None
    assert any(a["action"] == "freeze" and a["result"] == "refused" for a in env.store.audits())

    answer(env, f"freeze {MODEL_SVC} bad data upstream", user=GROUP_MEMBER, contains="Froze")
    frozen = env.store.frozen(MODEL_SVC)
    assert frozen is not None and frozen.reason == "bad data upstream" and frozen.actor == GROUP_MEMBER
    assert any("froze auto-promotion for *model-svc*" in c.params["text"] for c in env.channel_posts())

    model = env.models[MODEL_SVC]
    env.mlflow.set_model_version_tag(model, BAD_VERSION, "rollback_blocked", "true")
    assert "Unfroze" in answer(env, f"unfreeze {MODEL_SVC}", contains="Unfroze")
    assert env.store.frozen(MODEL_SVC) is None
    tags = env.mlflow.get_model_version(model, BAD_VERSION).tags
    assert tags.get("rollback_blocked") == "true", "a plain unfreeze leaves the version blocked"

    text = answer(env, f"unfreeze {MODEL_SVC} --unblock {BAD_VERSION}", contains="rollback_blocked")
    assert f"version {BAD_VERSION} is no longer rollback_blocked" in text
    assert "rollback_blocked" not in env.mlflow.get_model_version(model, BAD_VERSION).tags
    assert "could not unblock" in answer(env, f"unfreeze {MODEL_SVC} --unblock 99", contains="could not")


def test_policy_in_three_lines(env: HandlerEnv) -> None:
    text = answer(env, f"policy {MODEL_SVC}", contains="policy")
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0] == f"*{MODEL_SVC}* policy"
    assert lines[1].startswith("• *Trigger*: any breach of auc > 0.8")
    assert lines[2].startswith("• *Action*: mlflow_alias — confirmed by one approver (dialog)")
    assert lines[3].startswith("• *Verification*: every SLO within target for 1m")


def test_dry_run_posts_the_plan_in_the_service_channel_and_changes_nothing(env: HandlerEnv) -> None:
    assert "nothing was changed" in answer(env, f"{MODEL_SVC} --dry-run", contains="Plan for")
    [post] = [c for c in env.channel_posts() if "Dry run of" in c.params["text"]]
    assert post.params["channel"] == MODEL_CHANNEL
    assert f"@champion version: {BAD_VERSION} → {GOOD_VERSION}" in post.params["text"]
    time.sleep(0.3)
    assert env.store.recent_incidents() == [] and env.champion() == BAD_VERSION


def test_to_rolls_back_to_a_named_version_and_refuses_one_that_does_not_exist(env: HandlerEnv) -> None:
    model = env.models[MODEL_SVC]
    v1 = env.mlflow.get_model_version(model, GOOD_VERSION)
    v3 = str(env.mlflow.create_model_version(model, v1.source, run_id=v1.run_id).version)
    env.mlflow.set_registered_model_alias(model, "champion", v3)
    refused = answer(env, f"{MODEL_SVC} --to 42", contains="Cannot roll")
    assert "`42`" in refused and env.store.recent_incidents() == []

    env.command(f"{MODEL_SVC} --to {BAD_VERSION}", channel=MODEL_CHANNEL)
    incident = wait_until(lambda: (i := env.store.active_incident(MODEL_SVC)) and i.message_ts and i, "the warning")
    assert incident.baseline["version"] == BAD_VERSION, "pinned to --to, not to previous_champion"
    warning = env.slack.message(MODEL_CHANNEL, incident.message_ts)
    env.click(warning, "rollback_approve", user=APPROVER)
    wait_until(lambda: env.champion() == BAD_VERSION, "the rollback to the named version")
