"""Grouped SLO evaluation (`by: <label>`): one query answers for many services, each service reads its own
series, a service without a series is "no data", and a bad `by` is a policy problem.

The grouped reads run against a real Prometheus scraping two simulated model services (one fast, one slow);
a third service in the policy has no series at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.infra.prom import Prometheus, QueryResult, Sample
from bot.infra.store import Store
from bot.slo.evaluation import BREACH, NODATA, OK, Evaluator, judge, read
from bot.slo.policy import Policy
from bot.slo.policy_file import PolicyError, parse_policy
from sandbox.model_service import ModelServiceSimulator, VersionProfile
from sandbox.servers import PrometheusServer

LATENCY = ("histogram_quantile(0.95, sum by (le, service) "
           "(rate(model_request_latency_seconds_bucket[5s])))")
AUC = "min by (service) (model_auc)"


def grouped_policy(services: list[str], *, by: str = "service", extra: str = "") -> str:
    """Every service shares the same two query texts through YAML anchors, as a policy file would."""
    blocks = []
    for index, name in enumerate(services):
        if index == 0:
            slos = (f"      - &latency {{name: p95-latency, query: '{LATENCY}', by: {by}, above: 0.25{extra}}}\n"
                    f"      - &auc {{name: auc, query: '{AUC}', by: {by}, below: 0.8}}\n")
        else:
            slos = "      - *latency\n      - *auc\n"
        blocks.append(f"""  {name}:
    channel: C0MODELSVC
    approvers: [U0APPROVER]
    model: recommender
    slos:
{slos}    rollback:
      - mlflow_alias: {{model: recommender}}
""")
    return "evaluate_every: 1s\nservices:\n" + "".join(blocks)


FAST = VersionProfile(latency_seconds=0.05, auc=0.9)
SLOW = VersionProfile(latency_seconds=0.45, auc=0.7)


@pytest.fixture(scope="module")
def prom_url(prometheus_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping svc-fast and svc-slow, with both services' latency series present."""
    with ModelServiceSimulator("svc-fast", champion=lambda: "1", profiles={}, default=FAST, rps=50) as fast, \
            ModelServiceSimulator("svc-slow", champion=lambda: "1", profiles={}, default=SLOW, rps=50) as slow, \
            PrometheusServer(tmp_path_factory.mktemp("prom"), targets=[fast.target, slow.target],
                             binary=prometheus_bin) as prom:
        for name in ("svc-fast", "svc-slow"):
            prom.wait_for_series(f'{LATENCY} and on (service) model_auc{{service="{name}"}}', timeout=40)
        yield prom.url


def test_grouped_slos_read_each_services_own_series(prom_url: str) -> None:
    policy = parse_policy(grouped_policy(["svc-fast", "svc-slow", "svc-gone"]))
    prom = Prometheus(prom_url, retries=0)
    readings = read(prom, policy.services.values())
    status = {(name, r.slo): r.status for name, rs in readings.items() for r in rs}
    assert status == {
        ("svc-fast", "p95-latency"): OK, ("svc-fast", "auc"): OK,
        ("svc-slow", "p95-latency"): BREACH, ("svc-slow", "auc"): BREACH,
        ("svc-gone", "p95-latency"): NODATA, ("svc-gone", "auc"): NODATA,
    }
    values = {(name, r.slo): r.value for name, rs in readings.items() for r in rs}
    assert values[("svc-fast", "auc")] == pytest.approx(0.9)
    assert values[("svc-slow", "auc")] == pytest.approx(0.7)
    assert values[("svc-fast", "p95-latency")] < 0.1 < 0.4 < values[("svc-slow", "p95-latency")]  # type: ignore[operator]


def test_one_query_per_shape_for_many_services(prom_url: str, tmp_path: Path) -> None:
    names = ["svc-fast", "svc-slow"] + [f"svc-{i:03d}" for i in range(40)]
    policy = parse_policy(grouped_policy(names))
    prom = Prometheus(prom_url, retries=0)
    out = Evaluator(Store(f"sqlite:///{tmp_path / 'db.sqlite'}"), prom).evaluate(policy)
    assert prom.queries_sent == 2  # 42 services x 2 SLOs, two query texts
    assert len(out) == 42 and out["svc-slow"][0].status == BREACH and out["svc-007"][0].status == NODATA


def test_match_picks_another_label_value(prom_url: str) -> None:
    text = grouped_policy(["alias"], extra=", match: svc-slow")
    policy = parse_policy(text)
    (latency, auc) = read(Prometheus(prom_url, retries=0), policy.services.values())["alias"]
    assert latency.status == BREACH and auc.status == NODATA  # `match` was set on the latency SLO only


def test_a_missing_series_is_no_data_and_ungrouped_slos_keep_the_worst_value() -> None:
    result = QueryResult("q", (0.1, 0.4), samples=(Sample({"service": "a"}, 0.1), Sample({"service": "b"}, 0.4)))
    policy: Policy = parse_policy(grouped_policy(["a", "b", "c"]))
    latency = policy.services["a"].slos[0]
    assert result.by_label("service") == {"a": (0.1,), "b": (0.4,)}
    assert judge(latency, result, result.by_label("service").get("c", ())) == (NODATA, None)
    assert judge(latency, result, result.by_label("service")["a"]) == (OK, 0.1)
    assert judge(latency, result) == (BREACH, 0.4)  # no `by`: the worst series of the whole result


def test_evaluator_writes_only_changed_slo_states(tmp_path: Path) -> None:
    class Fixed:
        def __init__(self) -> None:
            self.answer = QueryResult(LATENCY, (0.1,), samples=(Sample({"service": "a"}, 0.1),))

        def query_many(self, queries: object, at: float | None = None) -> dict[str, QueryResult]:
            auc = QueryResult(AUC, (0.9,), samples=(Sample({"service": "a"}, 0.9),))
            return {LATENCY: self.answer, AUC: auc}

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    prom = Fixed()
    evaluator = Evaluator(store, prom)  # type: ignore[arg-type]
    policy = parse_policy(grouped_policy(["a"]))
    evaluator.evaluate(policy, now=100.0)
    evaluator.evaluate(policy, now=101.0)
    assert {k: s.updated_at for k, s in store.slo_states().items()} == {("a", "p95-latency"): 100.0, ("a", "auc"): 100.0}
    prom.answer = QueryResult(LATENCY, (0.3,), samples=(Sample({"service": "a"}, 0.3),))
    evaluator.evaluate(policy, now=102.0)
    changed = store.slo_states()[("a", "p95-latency")]
    assert (changed.status, changed.value, changed.breach_since, changed.updated_at) == (BREACH, 0.3, 102.0, 102.0)
    assert store.slo_states()[("a", "auc")].updated_at == 100.0


@pytest.mark.parametrize(("by", "expected"), [
    ("service-name", "expected a Prometheus label name"),
    ("1service", "expected a Prometheus label name"),
    ("''", "expected a Prometheus label name"),
])
def test_a_bad_by_is_a_policy_problem(by: str, expected: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(grouped_policy(["a"], by=by), "policy.yaml")
    problems = str(caught.value).splitlines()
    assert any("services.a.slos[0].by" in p and expected in p for p in problems), problems


def test_match_without_by_is_a_policy_problem() -> None:
    text = grouped_policy(["a"]).replace("by: service, above: 0.25", "match: a, above: 0.25")
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    assert "services.a.slos[0].match: 'match:' needs 'by:'" in str(caught.value)
