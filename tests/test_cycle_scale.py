"""What one evaluation cycle costs when the policy has many services (issue 14's "the rest of the cycle scales
too"): the promotion gate's reads are batched (three store reads for every service, the registry only for services
healthy long enough, its aliases cached), SLO state rows are written only when a status or a breach clock changes,
and the SLO gauges are set only when they change. The registry is a real `mlflow server` (session fixture)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import event

from bot.infra.model_registry import ModelRegistry
from bot.infra.store import Store
from bot.slo import gate as gate_module
from bot.slo.evaluation import Evaluator
from bot.slo.gate import Gate
from bot.slo.policy import Policy
from bot.slo.policy_file import parse_policy
from sandbox.model_service import seed_registry
from tests.stubs import Clock, StubProm

LATENCY = 'histogram_quantile(0.95, sum by (le) (rate(lat_bucket{{service="{name}"}}[1m])))'


def many(count: int, *, model: str = "{name}-model", healthy_for: str = "10s") -> Policy:
    lines = ["evaluate_every: 5s", "services:"]
    for i in range(count):
        name = f"svc-{i:03d}"
        lines += [f"  {name}:", "    channel: C0SCALE", "    approvers: [U0APPROVER]",
                  f"    model: {model.format(name=name)}",
                  f"    rollback: [{{mlflow_alias: {{model: {model.format(name=name)}}}}}]",
                  f"    promote: {{healthy_for: {healthy_for}}}", "    slos:",
                  f"      - {{name: latency, query: '{LATENCY.format(name=name)}', above: 0.25}}"]
    return parse_policy("\n".join(lines) + "\n")


class Statements:
    """Counts the SQL statements a store's engine runs."""

    def __init__(self, store: Store) -> None:
        self.count = 0
        event.listen(store.engine, "before_cursor_execute", self._seen)

    def _seen(self, *_: Any) -> None:
        self.count += 1


class Calls:
    """A real MlflowClient whose method calls are counted."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return method(*args, **kwargs)

        return counted


def test_the_gate_of_200_services_is_three_store_reads(tmp_path: Path, mlflow_client: MlflowClient) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    pol = many(200)
    store.freeze(service="svc-007", reason="rollback incident #1", actor="rollback-bot")
    registry = Calls(mlflow_client)
    gate = Gate(store, ModelRegistry(registry), clock=Clock())
    statements = Statements(store)
    by_name = {svc.name: d for svc, d in gate.consider_all(pol.services.values())}
    assert statements.count == 3  # active incidents, freezes, healthy_since: for all 200 at once
    assert not registry.calls  # nobody has been healthy for 10 s yet
    assert "frozen" in by_name["svc-007"].reason
    assert by_name["svc-000"].reason == "healthy for 0s of 10s"
    assert len(by_name) == 200 and not any(d.promoted for d in by_name.values())


def test_aliases_are_listed_in_pages_when_many_services_are_due_and_cached(tmp_path: Path,
                                                                           mlflow_client: MlflowClient,
                                                                           unique_model: str) -> None:
    """30 healthy services whose candidate is already champion: one listing of the registry, then nothing for
    ALIAS_TTL; each decision is the same as reading alone would give."""
    prefix = unique_model
    pol = many(30, model=f"{prefix}-{{name}}")
    for svc in pol.services.values():
        v1, = seed_registry(mlflow_client, svc.model, versions=1)
        mlflow_client.set_registered_model_alias(svc.model, "champion", v1)
        mlflow_client.set_registered_model_alias(svc.model, "candidate", v1)
    clock = Clock()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.put_healthy_since({name: clock.now for name in pol.services})
    clock.tick(11)
    registry = Calls(mlflow_client)
    gate = Gate(store, ModelRegistry(registry), clock=clock)
    first = gate.consider_all(pol.services.values())
    assert {d.reason for _, d in first} == {"@candidate is already @champion"}
    assert set(registry.calls) == {"search_registered_models"}  # a page per 1,000 models, not 60 reads
    registry.calls.clear()
    gate.consider_all(pol.services.values())
    assert not registry.calls  # within ALIAS_TTL


def test_a_new_candidate_is_read_fresh_before_anything_is_promoted(tmp_path: Path, mlflow_client: MlflowClient,
                                                                   unique_model: str) -> None:
    v1, v2 = seed_registry(mlflow_client, unique_model, versions=2)
    mlflow_client.set_registered_model_alias(unique_model, "champion", v1)
    mlflow_client.set_registered_model_alias(unique_model, "candidate", v1)
    pol = many(1, model=unique_model)
    svc = pol.services["svc-000"]
    clock = Clock()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.set_healthy_since(svc.name, clock.now)
    clock.tick(11)
    registry = Calls(mlflow_client)
    gate = Gate(store, ModelRegistry(registry), clock=clock, alias_ttl=0.5)
    assert gate.consider(svc).reason == "@candidate is already @champion"
    assert registry.calls == Counter({"get_registered_model": 1})
    mlflow_client.set_registered_model_alias(unique_model, "candidate", v2)
    assert gate.consider(svc).reason == "@candidate is already @champion"  # the cached read, at most 0.5 s old
    time.sleep(0.6)
    decision = gate.consider(svc)
    assert decision.promoted and (decision.version, decision.previous) == (v2, v1)
    assert registry.calls["get_model_version_by_alias"] >= 2  # candidate and champion read again before acting
    assert str(mlflow_client.get_model_version_by_alias(unique_model, "champion").version) == v2


def test_a_blocked_candidate_is_not_read_again_every_cycle(tmp_path: Path, mlflow_client: MlflowClient,
                                                           unique_model: str) -> None:
    v1, v2 = seed_registry(mlflow_client, unique_model, versions=2)
    mlflow_client.set_registered_model_alias(unique_model, "champion", v1)
    mlflow_client.set_registered_model_alias(unique_model, "candidate", v2)
    ModelRegistry(mlflow_client).block(unique_model, v2, incident_id=3)
    svc = many(1, model=unique_model).services["svc-000"]
    clock = Clock()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.set_healthy_since(svc.name, clock.now)
    clock.tick(11)
    registry = Calls(mlflow_client)
    gate = Gate(store, ModelRegistry(registry), clock=clock)
    assert "rollback_blocked" in gate.consider(svc).reason
    registry.calls.clear()
    for _ in range(3):
        assert gate.consider(svc).reason == f"version {v2} is rollback_blocked"
    assert registry.calls == Counter({"get_registered_model": 1})  # the aliases once, no version read again


def test_slo_states_are_written_only_when_status_or_breach_clock_change(tmp_path: Path) -> None:
    pol = many(50)
    queries = {LATENCY.format(name=name): name for name in pol.services}
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    clock = Clock()
    values = {name: 0.1 for name in pol.services}
    prom = StubProm({q: (values[name],) for q, name in queries.items()})
    evaluator = Evaluator(store, prom)  # type: ignore[arg-type]
    evaluator.evaluate(pol, now=clock())
    first = store.slo_states()
    assert len(first) == 50

    writes: list[str] = []
    event.listen(store.engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_: writes.append(statement) if "slo_state" in statement else None)
    for step in range(3):  # every value moves, no status changes: nothing to write, nothing read back
        prom.answers.update({q: (0.1 + 0.01 * (step + 1),) for q in queries})
        evaluator.evaluate(pol, now=clock.tick(5))
    assert writes == []
    assert store.slo_states() == first

    prom.answers[LATENCY.format(name="svc-003")] = (0.4,)  # one SLO breaches: one row written
    readings = evaluator.evaluate(pol, now=clock.tick(5))
    assert readings["svc-003"][0].status == "breach"
    assert len([w for w in writes if w.lstrip().upper().startswith(("UPDATE", "INSERT"))]) == 1
    stored = store.slo_states()[("svc-003", "latency")]
    assert (stored.status, stored.value, stored.breach_since) == ("breach", 0.4, clock.now)
    writes.clear()
    prom.answers[LATENCY.format(name="svc-003")] = (0.5,)  # still breaching, same clock: no write
    evaluator.evaluate(pol, now=clock.tick(5))
    assert writes == []


def test_healthy_since_of_every_service_is_one_transaction(tmp_path: Path) -> None:
    pol = many(100)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    prom = StubProm({LATENCY.format(name=name): (0.1,) for name in pol.services})
    statements = Statements(store)
    Evaluator(store, prom).evaluate(pol, now=Clock()())  # type: ignore[arg-type]
    assert statements.count <= 8  # not one transaction per service
    assert len([s for s in store.healthy_since_all().values() if s is not None]) == 100


@pytest.mark.parametrize("point_reads", [gate_module.ALIAS_POINT_READS])
def test_few_due_models_are_read_one_by_one(point_reads: int, tmp_path: Path, mlflow_client: MlflowClient,
                                            unique_model: str) -> None:
    pol = many(2, model=f"{unique_model}-{{name}}")
    assert point_reads >= len(pol.services)
    clock = Clock()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.put_healthy_since({name: clock.now for name in pol.services})
    clock.tick(11)
    registry = Calls(mlflow_client)
    decisions = Gate(store, ModelRegistry(registry), clock=clock).consider_all(pol.services.values())
    assert {d.reason for _, d in decisions} == {"no @candidate version"}  # models that do not exist yet
    assert registry.calls == Counter({"get_registered_model": 2})


def test_status_of_a_large_policy_lists_only_the_services_that_need_attention(tmp_path: Path,
                                                                              mlflow_client: MlflowClient) -> None:
    """`/rollback status` over 200 services: the open incident and the freeze, with a count of the quiet ones, in a
    few reads (not two registry reads and two store reads per service)."""
    from bot.incidents.oncall import OnCall

    pol = many(200)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.freeze(service="svc-010", reason="rollback incident #4", actor="rollback-bot")
    store.open_incident(service="svc-020", channel="C0SCALE", trigger="manual", detail={}, baseline={},
                        breach_started_at=None)
    registry = Calls(mlflow_client)
    oncall = OnCall(policy=pol, store=store, models=ModelRegistry(registry), check_approver=lambda *_: None,
                    say=lambda *_: None)
    statements = Statements(store)
    text = oncall.status(None).text
    assert text.startswith("*Rollback status* — 200 services watched: 1 with an open incident, 1 more frozen, "
                           "198 quiet")
    assert "*svc-010*" in text and "frozen since" in text and "*svc-020*" in text and "incident #" in text
    assert "svc-000" not in text and "`/rollback status <service>`" in text
    assert statements.count <= 4 and sum(registry.calls.values()) == 4  # the two listed services' aliases
    one = oncall.status("svc-000").text
    assert "*svc-000*" in one and "no open incident" in one


def test_help_and_unknown_service_answers_stay_short_with_many_services() -> None:
    from bot.slack import wording

    names = [f"svc-{i:04d}" for i in range(10_000)]
    near = wording.unknown_service("svc-00l2", names)
    assert near.startswith("Unknown service `svc-00l2`. Known services: 10,000 services; closest: `svc-")
    assert len(near) < 500
    listed = wording.known_services(names)
    assert listed.startswith("10,000 services; first: `svc-0000`, `svc-0001`") and len(listed) < 400
    assert wording.known_services(names[:3]) == "`svc-0000`, `svc-0001`, `svc-0002`"
