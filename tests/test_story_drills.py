"""Drills in the whole story: a real `rollback-bot serve`, real MLflow, a real Prometheus scraping the simulated
model service, the fake Slack Web API and signed `/rollback` commands.

The gate promotes the healthy candidate; right after it the bot drills the way back: the production plan is
dry-run (nothing moves: @champion stays on the new version) and the staging plan is run for real, verified and
restored. `/rollback drill` (approvers only) drills again on request; history and report show the drills.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from sandbox.model_service import ModelServiceSimulator, VersionProfile, alias_reader, seed_registry
from sandbox.servers import MlflowServer, PrometheusServer
from sandbox.slack_api import FakeSlackAPI
from tests.story_env import (
    APPROVER,
    CHANNEL,
    GROUP,
    GROUP_MEMBER,
    P95,
    STRANGER,
    BotProcess,
    channel_lines,
    command,
    wait_until,
)

pytestmark = pytest.mark.story

FAST = VersionProfile(latency_seconds=0.05, error_rate=0.0, auc=0.86)


def drill_policy(model: str) -> str:
    return f"""
evaluate_every: 1s
services:
  model-svc:
    channel: {CHANNEL}
    approvers: [{APPROVER}, {GROUP}]
    model: {model}
    targets: {{recover: 5m}}
    slos:
      - name: p95-latency
        kind: latency
        query: '{P95.format(service="model-svc")}'
        above: 0.25
        for: 3s
      - name: auc
        kind: quality
        query: 'min(model_auc{{service="model-svc"}})'
        below: 0.8
        for: 3s
    rollback:
      - mlflow_alias: {{model: {model}, alias: champion, to: previous_champion}}
    verify: {{every: 1s, within: 60s, stable_for: 3s}}
    promote: {{from: candidate, to: champion, healthy_for: 3s}}
    drill:
      rollback:
        - mlflow_alias: {{model: {model}, alias: staging, to: previous_staging}}
      verify: {{every: 1s, within: 30s, stable_for: 2s}}
      restore: true
"""


def test_a_drill_follows_the_promotion_and_staging_is_rolled_back_and_restored(
        tmp_path: Path, prometheus_bin: str, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str) -> None:
    v1, v2, v3 = seed_registry(mlflow_client, unique_model, versions=3)
    for alias, version in (("champion", v1), ("candidate", v2), ("staging", v3), ("previous_staging", v2)):
        mlflow_client.set_registered_model_alias(unique_model, alias, version)
    policy = tmp_path / "policy.yaml"
    policy.write_text(drill_policy(unique_model))

    with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as slack, \
            ModelServiceSimulator(champion=alias_reader(mlflow_client, unique_model), profiles={},
                                  default=FAST) as sim, \
            PrometheusServer(tmp_path / "prom", targets=[sim.target], binary=prometheus_bin) as prom:
        prom.wait_for_series('model_auc{service="model-svc"}')
        bot = BotProcess(tmp_path, policy, slack_url=slack.url, prometheus_url=prom.url, mlflow_url=mlflow_server.url)
        try:
            bot.start()
            # 1. The gate promotes v2 (only a champion before: the outgoing v1 is the baseline of the way back).
            slack.wait_for(lambda c: c.method == "chat.postMessage" and "promoted" in c.params.get("text", ""),
                           timeout=60)
            # 2. The drill after it: the production plan dry-run, the staging plan run, verified and restored.
            drill = wait_until(lambda: next(iter(channel_lines(slack, f"Drill after v{v2}'s promotion")), None), 60,
                               "the drill line")
            assert f"Drill after v{v2}'s promotion: rollback ready, 1 step planned in " in drill
            assert f"s: champion v{v2} → v{v1}" in drill
            assert f"Staging drill: rolled back (staging v{v3} → v{v2}), SLOs stable" in drill
            assert drill.rstrip().endswith("staging restored")
            # The dry run moved nothing in production; the staging drill put staging back where it was.
            assert mlflow_client.get_model_version_by_alias(unique_model, "champion").version == v2
            assert mlflow_client.get_model_version_by_alias(unique_model, "staging").version == v3

            # 3. On request: approvers only.
            refused = command(bot, slack, "drill model-svc", STRANGER)
            assert "not" in refused.lower() and len(channel_lines(slack, "Drill of")) == 0
            answer = command(bot, slack, "drill model-svc", GROUP_MEMBER)
            assert "the rollback is ready (1 of 1 step planned)" in answer
            again = channel_lines(slack, "Drill of *model-svc* on request")
            assert len(again) == 1 and f"champion v{v2} → v{v1}" in again[0] and "staging restored" in again[0]

            # 4. Both drills are stored: history, report and /metrics show them.
            history = command(bot, slack, "history model-svc", APPROVER)
            assert "drill" in history.lower()
            report = command(bot, slack, "report model-svc", APPROVER)
            assert "model-svc" in report and "drill" in report.lower()
            metrics = requests.get(f"{bot.url}/metrics", timeout=5).text
            assert 'rollback_drills_total{mode="staging",result="ok",service="model-svc"} 2.0' in metrics
        finally:
            bot.stop()
