"""IncidentService with a stub Prometheus, the fake Slack Web API and a real MLflow server: verification
verdicts, the progress message, and a failing executor that must tell the thread what failed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict

from bot.app import Bot, wire
from bot.infra.scheduler import Scheduler
from bot.infra.store import Incident, Store
from bot.slack.slack_out import SlackOut, make_client
from bot.slo.policy_file import parse_policy
from executors import mlflow_alias
from executors.base import ExecutorError, StepContext, StepOutcome, StepPlan
from executors.registry import ExecutorSpec, Registry
from sandbox.model_service import seed_registry
from sandbox.slack_api import FakeSlackAPI
from tests.story_env import wait_until
from tests.stubs import AUC, LATENCY, Clock, StubProm

CHANNEL = "C0MODELSVC"


class FailConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = "boom"
    times: int = 1_000_000  # fail this many executions, then succeed (a fault that clears)


class FailsTimes:
    name: ClassVar[str] = "always_fails"
    failures: ClassVar[dict[str, int]] = {}

    def __init__(self, config: FailConfig) -> None:
        self.config = config

    def plan(self, *, context: StepContext) -> StepPlan:
        return StepPlan(self.name, "do something doomed", (), "false")

    def execute(self, *, plan: StepPlan, context: StepContext) -> StepOutcome:
        seen = self.failures.get(self.config.message, 0)
        if seen < self.config.times:
            self.failures[self.config.message] = seen + 1
            raise ExecutorError(self.config.message)
        return StepOutcome(self.name, True, "worked this time")


def _registry() -> Registry:
    return Registry([mlflow_alias.SPEC, ExecutorSpec("always_fails", FailConfig, lambda c, _: FailsTimes(c))])


def _policy_text(model: str, extra_step: str = "") -> str:
    return f"""
evaluate_every: 1s
services:
  model-svc:
    channel: {CHANNEL}
    approvers: [U0APPROVER]
    model: {model}
    slos:
      - {{name: p95-latency, query: {LATENCY}, above: 0.25, for: 0s}}
      - {{name: auc, query: {AUC}, below: 0.8, for: 0s}}
    rollback:
      - mlflow_alias: {{model: {model}}}
{extra_step}
    verify: {{every: 1s, within: 20s, stable_for: 3s}}
"""


@pytest.fixture
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI() as fake:
        yield fake


def _bot(tmp_path: Path, slack: FakeSlackAPI, client: MlflowClient, text: str, prom: StubProm,
         clock: Clock) -> Bot:
    store = Store(f"sqlite:///{tmp_path / 'db'}", clock=clock)
    slack_out = SlackOut(make_client("xoxb-test", slack.url))
    return wire(policy=parse_policy(text, registry=_registry()), store=store, prom=prom,  # type: ignore[arg-type]
                slack=slack_out,
                mlflow=client, scheduler=Scheduler(), registry=_registry(), clock=clock)


def _seed(client: MlflowClient, model: str) -> tuple[str, str]:
    v1, v2 = seed_registry(client, model, versions=2)
    client.set_registered_model_alias(model, "previous_champion", v1)
    client.set_registered_model_alias(model, "champion", v2)
    return v1, v2


def _breached(tmp_path: Path, slack: FakeSlackAPI, client: MlflowClient,
              model: str) -> tuple[Bot, Clock, StubProm, Incident | None]:
    """A bot whose service breaches latency with no `for`: one evaluation opens the incident."""
    _seed(client, model)
    clock = Clock()
    prom = StubProm({LATENCY: (0.5,), AUC: (0.9,)})
    bot = _bot(tmp_path, slack, client, _policy_text(model), prom, clock)
    bot.detection.evaluate_once()
    return bot, clock, prom, bot.store.active_incident("model-svc")


def test_breach_to_recovered_with_one_progress_message(tmp_path: Path, slack: FakeSlackAPI,
                                                      mlflow_client: MlflowClient, unique_model: str) -> None:
    v1, v2 = _seed(mlflow_client, unique_model)
    clock = Clock()
    prom = StubProm({LATENCY: (0.5,), AUC: (0.9,)})
    bot = _bot(tmp_path, slack, mlflow_client, _policy_text(unique_model), prom, clock)
    bot.detection.evaluate_once()
    incident = bot.store.active_incident("model-svc")
    assert incident is not None and incident.baseline["version"] == v1 and incident.baseline["bad_version"] == v2
    bot.detection.evaluate_once()
    assert len(slack.messages(CHANNEL)) == 1, "one open incident per service: no repeated warnings"

    assert bot.incidents.approve(incident.id, "U0APPROVER").ok
    bot.runs.execute(incident.id)  # what the scheduler would run
    assert str(mlflow_client.get_model_version_by_alias(unique_model, "champion").version) == v1

    prom.answers[LATENCY] = ()  # right after a flip the rate window may be empty: no data is not recovery
    bot.runs.verify_tick(incident.id)
    prom.answers[LATENCY] = (0.1,)
    for _ in range(4):
        clock.tick(1)
        bot.runs.verify_tick(incident.id)
    done = bot.store.incident(incident.id)
    assert done.state == "recovered"
    thread = [m["text"] for m in slack.thread(CHANNEL, done.message_ts or "")]
    assert any("All SLOs within target" in t for t in thread)
    assert any("Recovered:" in t for t in thread)
    assert any("Summary" in t and "time to detect" in t for t in thread)

    def progress() -> list[dict]:
        return [m for m in slack.thread(CHANNEL, done.message_ts or "") if m.get("ts") == done.progress_ts]

    # Edits are limited to one chat.update per 3 s per incident: the last one arrives within that.
    wait_until(lambda: "Recovered" in progress()[0]["text"], 10, "the progress message to say Recovered")
    assert len(progress()) == 1, "one progress message, updated in place"
    updates = [c.at for c in slack.calls("chat.update")]
    assert all(b - a >= 2.9 for a, b in zip(updates, updates[1:], strict=False)), updates
    assert "p95-latency" in json.dumps(progress()[0]["blocks"])
    assert mlflow_client.get_model_version(unique_model, v2).tags["rollback_blocked"] == "true"
    assert bot.store.frozen("model-svc") is not None


def test_verification_times_out_and_mentions_approvers(tmp_path: Path, slack: FakeSlackAPI,
                                                       mlflow_client: MlflowClient, unique_model: str) -> None:
    bot, clock, prom, incident = _breached(tmp_path, slack, mlflow_client, unique_model)
    assert incident is not None
    bot.incidents.approve(incident.id, "U0APPROVER")
    bot.runs.execute(incident.id)
    for _ in range(22):
        clock.tick(1)
        bot.runs.verify_tick(incident.id)
    done = bot.store.incident(incident.id)
    assert done.state == "verify_failed"
    failed = [m["text"] for m in slack.thread(CHANNEL, done.message_ts or "") if "Verification failed:" in m["text"]]
    assert failed and "<@U0APPROVER>" in failed[0]
    assert bot.store.frozen("model-svc") is not None  # frozen whether it recovered or not


def _failing_bot(tmp_path: Path, slack: FakeSlackAPI, client: MlflowClient, model: str,
                 step: str) -> tuple[Bot, str, Incident]:
    """A bot whose plan is mlflow_alias, `step`, mlflow_alias; approved, and halted at step 2."""
    v1, _ = _seed(client, model)
    clock = Clock()
    prom = StubProm({LATENCY: (0.5,), AUC: (0.9,)})
    text = _policy_text(model, f"      - {step}\n      - mlflow_alias: {{model: {model}}}")
    bot = _bot(tmp_path, slack, client, text, prom, clock)
    bot.start_work()
    bot.detection.evaluate_once()
    incident = bot.store.active_incident("model-svc")
    assert incident is not None
    assert bot.incidents.approve(incident.id, "U0APPROVER").ok
    wait_until(lambda: bot.store.incident(incident.id).state == "halted", 15, "the plan to halt")
    return bot, v1, bot.store.incident(incident.id)


def test_a_failing_step_halts_the_plan_tells_the_thread_and_stop_ends_it(
        tmp_path: Path, slack: FakeSlackAPI, mlflow_client: MlflowClient, unique_model: str) -> None:
    bot, v1, halted = _failing_bot(tmp_path, slack, mlflow_client, unique_model,
                                   "always_fails: {message: 'helm said no'}")
    try:
        assert halted.error and "helm said no" in halted.error and halted.resume_from == 1
        # The state moves first, then the thread is told: wait for the line rather than race it.
        failure = wait_until(lambda: next((m["text"] for m in slack.thread(CHANNEL, halted.message_ts or "")
                                           if "Rollback stopped at" in m["text"]), None), 5, "the failure line")
        assert "step 2/3 `always_fails`" in failure and "helm said no" in failure
        assert "Done: step 1/3 `mlflow_alias`" in failure and "Not run: step 3/3 `mlflow_alias`" in failure
        assert "<@U0APPROVER>" in failure
        def buttons() -> list[str]:
            warning = slack.message(CHANNEL, halted.message_ts or "")
            return [e["text"]["text"] for b in warning["blocks"] if b["type"] == "actions" for e in b["elements"]]

        wait_until(lambda: buttons()[:2] == ["Retry step", "Stop"], 5, "Retry step and Stop on the warning")
        assert bot.store.active_incident("model-svc") is not None, "a halted plan is still an open incident"

        refused = bot.incidents.stop(halted.id, "U0STRANGER")
        assert not refused.ok and bot.store.incident(halted.id).state == "halted"
        assert bot.incidents.stop(halted.id, "U0APPROVER").ok
        assert not bot.incidents.stop(halted.id, "U0APPROVER").ok, "a second Stop finds nothing to stop"
    finally:
        bot.stop()
    done = bot.store.incident(halted.id)
    assert done.state == "failed" and done.active_service is None
    assert any(e.kind == "summary" and "Rollback failed" in e.text for e in bot.store.events(done.id))
    assert bot.store.frozen("model-svc") is not None
    assert str(mlflow_client.get_model_version_by_alias(unique_model, "champion").version) == v1
    assert [s.status for s in bot.store.steps(done.id)] == ["done", "failed"]
    wait_until(lambda: "Rollback failed" in json.dumps(slack.message(CHANNEL, done.message_ts or "")["blocks"]), 5,
               "the warning to say the rollback failed")


def test_retry_step_runs_the_failed_step_again_and_goes_on(
        tmp_path: Path, slack: FakeSlackAPI, mlflow_client: MlflowClient, unique_model: str) -> None:
    bot, _, halted = _failing_bot(tmp_path, slack, mlflow_client, unique_model,
                                  f"always_fails: {{message: 'flaky-{unique_model}', times: 1}}")
    try:
        assert not bot.incidents.retry(halted.id, "U0STRANGER").ok
        assert bot.incidents.retry(halted.id, "U0APPROVER").ok
        assert not bot.incidents.retry(halted.id, "U0APPROVER").ok, "the second Retry finds the plan already running"
        wait_until(lambda: bot.store.incident(halted.id).state == "verifying", 15, "the retried plan")
    finally:
        bot.stop()
    steps = bot.store.steps(halted.id)
    assert [(s.position, s.status) for s in steps] == [(0, "done"), (1, "failed"), (1, "done"), (2, "done")], \
        "step 1 is not run again; step 2 is retried; step 3 follows"
    texts = [e.text for e in bot.store.events(halted.id)]
    assert any("Retry from step 2 by <@U0APPROVER>" in t for t in texts)


def test_a_breach_that_outlives_its_incident_is_not_warned_again(tmp_path: Path, slack: FakeSlackAPI,
                                                                 mlflow_client: MlflowClient,
                                                                 unique_model: str) -> None:
    bot, clock, prom, incident = _breached(tmp_path, slack, mlflow_client, unique_model)
    assert incident is not None and bot.incidents.dismiss(incident.id, "U0APPROVER").ok
    for _ in range(3):
        clock.tick(1)
        bot.detection.evaluate_once()
    assert bot.store.active_incident("model-svc") is None, "the same continuous breach was dismissed"
    prom.answers[LATENCY] = (0.1,)
    clock.tick(1)
    bot.detection.evaluate_once()
    prom.answers[LATENCY] = (0.6,)
    clock.tick(1)
    bot.detection.evaluate_once()
    again = bot.store.active_incident("model-svc")
    assert again is not None and again.id != incident.id, "a new breach after recovery opens a new incident"


def test_a_verdict_whose_close_never_ran_is_closed_on_restart(tmp_path: Path, slack: FakeSlackAPI,
                                                               mlflow_client: MlflowClient, unique_model: str) -> None:
    bot, clock, prom, incident = _breached(tmp_path, slack, mlflow_client, unique_model)
    assert incident is not None and bot.incidents.approve(incident.id, "U0APPROVER").ok
    bot.runs.execute(incident.id)
    # The process dies right after the verifier's verdict, before finish() froze and summarised it.
    assert bot.store.transition(incident.id, ("verifying",), "recovered", recovered_at=clock())
    assert bot.store.frozen("model-svc") is None or "in progress" in bot.store.frozen("model-svc").reason

    again = _bot(tmp_path, slack, mlflow_client, _policy_text(unique_model), prom, clock)
    again.start()
    # The dead process's verification row is taken over at once (its lease ended with it): its close runs.
    wait_until(lambda: any(e.kind == "summary" for e in again.store.events(incident.id)), 10, "the close")
    again.stop()
    events = [e.kind for e in again.store.events(incident.id)]
    assert events.count("summary") == 1 and "checklist" in events and "frozen" in events
    frozen = again.store.frozen("model-svc")
    assert frozen is not None and frozen.reason == f"rollback incident #{incident.id}"
    third = _bot(tmp_path, slack, mlflow_client, _policy_text(unique_model), prom, clock)
    third.start()  # a second restart finds nothing left to close
    time.sleep(1.5)  # three polls of the work table
    third.stop()
    assert [e.kind for e in again.store.events(incident.id)].count("summary") == 1
