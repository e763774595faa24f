"""SLO evaluation with a stub Prometheus: judging values, no data, errors, and how long breaches hold."""

from __future__ import annotations

import math
from pathlib import Path

from bot.infra.prom import Prometheus, QueryResult, _values
from bot.infra.store import Store
from bot.slo.evaluation import BREACH, ERROR, NODATA, OK, Evaluator, judge, read
from tests.stubs import AUC, LATENCY, Clock, StubProm, policy


def test_judge_above_and_below_thresholds() -> None:
    svc = policy().services["model-svc"]
    latency, auc = svc.slos
    assert judge(latency, QueryResult(LATENCY, (0.30,))) == (BREACH, 0.30)
    assert judge(latency, QueryResult(LATENCY, (0.20,))) == (OK, 0.20)
    assert judge(auc, QueryResult(AUC, (0.70,))) == (BREACH, 0.70)
    assert judge(auc, QueryResult(AUC, (0.90,))) == (OK, 0.90)


def test_several_series_judge_the_worst() -> None:
    latency, auc = policy().services["model-svc"].slos
    assert judge(latency, QueryResult(LATENCY, (0.1, 0.4, 0.2))) == (BREACH, 0.4)
    assert judge(auc, QueryResult(AUC, (0.9, 0.7))) == (BREACH, 0.7)


def test_empty_and_nan_results_are_no_data_never_breach() -> None:
    latency, _ = policy().services["model-svc"].slos
    assert judge(latency, QueryResult(LATENCY, ())) == (NODATA, None)
    # What prometheus-api-client returns for histogram_quantile over no traffic: NaN samples.
    assert _values([{"metric": {}, "value": [1, "NaN"]}]) == ()
    assert _values([{"metric": {}, "value": [1, "0.3"]}, {"metric": {}, "value": [1, "nan"]}]) == (0.3,)
    assert _values([1, "2.5"]) == (2.5,)  # a scalar result
    assert not any(math.isnan(v) for v in _values([{"value": [1, "NaN"]}]))


def test_a_failing_query_is_an_error_for_that_slo_only() -> None:
    prom = StubProm({LATENCY: "bad_data: parse error", AUC: (0.9,)})
    readings = read(prom, policy().services.values())["model-svc"]  # type: ignore[arg-type]
    assert [(r.slo, r.status) for r in readings] == [("p95-latency", ERROR), ("auc", OK)]
    assert readings[0].error == "bad_data: parse error"


def test_identical_queries_are_sent_once_per_cycle() -> None:
    prom = StubProm({LATENCY: (0.1,), AUC: (0.9,)})
    svc = policy().services["model-svc"]
    read(prom, [svc, svc])  # type: ignore[arg-type]
    assert sorted(prom.sent) == sorted([LATENCY, AUC])


def test_breach_is_sustained_only_after_for(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    prom = StubProm({LATENCY: (0.4,), AUC: (0.9,)})
    evaluator = Evaluator(store, prom)  # type: ignore[arg-type]
    pol = policy(for_="3s")
    first = evaluator.evaluate(pol, now=clock())["model-svc"][0]
    assert first.status == BREACH and not first.sustained and first.breach_since == clock.now
    started = clock.now
    clock.tick(2)
    assert not evaluator.evaluate(pol, now=clock())["model-svc"][0].sustained
    clock.tick(1)
    held = evaluator.evaluate(pol, now=clock())["model-svc"][0]
    assert held.sustained and held.breach_since == started


def test_no_data_neither_ends_nor_sustains_a_breach(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    prom = StubProm({LATENCY: (0.4,), AUC: (0.9,)})
    evaluator = Evaluator(store, prom)  # type: ignore[arg-type]
    pol = policy(for_="3s")
    evaluator.evaluate(pol, now=clock())
    started = clock.now
    prom.answers[LATENCY] = ()
    clock.tick(5)
    gap = evaluator.evaluate(pol, now=clock())["model-svc"][0]
    assert gap.status == NODATA and not gap.sustained
    assert store.healthy_since("model-svc") is None  # no data is not healthy either
    prom.answers[LATENCY] = (0.4,)
    clock.tick(1)
    back = evaluator.evaluate(pol, now=clock())["model-svc"][0]
    assert back.sustained and back.breach_since == started


def test_recovery_resets_the_breach_clock_and_starts_healthy_since(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    prom = StubProm({LATENCY: (0.4,), AUC: (0.9,)})
    evaluator = Evaluator(store, prom)  # type: ignore[arg-type]
    pol = policy()
    evaluator.evaluate(pol, now=clock())
    prom.answers[LATENCY] = (0.1,)
    clock.tick(1)
    ok = evaluator.evaluate(pol, now=clock())["model-svc"][0]
    assert ok.status == OK and ok.breach_since is None
    assert store.healthy_since("model-svc") == clock.now


def test_prometheus_down_is_an_error_result_not_an_exception() -> None:
    prom = Prometheus("http://127.0.0.1:9", timeout=0.5, retries=1)
    result = prom.query("up")
    assert result.error and "Connection" in result.error and result.values == ()


def test_a_cycle_that_starts_a_few_ms_early_still_sees_the_breach_held_for_for(tmp_path: Path) -> None:
    clock = Clock()
    evaluator = Evaluator(Store(f"sqlite:///{tmp_path / 'db.sqlite'}"), StubProm({LATENCY: (0.4,), AUC: (0.9,)}))  # type: ignore[arg-type]
    pol = policy(for_="3s")  # evaluate_every: 1s
    started = clock.now
    evaluator.evaluate(pol, now=clock())
    clock.tick(2.85)  # well short of `for`: not held yet
    assert not evaluator.evaluate(pol, now=clock())["model-svc"][0].sustained
    clock.tick(0.147)  # three cycles that each ran 1 ms early: 2.997 s
    held = evaluator.evaluate(pol, now=clock())["model-svc"][0]
    assert held.sustained and held.breach_since == started
