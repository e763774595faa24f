"""Escalation in the domain, with a stub Prometheus, the fake Slack Web API, a real MLflow server and an in-process
pager: an unattended warning re-mentions the approvers and triggers once; an approver's act acknowledges; the end of
the incident resolves; an attended warning never pages; a refused event is said in the thread."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from bot.app import Bot, wire
from bot.incidents.escalation import dedup_key
from bot.incidents.states import ESCALATE
from bot.infra.scheduler import Scheduler
from bot.infra.store import Incident, Store
from bot.slack.slack_out import SlackOut, make_client
from bot.slo.policy_file import parse_policy
from sandbox.model_service import seed_registry
from sandbox.slack_api import FakeSlackAPI
from tests.stubs import AUC, LATENCY, Clock, StubProm

CHANNEL = "C0MODELSVC"


@dataclass
class Answer:
    ok: bool = True
    status: int | None = 202
    message: str = "Event processed"


class FakePager:
    """Records every call; answers `answers[action]` (default ok)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.answers: dict[str, Answer] = {}

    def trigger(self, dedup_key: str, **payload: Any) -> Answer:
        self.calls.append(("trigger", dedup_key, payload))
        return self.answers.get("trigger", Answer())

    def acknowledge(self, dedup_key: str) -> Answer:
        self.calls.append(("acknowledge", dedup_key, {}))
        return self.answers.get("acknowledge", Answer())

    def resolve(self, dedup_key: str) -> Answer:
        self.calls.append(("resolve", dedup_key, {}))
        return self.answers.get("resolve", Answer())


def policy_text(model: str, escalate: str = "escalate: {after: 10m, pagerduty: true}") -> str:
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
    verify: {{every: 1s, within: 20s, stable_for: 2s}}
    {escalate}
"""


@pytest.fixture
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI() as fake:
        yield fake


@dataclass
class Env:
    bot: Bot
    pager: FakePager
    prom: StubProm
    clock: Clock
    slack: FakeSlackAPI

    def breach(self) -> Incident:
        self.prom.answers[LATENCY] = (0.5,)
        self.bot.detection.evaluate_once()
        incident = self.bot.store.active_incident("model-svc")
        assert incident is not None
        return incident

    def thread(self, incident: Incident) -> list[str]:
        ts = self.bot.store.incident(incident.id).message_ts or ""
        return [str(m.get("text", "")) for m in self.slack.thread(CHANNEL, ts)]

    def actions(self) -> list[str]:
        assert self.bot.escalation is not None
        self.bot.escalation.wait()
        return [action for action, _, _ in self.pager.calls]


def make_env(tmp_path: Path, slack: FakeSlackAPI, client: MlflowClient, model: str, *, escalate: str | None = None,
             pager: FakePager | None = None) -> Env:
    v1, v2 = seed_registry(client, model, versions=2)
    client.set_registered_model_alias(model, "previous_champion", v1)
    client.set_registered_model_alias(model, "champion", v2)
    clock = Clock()
    prom = StubProm({LATENCY: (0.1,), AUC: (0.9,)})
    text = policy_text(model) if escalate is None else policy_text(model, escalate)
    pager = FakePager() if pager is None else pager
    bot = wire(policy=parse_policy(text), store=Store(f"sqlite:///{tmp_path / 'db'}", clock=clock),
               prom=prom,  # type: ignore[arg-type]
               slack=SlackOut(make_client("xoxb-test", slack.url)), mlflow=client, scheduler=Scheduler(), clock=clock,
               pager=pager)
    return Env(bot, pager, prom, clock, slack)


def escalate_now(env: Env, incident: Incident) -> None:
    """What the replica's work poll does once `after` has passed."""
    assert [w.kind for w in env.bot.store.pending_work(incident.id)].count(ESCALATE) == 1
    assert env.bot.escalation is not None
    env.bot.escalation.due(incident.id)


def test_an_unattended_warning_pages_once_then_an_approval_acknowledges_and_recovery_resolves(
        tmp_path: Path, slack: FakeSlackAPI, mlflow_client: MlflowClient, unique_model: str) -> None:
    env = make_env(tmp_path, slack, mlflow_client, unique_model)
    incident = env.breach()
    escalate_now(env, incident)
    env.bot.escalation.due(incident.id)  # type: ignore[union-attr]  # a second replica, or a repeated row
    assert env.actions() == ["trigger"]
    thread = env.thread(incident)
    assert any("No approver has acted on this warning for 10m. <@U0APPROVER> please look" in t
               and "Paging the on-call through PagerDuty" in t for t in thread), thread
    assert any("Paged PagerDuty (dedup key `rollback-bot/model-svc/incident-" in t for t in thread)
    _, key, payload = env.pager.calls[0]
    assert key == dedup_key(env.bot.store.incident(incident.id))
    assert payload["severity"] == "critical" and payload["source"] == "rollback-bot/model-svc"
    assert "model-svc: p95-latency is 0.5" in payload["summary"] and f"#{incident.id}" in payload["summary"]
    assert payload["links"] == [{"href": f"https://sandbox.slack.com/archives/{CHANNEL}/p"
                                         f"{env.bot.store.incident(incident.id).message_ts.replace('.', '')}",
                                 "text": "Slack thread"}]
    assert payload["custom_details"]["slo"] == "p95-latency" and payload["custom_details"]["value"] == 0.5

    assert env.bot.incidents.approve(incident.id, "U0APPROVER").ok
    assert env.actions() == ["trigger", "acknowledge"]
    env.bot.runs.execute(incident.id)
    env.prom.answers[LATENCY] = (0.1,)
    for _ in range(4):
        env.clock.tick(1)
        env.bot.runs.verify_tick(incident.id)
    assert env.bot.store.incident(incident.id).state == "recovered"
    assert env.actions() == ["trigger", "acknowledge", "resolve"]
    assert {k for _, k, _ in env.pager.calls} == {key}
    assert any("PagerDuty alert resolved." in t for t in env.thread(incident))


def test_an_attended_warning_never_pages(tmp_path: Path, slack: FakeSlackAPI, mlflow_client: MlflowClient,
                                         unique_model: str) -> None:
    env = make_env(tmp_path, slack, mlflow_client, unique_model)
    incident = env.breach()
    assert env.bot.incidents.approve(incident.id, "U0APPROVER").ok
    assert ESCALATE not in [w.kind for w in env.bot.store.pending_work(incident.id)]
    env.bot.escalation.due(incident.id)  # type: ignore[union-attr]  # a row that fired anyway: still nothing
    assert env.actions() == []
    assert not any("No approver has acted" in t for t in env.thread(incident))


def test_a_dismissal_after_the_page_resolves_it_and_each_incident_has_its_own_key(
        tmp_path: Path, slack: FakeSlackAPI, mlflow_client: MlflowClient, unique_model: str) -> None:
    env = make_env(tmp_path, slack, mlflow_client, unique_model)
    first = env.breach()
    escalate_now(env, first)
    assert env.bot.incidents.dismiss(first.id, "U0APPROVER").ok
    assert env.actions() == ["trigger", "resolve"]
    env.prom.answers[LATENCY] = (0.1,)
    env.bot.detection.evaluate_once()
    env.clock.tick(5)
    second = env.breach()
    assert second.id != first.id
    escalate_now(env, second)
    assert env.actions() == ["trigger", "resolve", "trigger"]
    keys = [k for a, k, _ in env.pager.calls if a == "trigger"]
    assert len(keys) == 2 and len(set(keys)) == 2


def test_a_refused_event_is_said_in_the_thread_and_the_rollback_goes_on(
        tmp_path: Path, slack: FakeSlackAPI, mlflow_client: MlflowClient, unique_model: str) -> None:
    pager = FakePager()
    pager.answers["trigger"] = Answer(False, 400, "HTTP 400: Event object is invalid: 'payload.summary' is missing")
    env = make_env(tmp_path, slack, mlflow_client, unique_model, pager=pager)
    incident = env.breach()
    escalate_now(env, incident)
    env.actions()
    assert any("PagerDuty did not take the trigger: HTTP 400: Event object is invalid" in t
               for t in env.thread(incident))
    assert env.bot.incidents.approve(incident.id, "U0APPROVER").ok  # never paged: nothing to acknowledge
    env.bot.runs.execute(incident.id)
    assert env.bot.store.incident(incident.id).state == "verifying"


def test_without_a_routing_key_the_approvers_are_mentioned_again_and_nobody_is_paged(
        tmp_path: Path, slack: FakeSlackAPI, mlflow_client: MlflowClient, unique_model: str) -> None:
    env = make_env(tmp_path, slack, mlflow_client, unique_model)
    env.bot.escalation.pager = None  # type: ignore[union-attr]  # as build() wires it without PAGERDUTY_ROUTING_KEY
    incident = env.breach()
    escalate_now(env, incident)
    assert env.pager.calls == []
    assert any("PagerDuty is not configured (PAGERDUTY_ROUTING_KEY), so nobody is paged" in t
               for t in env.thread(incident))


def test_escalate_policy_field() -> None:
    svc = parse_policy(policy_text("m", "escalate: {after: 5m}")).services["model-svc"]
    assert svc.escalate is not None and (svc.escalate.after, svc.escalate.pagerduty) == (300.0, False)
    with pytest.raises(Exception, match="escalate.after: input should be greater than 0"):
        parse_policy(policy_text("m", "escalate: {after: 0s}"))
