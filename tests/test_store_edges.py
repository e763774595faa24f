"""Finding 7: what SQLite silently accepts and PostgreSQL refuses must never break the bot.

Each test runs on SQLite and on a real PostgreSQL server (tests/pg_env.py, a fresh database per test):

- text from outside that is longer than its column (a 10 KB Alertmanager alertname through the real
  `POST /alertmanager`, user IDs, reasons, request keys) is stored shortened, never a 500; NUL characters
  and lone surrogates, which PostgreSQL or UTF-8 refuse, are dropped;
- a non-finite reading (+Inf from `errors/0`) is a reading with no value and the words "+Inf": it still
  breaches an `above:` SLO, the cycle goes on to the services after it, and no JSON column ever receives
  Infinity or NaN (PostgreSQL's json refuses them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict
from sqlalchemy import JSON, String

from bot.app import build, wire
from bot.infra.scheduler import Scheduler
from bot.infra.store import TRIGGER_LENGTH, SloState, Store, metadata
from bot.slack.slack_out import SlackOut, make_client
from bot.slo.burn import queries
from bot.slo.evaluation import BREACH, NODATA, OK, Evaluator, read
from bot.slo.policy_file import parse_policy
from executors.base import StepContext, StepOutcome, StepPlan
from executors.registry import ExecutorSpec, Registry
from sandbox.servers import MlflowServer
from sandbox.slack_api import FakeSlackAPI
from tests.handler_env import GROUP, GROUP_MEMBER, MODEL_SVC, HandlerEnv, has_buttons, policy_yaml, seed_models
from tests.stubs import Clock, StubProm
from tests.test_alertmanager import AM_TOKEN, alert, results, send, webhook

LONG = "x" * 10_000


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    store = Store(url, clock=Clock())
    yield store
    store.engine.dispose()


# -- text longer than its column ---------------------------------------------------------------------------
@pytest.fixture
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as api:
        yield api


@pytest.fixture
def env(url: str, tmp_path: Path, slack: FakeSlackAPI, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str) -> Iterator[HandlerEnv]:
    """tests/test_alertmanager.py's bench (the real app over HTTP, the fake Slack API, a real MLflow), with its
    runtime rebuilt on this run's database."""
    models = seed_models(mlflow_client, unique_model)
    bench = HandlerEnv(tmp_path, slack, mlflow_client, models, mlflow_url=mlflow_server.url)
    bench.store.engine.dispose()  # the bench's own SQLite runtime is replaced before it serves anything
    bench.settings = replace(bench.settings, database_url=url, alertmanager_token=AM_TOKEN)
    bench.runtime = build(bench.settings, parse_policy(policy_yaml(models)), mlflow=mlflow_client)
    bench.store = bench.runtime.bot.store
    bench.start()
    try:
        yield bench
    finally:
        bench.stop()


def test_a_10kb_alertname_opens_its_incident_with_a_shortened_trigger(env: HandlerEnv) -> None:
    name = "ModelAUCLow" + LONG
    response = send(env, webhook(alert("long-name", name=name)))

    assert results(response) == ["opened"]  # a 500 on PostgreSQL before: value too long for varchar(128)
    incident = env.store.active_incident(MODEL_SVC)
    assert incident is not None and response.json()["alerts"][0]["incident_id"] == incident.id
    assert len(incident.trigger) == TRIGGER_LENGTH and incident.trigger == name[:TRIGGER_LENGTH - 1] + "…"
    assert response.json()["alerts"][0]["alertname"] == incident.trigger
    [warning] = env.slack.messages("C0MODELSVC")
    assert has_buttons(warning) and name[:100] in json.dumps(warning["blocks"])
    thread = env.thread_texts(incident)
    shortened = name[:TRIGGER_LENGTH - 1] + "…"
    assert any(f"Opened from Alertmanager: {shortened} firing since" in t for t in thread), thread
    assert any(f"Detected: {shortened} = 0.71" in t for t in thread), thread

    # NUL and a lone surrogate (both valid in JSON) in the name and summary: into the same thread, not a 500.
    odd = {**alert("odd-name", name="Model\u0000AUC\ud800Low"), "annotations": {"summary": "a\u0000b\udfffc"}}
    response = send(env, webhook(odd))
    assert results(response) == ["recorded_in_incident"]
    assert any("ModelAUC?Low firing since" in t and "ab?c" in t for t in env.thread_texts(incident))


def test_every_bounded_column_takes_text_longer_than_itself(store: Store) -> None:
    user = "U" + LONG
    incident = store.open_incident(service="model-svc", trigger="p95" + LONG, detail={"target": LONG},
                                   baseline={}, breach_started_at=1.0, channel="C" + LONG, requested_by=user)
    assert incident is not None
    assert (len(incident.trigger), len(incident.channel or ""), len(incident.requested_by or "")) == (128, 32, 32)
    assert incident.detail["target"] == LONG, "JSON holds any length"
    approved = store.transition(incident.id, ("open",), "executing", approved_by=user)
    assert approved is not None and approved.approved_by == user[:31] + "…"
    event = store.add_event(incident.id, "kind" + LONG, "text\u0000" + LONG)
    assert len(event.kind) == 64 and event.text == "text" + LONG
    store.audit(actor=user, action="approve" + LONG, result="refused" + LONG, incident_id=incident.id)
    [audit] = store.audits(incident.id)
    assert (len(audit["actor"]), len(audit["action"]), len(audit["result"])) == (64, 64, 32)
    frozen = store.freeze(service="model-svc", reason="why\u0000" + LONG, actor=user, blocked_version="5" + LONG)
    assert frozen.reason == "why" + LONG and len(frozen.blocked_version or "") == 64 and len(frozen.actor) == 64
    assert store.claim_request("action:" + LONG) and not store.claim_request("action:" + LONG)
    assert store.claim_alert("f" * 500, "s" * 500, service="model-svc", alertname="A" + LONG)
    assert not store.claim_alert("f" * 500, "s" * 500, service="model-svc", alertname="A")
    row = store.update_alert("f" * 500, "s" * 500, incident_id=incident.id)  # found again by the long key
    assert row is not None and len(row["alertname"]) == 255 and row["incident_id"] == incident.id


def test_every_text_and_json_column_of_the_store_is_guarded() -> None:
    """The one place that fits writes (bot.infra.store._guard_columns) covers every table, new ones included."""
    unguarded = [f"{table.name}.{column.name}" for table in metadata.tables.values() for column in table.columns
                 if isinstance(column.type, String | JSON)]
    assert unguarded == [], "declare tables before _guard_columns(metadata) runs"


def test_an_slo_name_longer_than_its_column_keeps_its_breach_clock(store: Store) -> None:
    slo = "p95-" + "l" * 200
    pol = parse_policy(f"""
evaluate_every: 1s
services:
  model-svc:
    channel: C0MODELSVC
    approvers: [U0APPROVER]
    model: recommender
    slos:
      - {{name: {slo}, query: latency, above: 0.25, for: 2s}}
    rollback:
      - mlflow_alias: {{model: recommender}}
""")
    evaluator = Evaluator(store, StubProm({"latency": (0.4,)}))  # type: ignore[arg-type]
    first = evaluator.evaluate(pol, now=100.0)["model-svc"][0]
    evaluator.evaluate(pol, now=101.0)
    held = evaluator.evaluate(pol, now=102.0)["model-svc"][0]
    assert held.breach_since == first.breach_since == 100.0 and held.sustained
    [(key, state)] = store.slo_states().items()
    assert key == store.slo_key("model-svc", slo) and len(key[1]) == 128 and state.breach_since == 100.0


# -- non-finite readings -----------------------------------------------------------------------------------
class NoopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Noop:
    """A rollback step that changes nothing: these tests are about opening incidents."""

    name: ClassVar[str] = "noop"

    def __init__(self, config: NoopConfig) -> None:
        self.config = config

    def plan(self, *, context: StepContext) -> StepPlan:
        return StepPlan(self.name, "nothing", (), "true")

    def execute(self, *, plan: StepPlan, context: StepContext) -> StepOutcome:
        return StepOutcome(self.name, True, "did nothing")


REGISTRY = Registry([ExecutorSpec("noop", NoopConfig, lambda c, _: Noop(c))])
ERRORS, LATENCY = "sum(rate(errors[5m])) / sum(rate(requests[5m]))", "p95_latency"
TWO_SERVICES = f"""
evaluate_every: 1s
services:
  first-svc:
    channel: C0FIRST
    approvers: [U0APPROVER]
    model: first
    slos:
      - {{name: error-ratio, query: '{ERRORS}', above: 0.05}}
    rollback:
      - noop: {{}}
  second-svc:
    channel: C0SECOND
    approvers: [U0APPROVER]
    model: second
    slos:
      - {{name: p95-latency, query: {LATENCY}, above: 0.25}}
    rollback:
      - noop: {{}}
"""


def test_an_infinite_reading_opens_its_incident_and_the_cycle_goes_on(url: str, slack: FakeSlackAPI) -> None:
    clock = Clock()
    prom = StubProm({ERRORS: (math.inf,), LATENCY: (0.5,)})  # errors/0: errors while nothing is served
    bot = wire(policy=parse_policy(TWO_SERVICES, registry=REGISTRY), store=Store(url, clock=clock),
               prom=prom, slack=SlackOut(make_client("xoxb-test", slack.url)),  # type: ignore[arg-type]
               mlflow=None, scheduler=Scheduler(), registry=REGISTRY, clock=clock)
    try:
        readings = bot.detection.evaluate_once()  # raised on PostgreSQL before: json refuses Infinity

        [inf] = readings["first-svc"]
        assert (inf.status, inf.value, inf.detail, inf.sustained) == (BREACH, None, "+Inf", True)
        first = bot.store.active_incident("first-svc")
        assert first is not None and first.trigger == "error-ratio"
        assert first.detail == {"value": None, "target": "< 0.05", "status": BREACH, "words": "+Inf"}
        state = bot.store.slo_state("first-svc", "error-ratio")
        assert state is not None and (state.status, state.value) == (BREACH, None)
        [warning] = slack.messages("C0FIRST")
        assert "+Inf" in json.dumps(warning["blocks"]) and has_buttons(warning)

        second = bot.store.active_incident("second-svc")  # the service after it was still evaluated
        assert second is not None and second.detail["value"] == 0.5 and len(slack.messages("C0SECOND")) == 1

        clock.tick(1)
        bot.detection.evaluate_once()  # and the next cycle too: same incidents, no new warnings
        assert len(slack.messages("C0FIRST")) == 1 and bot.store.active_incident("first-svc") == first
    finally:
        bot.store.engine.dispose()


def test_infinite_and_nan_values_are_judged_then_told_in_words() -> None:
    pol = parse_policy("""
evaluate_every: 1s
services:
  model-svc:
    channel: C0MODELSVC
    approvers: [U0APPROVER]
    model: recommender
    slos:
      - {name: high, query: q_high, above: 0.05}
      - {name: low, query: q_low, below: 0.8}
      - {name: burn, burn_rate: {errors: e, total: t, objective: 0.999, windows: [{long: 1h, short: 5m, factor: 14.4}]}}
    rollback:
      - mlflow_alias: {model: recommender}
""")
    svc = pol.services["model-svc"]
    assert svc.slos[2].burn_rate is not None
    burn_queries = {q: (math.inf,) for q in queries(svc.slos[2].burn_rate)}  # errors/0 in both windows

    def one(high: tuple[float, ...], low: tuple[float, ...]) -> list[tuple[str, float | None, str | None]]:
        prom = StubProm({"q_high": high, "q_low": low, **burn_queries})
        return [(r.status, r.value, r.detail) for r in read(prom, [svc])["model-svc"]]  # type: ignore[arg-type]

    high, low, burn = one((math.inf,), (-math.inf,))
    assert high == (BREACH, None, "+Inf") and low == (BREACH, None, "-Inf")
    assert burn[:2] == (BREACH, None) and burn[2], "a burn rate of +Inf breaches, told by the burn text"
    high, low, _ = one((-math.inf, 0.01), (math.inf,))
    assert high == (OK, 0.01, None) and low == (OK, None, "+Inf")
    high, low, _ = one((math.nan,), (math.nan, 0.9))
    assert high == (NODATA, None, None) and low == (OK, 0.9, None), "NaN is no data, as bot.infra.prom treats it"


def test_json_columns_never_receive_infinity_or_nan(store: Store) -> None:
    odd = {"inf": math.inf, "nested": [1.5, -math.inf, {"nan": math.nan}], "text": "a\u0000b"}
    clean = {"inf": None, "nested": [1.5, None, {"nan": None}], "text": "ab"}
    incident = store.open_incident(service="model-svc", trigger="t", detail=odd, baseline=odd,
                                   breach_started_at=None, channel="C1")
    assert incident is not None and incident.detail == clean and incident.baseline == clean
    assert store.update_incident(incident.id, verification=odd).verification == clean
    assert store.add_event(incident.id, "k", "text", data=odd).data == clean
    step = store.start_step(incident.id, 0, "noop", plan=odd)
    store.finish_step(step, True, outcome=odd)
    [stored] = store.steps(incident.id)
    assert stored.plan == clean and stored.outcome == clean
    store.audit(actor="U1", action="a", result="ok", incident_id=incident.id, detail=odd)
    assert store.audits(incident.id)[0]["detail"] == clean
    store.put_slo_states([SloState("model-svc", "slo", BREACH, None, 1.0, 2.0)])
    assert store.slo_state("model-svc", "slo") == SloState("model-svc", "slo", BREACH, None, 1.0, 2.0)
