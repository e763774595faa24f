"""Automatic query grouping (bot.slo.grouping): queries written per service are grouped only when the rewrite is
provably the same, and a real Prometheus gives every service the same value grouped and alone.

The equivalence test queries Debian's Prometheus, scraping three simulated model services, at one fixed
evaluation time, so rates do not move between the grouped and the per-service queries.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import promql_parser as pp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.infra import metrics
from bot.infra.prom import Prometheus, QueryResult, Sample
from bot.infra.store import Store
from bot.slo import grouping
from bot.slo.evaluation import Evaluator, read
from bot.slo.policy_file import parse_policy
from sandbox.model_service import ModelServiceSimulator, VersionProfile
from sandbox.servers import PrometheusServer
from tests.stubs import StubProm

SERVICES = ("svc-a", "svc-b", "svc-c.1")

# The shapes the README teaches and the ones grouping supports, each written for one service ({s}).
SHAPES = [
    'histogram_quantile(0.95, sum by (le) (rate(model_request_latency_seconds_bucket{{service="{s}"}}[30s])))',
    'sum(rate(model_requests_total{{service="{s}",code="500"}}[30s])) / '
    'sum(rate(model_requests_total{{service="{s}"}}[30s]))',
    'model_auc{{service="{s}"}}',
    'min(model_auc{{service="{s}"}})',
    'max by (version) (rate(model_requests_total{{service="{s}"}}[30s]))',
    'sum without (code, instance, job) (increase(model_requests_total{{service="{s}"}}[1m]))',
    'avg_over_time(model_rmse{{service="{s}"}}[1m]) * 100',
    '1 - avg(model_rejection_rate{{service="{s}"}})',
    'count(model_serving_version{{service="{s}"}} == 1)',
    'sum(rate(model_requests_total{{service="{s}"}}[30s])) > bool 1',
    '(max(model_calibration_error{{service="{s}"}}))',
    'clamp_max(sum by (service) (rate(model_requests_total{{service="{s}",code="500"}}[30s])) / on (service) '
    'sum by (service, job) (rate(model_requests_total{{service="{s}"}}[30s])), 1)',
]


def per_service(shape: str) -> list[str]:
    return [shape.format(s=s) for s in SERVICES]


# -- what is grouped and what is not -------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_every_supported_shape_groups_into_one_query(shape: str) -> None:
    queries = per_service(shape)
    plan = grouping.plan(queries)
    assert plan.alone == {}, plan.alone
    assert len(plan.groups) == 1
    group = plan.groups[0]
    assert group.label == "service" and group.members == dict(zip(queries, SERVICES, strict=True))
    pp.parse(group.query)  # the rewrite is PromQL


@pytest.mark.parametrize(("query", "reason"), [
    ('topk(3, model_auc{service="%s"})', "aggregates with topk"),
    ('absent(model_auc{service="%s"})', "calls absent()"),
    ('sum(model_auc{service="%s"} offset 5m)', "uses offset or @"),
    ('sum(rate(model_requests_total{service="%s"}[1m])) / sum(rate(model_requests_total[1m]))',
     "no label is matched with = to one value in every selector"),
    ('model_auc{service="%s"} or model_rmse{service="%s"}', "uses the set operator or"),
    ('label_replace(model_auc{service="%s"}, "x", "$1", "service", "(.*)")', "calls label_replace()"),
    ('max_over_time(model_auc{service="%s"}[5m:1m])', "uses SubqueryExpr"),
    ('sum without (service) (model_auc{service="%s"})', "drops the label it is grouped by"),
    ('model_auc{service="%s"} / ignoring (version) model_serving_version{service="%s"}', "ignoring()"),
])
def test_shapes_grouping_cannot_prove_are_evaluated_alone_with_the_reason(query: str, reason: str) -> None:
    queries = [query.replace("%s", s) for s in SERVICES]
    plan = grouping.plan(queries)
    assert plan.groups == ()
    assert set(plan.alone) == set(queries)
    assert all(reason in why for why in plan.alone.values()), plan.alone


def test_a_shape_of_one_query_and_an_unparsable_one_go_alone_and_the_summary_says_so() -> None:
    queries = per_service(SHAPES[0]) + ['model_auc{service="solo"}', "sum(("]
    plan = grouping.plan(queries)
    assert len(plan.groups) == 1
    assert plan.alone['model_auc{service="solo"}'] == "no other query has its shape"
    assert plan.alone["sum(("].startswith("does not parse")
    summary = plan.summary(len(queries))
    assert summary.startswith("5 SLO queries in 3 queries per cycle (1 grouped, 1 of a shape of their own); "
                              "1 evaluated alone: `sum((`: does not parse")
    assert plan.for_query(queries[1]) == (plan.groups[0].query, "service", "svc-b")
    assert plan.for_query('model_auc{service="solo"}') is None


def test_different_fixed_matchers_are_different_shapes() -> None:
    queries = [f'sum(rate(model_requests_total{{service="{s}",code="{code}"}}[1m]))'
               for s in SERVICES for code in ("200", "500")]
    plan = grouping.plan(queries)
    assert len(plan.groups) == 2 and plan.alone == {}
    assert {g.query.count('code="500"') for g in plan.groups} == {0, 1}


# -- a generated corpus ---------------------------------------------------------------------------------------
_metric = st.sampled_from(["model_auc", "model_requests_total", "model_request_latency_seconds_bucket"])
_extra = st.sampled_from(["", ',code="500"', ',version!="2"', ',code=~"5.."'])


@st.composite
def expressions(draw: st.DrawFn) -> str:
    """An expression over one service written as `{s}`, built from the supported shapes."""
    metric, extra = draw(_metric), draw(_extra)
    selector = f'{metric}{{{{service="{{s}}"{extra}}}}}'
    expr = draw(st.sampled_from([selector, f"rate({selector}[1m])", f"avg_over_time({selector}[5m])"]))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["sum", "sum_by", "max", "num", "paren", "hq", "bool"]))
        if kind == "sum":
            expr = f"sum({expr})"
        elif kind == "sum_by":
            expr = f"sum by (le, version) ({expr})"
        elif kind == "max":
            expr = f"max without (instance) ({expr})"
        elif kind == "num":
            expr = f"{expr} * {draw(st.sampled_from(['2', '0.5', '1e3']))}"
        elif kind == "paren":
            expr = f"({expr})"
        elif kind == "hq":
            expr = f"histogram_quantile(0.9, {expr})"
        else:
            expr = f"{expr} > bool 0.25"
    return expr


@settings(max_examples=200, deadline=None)
@given(expressions())
def test_generated_expressions_group_into_parsable_queries_that_keep_the_label(shape: str) -> None:
    queries = per_service(shape)
    plan = grouping.plan(queries)
    assert plan.alone == {} and len(plan.groups) == 1, plan.alone
    grouped = plan.groups[0].query
    pp.parse(grouped)
    # The printer is faithful: printing without grouping parses back to the same AST.
    for query in queries:
        assert str(pp.parse(grouping.render(query))) == str(pp.parse(query))
    # Every aggregation kept (or gained) the service label, and no selector names one service any more.
    for service in SERVICES:
        assert f'service="{service}"' not in grouped
    assert grouped.count("sum(") == 0 and grouped.count("max(") == 0


# -- against a real Prometheus ---------------------------------------------------------------------------------
PROFILES = {"svc-a": VersionProfile(latency_seconds=0.05, auc=0.91, error_rate=0.01),
            "svc-b": VersionProfile(latency_seconds=0.3, auc=0.72, error_rate=0.2),
            "svc-c.1": VersionProfile(latency_seconds=0.12, auc=0.85, error_rate=0.05)}


@pytest.fixture(scope="module")
def prom_url(prometheus_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    sims = [ModelServiceSimulator(s, champion=lambda: "1", profiles={}, default=PROFILES[s], rps=40) for s in SERVICES]
    for sim in sims:
        sim.__enter__()
    try:
        with PrometheusServer(tmp_path_factory.mktemp("prom"), targets=[s.target for s in sims],
                              binary=prometheus_bin) as prom:
            for s in SERVICES:
                prom.wait_for_series(f'rate(model_requests_total{{service="{s}",code="500"}}[30s]) > 0', timeout=60)
            yield prom.url
    finally:
        for sim in sims:
            sim.__exit__(None, None, None)


def _query(url: str, query: str, at: float) -> list[tuple[dict[str, str], float]]:
    params = urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=10) as response:
        data = json.load(response)
    assert data["status"] == "success", data
    return [(r["metric"], float(r["value"][1])) for r in data["data"]["result"]]


def _values(rows: list[tuple[dict[str, str], float]]) -> list[float]:
    return sorted(v for _, v in rows if not math.isnan(v))


@pytest.mark.parametrize("shape", SHAPES)
def test_grouped_and_alone_give_every_service_the_same_values(prom_url: str, shape: str) -> None:
    queries = per_service(shape)
    group = grouping.plan(queries).groups[0]
    deadline = time.monotonic() + 60
    while True:  # a fresh Prometheus needs a few scrapes before every rate and quantile has a value
        at = time.time() - 1
        alone = {query: _values(_query(prom_url, query, at)) for query in queries}
        if all(alone.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    grouped = _query(prom_url, group.query, at)
    for query, service in group.members.items():
        mine = _values([(labels, v) for labels, v in grouped if labels.get("service") == service])
        assert alone[query], f"{query} has no data: the comparison would prove nothing"
        assert mine == pytest.approx(alone[query], rel=1e-9, abs=1e-12), (query, group.query)


def test_a_group_of_10000_services_is_one_posted_query_read_at_one_instant(prom_url: str) -> None:
    """Through the bot's own client (bot.infra.prom): a grouped query naming 10,000 services (about 110 KB of regex)
    is POSTed and answers for the three that exist, each as it reads alone at the same instant."""
    shape = 'sum(rate(model_requests_total{service="$s"}[30s]))'
    queries = [shape.replace("$s", s) for s in SERVICES] + [shape.replace("$s", f"svc-{i:05d}") for i in range(9997)]
    group = grouping.plan(queries).groups[0]
    assert len(group.members) == 10_000 and len(group.query) > 100_000
    prom = Prometheus(prom_url, timeout=30)
    at = time.time() - 1
    results = prom.query_many([group.query, *queries[:3]], at=at)
    by_service = results[group.query].by_label("service")
    assert sorted(by_service) == sorted(SERVICES)
    for query, service in zip(queries[:3], SERVICES, strict=True):
        assert by_service[service] == pytest.approx(results[query].values, rel=1e-9), service
    assert prom.queries_sent == 4
    prom.close()


# -- in the evaluation -----------------------------------------------------------------------------------------
def _per_service_policy(services: list[str]) -> str:
    blocks = "".join(f"""  {name}:
    channel: C0MODELSVC
    approvers: [U0APPROVER]
    model: recommender
    slos:
      - {{name: p95, query: 'histogram_quantile(0.95, sum by (le) (rate(lat_bucket{{service="{name}"}}[1m])))',
          above: 0.25}}
      - {{name: auc, query: 'min(model_auc{{service="{name}"}})', below: 0.8}}
    rollback:
      - mlflow_alias: {{model: recommender}}
""" for name in services)
    return "services:\n" + blocks


def test_read_sends_one_query_per_shape_and_every_service_reads_what_it_would_alone() -> None:
    names = [f"svc-{i:04d}" for i in range(50)]
    policy = parse_policy(_per_service_policy(names))
    answers: dict[str, tuple[float, ...] | str] = {}
    for i, name in enumerate(names):
        answers[f'histogram_quantile(0.95, sum by (le) (rate(lat_bucket{{service="{name}"}}[1m])))'] = (0.01 * i,)
        answers[f'min(model_auc{{service="{name}"}})'] = (0.95 - 0.004 * i,) if i != 7 else ()
    grouped_prom, alone_prom = StubProm(answers), StubProm(answers)
    grouped = read(grouped_prom, policy.services.values())  # type: ignore[arg-type]
    alone = read(alone_prom, policy.services.values(), group=False)  # type: ignore[arg-type]
    assert len(grouped_prom.sent) == 2 and len(alone_prom.sent) == 100
    assert grouped == alone
    assert grouped["svc-0040"][0].status == "breach" and grouped["svc-0007"][1].status == "nodata"


class LyingProm(StubProm):
    """Answers one grouped query wrongly for one service: what the run-time check is there to catch."""

    def query_many(self, queries: Iterable[str], at: float | None = None) -> dict[str, QueryResult]:
        out = super().query_many(queries)
        for query, result in out.items():
            if "=~" in query:
                samples = tuple(Sample(s.labels, s.value + (1.0 if s.labels.get("service") == "svc-0002" else 0.0))
                                for s in result.samples)
                out[query] = QueryResult(query, tuple(s.value for s in samples), samples=samples)
        return out


def test_a_sampled_member_that_reads_differently_alone_turns_its_group_off(tmp_path: Path) -> None:
    names = [f"svc-{i:04d}" for i in range(4)]
    policy = parse_policy(_per_service_policy(names))
    answers: dict[str, tuple[float, ...] | str] = {}
    for name in names:
        answers[f'histogram_quantile(0.95, sum by (le) (rate(lat_bucket{{service="{name}"}}[1m])))'] = (0.1,)
        answers[f'min(model_auc{{service="{name}"}})'] = (0.9,)
    prom = LyingProm(answers)
    evaluator = Evaluator(Store(f"sqlite:///{tmp_path / 'bot.db'}"), prom)  # type: ignore[arg-type]
    before = metrics.GROUPING_MISMATCHES._value.get()
    for _ in range(len(names)):  # every member gets its turn; svc-0002's turn finds the lie
        evaluator.evaluate(policy)
    assert metrics.GROUPING_MISMATCHES._value.get() == before + 2  # both groups lie about svc-0002
    assert len(evaluator.grouper.disabled) == 2
    prom.sent.clear()
    readings = evaluator.evaluate(policy)
    assert len(prom.sent) == 8 and not any("=~" in q for q in prom.sent), "the groups now go query by query"
    assert {r.value for rs in readings.values() for r in rs} == {0.1, 0.9}
    plan = evaluator.grouper.plan(policy.services.values())
    assert plan.groups == () and set(plan.alone.values()) == {"grouping turned off after a mismatch"}
