"""Issue 11 regressions at the Slack surface (findings 5, 6, 9 and 11): approvers' clicks never wait behind dry
runs and a dry run's plan is shared; a stalled git server delays only its own service's warning; no incident
stays `executing` after a failure around a step; text from outside (alerts, git, people) is inert in Slack.
Real HTTP against the real app (tests/handler_env.py), real MLflow, real git repositories, the fake Slack."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from bot.incidents.runner import Runner
from bot.infra.plans import PlannedStep
from bot.slack import blocks
from bot.slo.policy_file import parse_policy
from executors.registry import Clients, default_registry
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
    RANKER_CHANNEL,
    RANKER_SVC,
    STRANGER,
    HandlerEnv,
    button,
    seed_models,
    wait_until,
)
from tests.stubs import StubProm
from tests.test_alertmanager import AM_TOKEN, alert, send, webhook
from tests.test_exec_git_revert import make_origin

LIVE = ("<!channel>", "<!here>", "<!everyone>", "<https://evil.example", "<@U0EVIL>")


@pytest.fixture
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as api:
        yield api


@pytest.fixture
def env(tmp_path: Path, slack: FakeSlackAPI, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str) -> Iterator[HandlerEnv]:
    bench = HandlerEnv(tmp_path, slack, mlflow_client, seed_models(mlflow_client, unique_model),
                       mlflow_url=mlflow_server.url)
    from dataclasses import replace

    bench.runtime.settings = replace(bench.runtime.settings, alertmanager_token=AM_TOKEN)
    bench.start()
    try:
        yield bench
    finally:
        bench.stop()


def _everything_sent(slack: FakeSlackAPI) -> str:
    return json.dumps([c.params for c in slack.calls()])


# -- finding 11: outside text is inert ------------------------------------------------------------------
def test_finding11_alert_labels_and_annotations_cannot_mention_or_link(env: HandlerEnv) -> None:
    hostile = alert(name="AUCLow<!channel>")
    hostile["annotations"]["summary"] = "<!here> <@U0EVIL> please <https://evil.example|Approve here> & <!everyone>"
    hostile["annotations"]["threshold"] = "<!channel>"
    hostile["generatorURL"] = "http://prometheus.example/graph?x=1|Approve here><!channel>"
    response = send(env, webhook(hostile))
    assert response.status_code == 200, response.text
    incident = wait_until(lambda: (i := env.store.active_incident(MODEL_SVC)) and i.message_ts and i, "the warning")
    wait_until(lambda: any("Alertmanager" in t for t in env.thread_texts(incident)), "the alert line")
    sent = _everything_sent(env.slack)
    for markup in LIVE:
        assert markup not in sent, markup
    assert "&lt;!channel&gt;" in sent and "&lt;!here&gt;" in sent and "Approve here" in sent
    assert "<!subteam^S0ONCALL>" in sent, "the approvers the bot names itself stay live mentions"
    line = next(t for t in env.thread_texts(incident) if "Alertmanager" in t)
    assert "%7CApprove%20here%3E" in line and "|source>" in line, line  # the link's label is the bot's own


def test_finding11_a_freeze_reason_and_a_typed_word_are_inert(env: HandlerEnv) -> None:
    env.command(f"freeze {MODEL_SVC} <!channel> bad deploy <https://evil.example|click me>")
    wait_until(lambda: any("froze auto-promotion" in c.params.get("text", "") for c in env.channel_posts()),
               "the freeze note")
    env.command("<!here>", user=STRANGER)  # not a service name: echoed back in the refusal
    env.command(f"status {MODEL_SVC}")
    wait_until(lambda: any("Rollback status" in c.params.get("text", "")
                           for c in env.slack.calls("chat.postEphemeral")), "the status answer")
    time.sleep(0.5)
    sent = _everything_sent(env.slack)
    for markup in LIVE:
        assert markup not in sent, markup
    assert "&lt;!channel&gt; bad deploy" in sent


def test_finding11_git_commit_subjects_and_authors_are_inert_in_plans(tmp_path: Path) -> None:
    origin = make_origin(tmp_path)
    origin.commit("add config", {"model.yaml": "version: 1\n"})
    origin.dev.config_writer().set_value("user", "name", "<!channel> Mallory").release()
    origin.commit("<!here> bump <https://evil.example|Approve here>", {"model.yaml": "version: 2\n"})
    policy = parse_policy(f"""
services:
  {MODEL_SVC}:
    channel: {MODEL_CHANNEL}
    approvers: [{APPROVER}]
    model: m
    slos: [{{name: auc, query: 'min(model_auc)', below: 0.8}}]
    rollback:
      - git_revert: {{repo: '{origin.url}', commit: last}}
""")
    runner = Runner(default_registry(), Clients(), store=None)  # type: ignore[arg-type]  # planning only
    steps = runner.plan_all(policy.services[MODEL_SVC], 1)
    assert not steps[0].error, steps
    assert "<!here>" in json.dumps([s.to_dict() for s in steps]), "the plan keeps the subject as git has it"
    shown = blocks.clip(blocks.plan_text("Dry run:", steps))
    for markup in LIVE:
        assert markup not in shown, (markup, shown)
    assert "&lt;!here&gt; bump" in shown


# -- finding 9: never stuck in executing ----------------------------------------------------------------
@pytest.mark.parametrize("broken", ["finish_step", "freeze", "audit"])
def test_finding9_a_failure_around_a_step_halts_with_retry_and_stop(env: HandlerEnv, monkeypatch: pytest.MonkeyPatch,
                                                                    broken: str) -> None:
    real = getattr(env.store, broken)
    calls = {"n": 0}

    def fails_once(*args: Any, **kwargs: Any) -> Any:
        if broken == "audit" and not str(kwargs.get("action", "")).startswith("execute"):
            return real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError(f"{broken} lost its database connection")
        return real(*args, **kwargs)

    monkeypatch.setattr(env.store, broken, fails_once)
    incident, warning = env.open_warning()
    env.click(warning, "rollback_approve", user=APPROVER)
    halted = wait_until(lambda: (i := env.store.incident(incident.id)).state == "halted" and i, "the halt")
    assert f"{broken} lost its database connection" in (halted.error or "")
    shown = wait_until(lambda: (m := env.slack.message(MODEL_CHANNEL, incident.message_ts or "")) and
                       "rollback_retry" in json.dumps(m["blocks"]) and m, "Retry step on the warning")
    assert button(shown, "rollback_retry") and button(shown, "rollback_stop")
    assert any(f"{broken} lost its database connection" in t for t in env.thread_texts(incident))
    env.click(shown, "rollback_retry", user=APPROVER)
    wait_until(lambda: env.store.incident(incident.id).state == "verifying", "the retried plan")
    assert env.champion() == GOOD_VERSION


def test_finding9_stop_ends_a_halted_incident_and_frees_the_service(env: HandlerEnv,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the store refused the step")

    monkeypatch.setattr(env.store, "start_step", broken)
    incident, warning = env.open_warning()
    env.click(warning, "rollback_approve", user=APPROVER)
    wait_until(lambda: env.store.incident(incident.id).state == "halted", "the halt")
    assert env.champion() == BAD_VERSION
    shown = wait_until(lambda: (m := env.slack.message(MODEL_CHANNEL, incident.message_ts or "")) and
                       "rollback_stop" in json.dumps(m["blocks"]) and m, "Stop on the warning")
    env.click(shown, "rollback_stop", user=APPROVER)
    wait_until(lambda: env.store.incident(incident.id).state == "failed", "the stop")
    assert env.store.active_incident(MODEL_SVC) is None


# -- finding 5: decisions never wait behind dry runs ----------------------------------------------------
def test_finding5_dry_runs_share_one_plan_and_never_hold_up_an_approval(env: HandlerEnv,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    incident, warning = env.open_warning()
    runner = env.runtime.bot.runner
    release = threading.Event()
    planned: list[int] = []
    real_plan_all = runner.plan_all

    def slow_plan_all(*args: Any, **kwargs: Any) -> list[PlannedStep]:
        planned.append(1)
        assert release.wait(30), "the test never released the slow plan"
        return real_plan_all(*args, **kwargs)

    monkeypatch.setattr(runner, "plan_all", slow_plan_all)
    for _ in range(8):  # anyone may press Dry run; eight of them, each a separate click
        env.click(warning, "rollback_dry_run", user=STRANGER)
    wait_until(lambda: planned, "the first dry run to start planning")
    env.click(warning, "rollback_approve", user=APPROVER)
    # The approval goes through while all eight dry runs are still waiting on their (single) plan.
    wait_until(lambda: env.store.incident(incident.id).state in ("executing", "verifying"), "the approval")
    assert not release.is_set()
    release.set()
    wait_until(lambda: len([a for a in env.audits(incident.id, "dry_run")]) == 8, "the eight dry runs")
    assert len(planned) == 1, "one plan computed for eight dry runs within 30 s"
    wait_until(lambda: env.champion() == GOOD_VERSION, "the rollback")


# -- finding 6: one stalled git server delays only its own service --------------------------------------
def test_finding6_a_stalled_git_server_delays_only_its_own_services_warning(
        tmp_path: Path, slack: FakeSlackAPI, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str, stalled_server: int) -> None:
    models = seed_models(mlflow_client, unique_model)
    policy = f"""
evaluate_every: 1s
services:
  {MODEL_SVC}:
    channel: {MODEL_CHANNEL}
    approvers: [{APPROVER}]
    model: {models[MODEL_SVC]}
    slos: [{{name: auc, query: model_auc_a, below: 0.8}}]
    rollback:
      - git_revert: {{repo: 'git://127.0.0.1:{stalled_server}/deploy.git', commit: last, network_timeout: 4}}
  {RANKER_SVC}:
    channel: {RANKER_CHANNEL}
    approvers: [{APPROVER}]
    model: {models[RANKER_SVC]}
    slos: [{{name: auc, query: model_auc_b, below: 0.8}}]
    rollback:
      - mlflow_alias: {{model: {models[RANKER_SVC]}}}
"""
    env = HandlerEnv(tmp_path, slack, mlflow_client, models, mlflow_url=mlflow_server.url, policy=policy).start()
    try:
        bot = env.runtime.bot
        bot.evaluator.prom = StubProm({"model_auc_a": (0.5,), "model_auc_b": (0.5,)})  # type: ignore[assignment]
        started = time.monotonic()
        bot.detection.evaluate_once()
        cycle = time.monotonic() - started
        ranker = env.store.active_incident(RANKER_SVC)
        assert ranker is not None and ranker.message_ts, "the other service's warning did not wait for git"
        assert cycle < 4, f"the evaluation cycle waited {cycle:.1f}s for the stalled git server"
        bot.detection.evaluate_once()  # a second cycle while the first one's planning still hangs: no second opener
        # The incident is stored first and its warning posted just after: wait for the warning, not the row.
        stalled = wait_until(lambda: (i := env.store.active_incident(MODEL_SVC)) is not None and i.message_ts and i,
                             "the stalled service's warning", timeout=20)
        assert "4" in (stalled.baseline.get("error") or "") and "clone" in stalled.baseline["error"], stalled.baseline
        assert len(env.slack.messages(MODEL_CHANNEL)) == 1
    finally:
        env.stop()


def test_a_warning_still_being_posted_is_not_posted_again_by_the_cycle(env: HandlerEnv) -> None:
    """The opener thread waits out a 429 longer than the cycle waits for it (OPEN_WAIT); the cycle's flush_all
    then finds the incident without a message yet and must not post a second warning."""
    bot = env.runtime.bot
    bot.evaluator.prom = StubProm({'min(model_auc{service="model-svc"})': (0.5,)})  # type: ignore[assignment]
    env.slack.fail_next("chat.postMessage", status=429, retry_after=3)
    started = time.monotonic()
    bot.detection.evaluate_once()
    incident = wait_until(lambda: (i := env.store.active_incident(MODEL_SVC)) and i.message_ts and i, "the warning")
    time.sleep(max(0.0, started + 4.5 - time.monotonic()))  # past the 429's Retry-After: the opener's post is done
    warnings = [m for m in env.slack.messages(MODEL_CHANNEL) if "Roll back" in json.dumps(m.get("blocks") or [])]
    assert [m["ts"] for m in warnings] == [incident.message_ts], "one warning per incident"
    assert [e.kind for e in env.store.events(incident.id)].count("warned") == 1
