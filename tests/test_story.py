"""The whole walking skeleton against real servers: a real `mlflow server`, a real Prometheus scraping the
simulated model service, a real `rollback-bot serve` process, and the fake Slack Web API, driven with
correctly signed Slack requests.

promotion of the candidate -> the drill after it -> breach -> warning -> click -> alias flipped -> recovered
-> rollback_blocked -> no re-promotion. The measured times are printed (run with -s) and written to story-times.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from sandbox.model_service import ModelServiceSimulator, VersionProfile, alias_reader, seed_registry
from sandbox.servers import MlflowServer, PrometheusServer
from sandbox.signing import block_actions_body, post_signed
from sandbox.slack_api import FakeSlackAPI
from tests.story_env import (
    CHANNEL,
    GROUP,
    GROUP_MEMBER,
    SECRET,
    STRANGER,
    TOKEN,
    BotProcess,
    button,
    policy_yaml,
    wait_until,
)

pytestmark = pytest.mark.story

FAST = VersionProfile(latency_seconds=0.05, error_rate=0.0, auc=0.86)
SLOW = VersionProfile(latency_seconds=0.45, error_rate=0.02, auc=0.71)


def test_breach_warn_approve_rollback_verify_freeze(tmp_path: Path, prometheus_bin: str, mlflow_server: MlflowServer,
                                                     mlflow_client: MlflowClient, unique_model: str) -> None:
    v1, v2 = seed_registry(mlflow_client, unique_model, versions=2)
    mlflow_client.set_registered_model_alias(unique_model, "champion", v1)
    mlflow_client.set_registered_model_alias(unique_model, "candidate", v2)
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml(model=unique_model))

    with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as slack, \
            ModelServiceSimulator(champion=alias_reader(mlflow_client, unique_model), profiles={v1: FAST, v2: SLOW},
                                  default=FAST) as sim, \
            PrometheusServer(tmp_path / "prom", targets=[sim.target], binary=prometheus_bin) as prom:
        prom.wait_for_series('model_auc{service="model-svc"}')
        bot = BotProcess(tmp_path, policy, slack_url=slack.url, prometheus_url=prom.url, mlflow_url=mlflow_server.url)
        try:
            bot.start()
            events_url = f"{bot.url}/slack/events"

            # 1. The gate promotes the healthy candidate, and the channel is told.
            promoted = slack.wait_for(lambda c: c.method == "chat.postMessage" and "promoted" in c.params.get("text", ""),
                                      timeout=40)
            assert mlflow_client.get_model_version_by_alias(unique_model, "champion").version == v2
            assert mlflow_client.get_model_version_by_alias(unique_model, "previous_champion").version == v1
            breach_start = wait_until(lambda: next((t for t, v in sim.switches if v == v2), None), 10, "v2 served")
            # 1b. Right after it, a drill dry-runs the way back against v2 (nothing moves).
            drill = slack.wait_for(lambda c: c.method == "chat.postMessage"
                                   and f"Drill after v{v2}'s promotion" in c.params.get("text", ""), timeout=30)
            assert f"Drill after v{v2}'s promotion: rollback ready, 1 step planned in " in drill.params["text"]
            assert drill.params["text"].endswith(f"champion v{v2} → v{v1}")

            # 2. The breach holds for `for` and the warning is posted with the baseline and three buttons.
            warning_call = slack.wait_for(lambda c: c.method == "chat.postMessage" and c.params.get("blocks")
                                          and any(b.get("type") == "actions" for b in c.params["blocks"]), timeout=40)
            warned_at = warning_call.at
            warning = slack.messages(CHANNEL)[-1]
            flat = json.dumps(warning["blocks"])
            assert "model-svc" in flat and ("p95-latency" in flat or "auc" in flat)
            assert f"version {v1}" in flat and mlflow_client.get_model_version(unique_model, v1).run_id in flat
            roll = button(warning, "rollback_approve")
            assert roll["text"]["text"] == "Roll back" and roll["style"] == "danger" and "confirm" in roll
            assert button(warning, "rollback_dry_run")["text"]["text"] == "Dry run"
            assert button(warning, "rollback_dismiss")["text"]["text"] == "Dismiss"
            incident_id = roll["value"]

            def click(user: str, action: str = "rollback_approve") -> float:
                body = block_actions_body(user_id=user, channel_id=CHANNEL, message_ts=warning["ts"],
                                          action_id=action, value=incident_id, message=warning)
                sent = time.time()
                response = post_signed(events_url, SECRET, body)
                assert response.status_code == 200, response.text
                return sent

            # 3. A stranger is refused, ephemerally, and nothing changes.
            click(STRANGER)
            refusal = slack.wait_for(lambda c: c.method == "chat.postEphemeral" and c.params.get("user") == STRANGER)
            assert "not an approver" in refusal.params["text"]
            assert mlflow_client.get_model_version_by_alias(unique_model, "champion").version == v2

            # 4. A member of the approvers' user group approves (the dialog confirm happened in Slack's client).
            clicked_at = click(GROUP_MEMBER)
            wait_until(lambda: mlflow_client.get_model_version_by_alias(unique_model, "champion").version == v1,
                       15, "champion flipped back", interval=0.05)
            flipped_at = time.time()

            # 5. Verification streams into the thread and ends in "Recovered".
            recovered = slack.wait_for(lambda c: c.method == "chat.postMessage" and c.params.get("thread_ts")
                                       == warning["ts"] and "Recovered:" in c.params.get("text", ""), timeout=60)
            thread_texts = [m.get("text", "") for m in slack.thread(CHANNEL, warning["ts"])]
            assert any("Approved by" in t and GROUP_MEMBER in t for t in thread_texts)
            assert any("Done step 1/1 `mlflow_alias`" in t for t in thread_texts)
            summary = slack.wait_for(lambda c: "Summary" in c.params.get("text", "") and c.method == "chat.postMessage")
            for part in ("time to detect", "to approve", "to execute", "to recover"):
                assert part in summary.params["text"]
            checklist = slack.wait_for(lambda c: "Post-rollback checklist" in c.params.get("text", ""))
            assert "SLOs back in target" in checklist.params["text"]
            assert "Auto-promotion disabled" in checklist.params["text"]
            chart = slack.wait_for(lambda c: c.method == "files.completeUploadExternal", timeout=20)
            assert chart.params.get("thread_ts") == warning["ts"], "the SLO chart is shared in the incident thread"
            metrics_text = requests.get(f"{bot.url}/metrics", timeout=5).text
            for sample in ('rollback_incidents_total{outcome="recovered"} 1.0', "rollback_time_to_recover_seconds_count 1.0",
                           'rollback_executor_seconds_count{executor="mlflow_alias",result="ok"} 1.0',
                           'rollback_slack_calls_total{method="chat.postMessage"}', "rollback_evaluation_seconds_count"):
                assert sample in metrics_text, sample
            progress_updates = [c for c in slack.calls("chat.update") if "Verifying" in c.params.get("text", "")
                                or "Recovered" in c.params.get("text", "")]
            assert progress_updates, "the progress message is updated in place"
            wait_until(lambda: "Recovered in" in json.dumps(slack.message(CHANNEL, warning["ts"])["blocks"]), 10,
                       "warning shows recovered")

            # 6. The bad version is blocked, and the gate does not promote it again for several cycles.
            tags = wait_until(lambda: mlflow_client.get_model_version(unique_model, v2).tags.get("rollback_blocked"),
                              10, "rollback_blocked tag")
            assert tags == "true"
            assert mlflow_client.get_model_version(unique_model, v2).tags["rollback_incident"] == incident_id
            promotions_before = len([c for c in slack.calls("chat.postMessage") if "promoted" in c.params.get("text", "")])
            time.sleep(5)  # five evaluation cycles, SLOs healthy again, candidate still points at v2
            assert mlflow_client.get_model_version_by_alias(unique_model, "champion").version == v1
            assert mlflow_client.get_model_version_by_alias(unique_model, "candidate").version == v2
            promotions_after = len([c for c in slack.calls("chat.postMessage") if "promoted" in c.params.get("text", "")])
            assert promotions_after == promotions_before == 1
            assert TOKEN not in bot.log() and SECRET not in bot.log()

            times = {
                "breach_start_to_warning_s": round(warned_at - breach_start, 2),
                "click_to_alias_flipped_s": round(flipped_at - clicked_at, 2),
                "flip_to_verified_recovered_s": round(recovered.at - flipped_at, 2),
                "promotion_note_at_s": round(promoted.at - breach_start, 2),
                "policy": {"evaluate_every": "1s", "for": "3s", "stable_for": "3s", "scrape": "1s", "rate_window": "5s"},
            }
            print("\nstory times:", json.dumps(times))
            print("\nincident thread:\n" + "\n".join([warning.get("text", "")] + [
                m.get("text", "") for m in slack.thread(CHANNEL, warning["ts"])]))
            (tmp_path / "story-times.json").write_text(json.dumps(times))
        finally:
            bot.stop()
