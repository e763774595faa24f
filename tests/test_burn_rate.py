"""Burn-rate SLOs: the policy form, the multi-window verdict (bot.slo.burn) with canned query results, the hook in
bot.slo.evaluation, and a real Prometheus scraping the simulated model service through healthy, burst, recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.infra.prom import Prometheus, QueryResult
from bot.infra.store import Store
from bot.slo import burn
from bot.slo.evaluation import BREACH, ERROR, NODATA, OK, Evaluator, read
from bot.slo.policy import BurnRate, BurnWindow
from bot.slo.policy_file import PolicyError, parse_policy
from sandbox.model_service import ModelServiceSimulator, VersionProfile
from sandbox.servers import PrometheusServer
from tests.story_env import wait_until
from tests.stubs import Clock, StubProm

ERRORS = 'model_requests_total{service="model-svc",code="500"}'
TOTAL = 'model_requests_total{service="model-svc"}'
WORKBOOK = BurnRate(errors=ERRORS, total=TOTAL, objective=0.999)  # default pairs: 14.4x 1h & 5m, 6x 6h & 30m


def policy_text(burn_rate: str, extra: str = "") -> str:
    return f"""\
evaluate_every: 1s
services:
  model-svc:
    channel: C0MODELSVC
    approvers: [U0APPROVER]
    model: recommender
    slos:
      - name: availability
        burn_rate: {burn_rate}
{extra}    rollback:
      - mlflow_alias: {{model: recommender}}
"""


def answers(burn_rate: BurnRate, ratios: dict[float, float | None | str]) -> dict[str, QueryResult]:
    """Query results as Prometheus.query_many returns them: an error ratio per window (None = no traffic,
    a string = the query failed)."""
    out = {}
    for seconds, ratio in ratios.items():
        query = burn.ratio_query(burn_rate, seconds)
        if isinstance(ratio, str):
            out[query] = QueryResult(query, error=ratio)
        else:
            out[query] = QueryResult(query, () if ratio is None else (ratio,))
    return out


# -- policy -----------------------------------------------------------------------------------------------
def test_burn_rate_slo_defaults_to_the_workbook_pairs_and_no_for() -> None:
    text = policy_text(f"{{errors: '{ERRORS}', total: '{TOTAL}', objective: 0.999}}")
    slo = parse_policy(text).services["model-svc"].slos[0]
    assert slo.burn_rate == WORKBOOK and slo.query is None and slo.for_ == 0.0
    assert [(w.long, w.short, w.factor) for w in slo.burn_rate.windows] == [(3600, 300, 14.4), (21600, 1800, 6)]
    assert slo.target_text() == "burn < 14.4x (1h & 5m), burn < 6x (6h & 30m)"


def test_windows_can_be_overridden() -> None:
    text = policy_text(f"{{errors: '{ERRORS}', total: '{TOTAL}', objective: 0.99, "
                       "windows: [{long: 20s, short: 5s, factor: 14.4}]}")
    (window,) = parse_policy(text).services["model-svc"].slos[0].burn_rate.windows  # type: ignore[union-attr]
    assert window == BurnWindow(long=20, short=5, factor=14.4)


@pytest.mark.parametrize(
    ("burn_rate", "extra", "expected"),
    [
        pytest.param(f"{{errors: '{ERRORS}', total: '{TOTAL}', objective: 0.999}}", "        query: up\n",
                     "policy.yaml:10: services.model-svc.slos[0].query: an SLO has either 'burn_rate:' or 'query:' "
                     "with 'above:'/'below:', not both; drop 'query:' or 'burn_rate:'", id="burn-rate-and-query"),
        pytest.param(f"{{errors: '{ERRORS}', total: '{TOTAL}', objective: 0.999}}", "        above: 3\n",
                     "policy.yaml:10: services.model-svc.slos[0].above: an SLO has either 'burn_rate:'",
                     id="burn-rate-and-threshold"),
        pytest.param(f"{{errors: '{ERRORS}', total: '{TOTAL}', objective: 99.9}}", "",
                     "policy.yaml:9: services.model-svc.slos[0].burn_rate.objective: objective is the share of "
                     "good events, strictly between 0 and 1 (e.g. 0.999); got 99.9", id="objective-percent"),
        pytest.param(f"{{errors: '{ERRORS}', total: '{TOTAL}', objective: 1}}", "",
                     "policy.yaml:9: services.model-svc.slos[0].burn_rate.objective: objective is the share",
                     id="objective-one"),
        pytest.param(f"{{errors: 'rate({ERRORS}[5m])', total: '{TOTAL}', objective: 0.99}}", "",
                     "policy.yaml:9: services.model-svc.slos[0].burn_rate.errors: expected a counter selector",
                     id="errors-not-a-selector"),
        pytest.param(f"{{errors: '{ERRORS}', total: '{TOTAL}', objective: 0.99, "
                     "windows: [{long: 5s, short: 20s, factor: 14.4}]}", "",
                     "policy.yaml:9: services.model-svc.slos[0].burn_rate.windows[0]: short (20s) must be shorter "
                     "than long (5s)", id="short-longer-than-long"),
        pytest.param(f"{{errors: '{ERRORS}', objective: 0.99}}", "",
                     "policy.yaml:9: services.model-svc.slos[0].burn_rate.total: required field is missing",
                     id="no-total"),
    ],
)
def test_bad_burn_rate_slos_are_clear_line_numbered_errors(burn_rate: str, extra: str, expected: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(policy_text(burn_rate, extra), "policy.yaml")
    assert any(line.startswith(expected) for line in str(caught.value).splitlines()), str(caught.value)


def test_an_slo_without_query_or_burn_rate_says_what_is_missing() -> None:
    text = policy_text("x").replace("        burn_rate: x\n", "        for: 1m\n")
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    assert str(caught.value) == ("policy.yaml:8: services.model-svc.slos[0]: set 'query:' with 'above:' or 'below:', "
                                 "or 'burn_rate: {errors, total, objective}'")


# -- queries ----------------------------------------------------------------------------------------------
def test_one_error_ratio_query_per_distinct_window() -> None:
    assert burn.ratio_query(WORKBOOK, 3600) == (
        f"(sum(rate({ERRORS}[1h])) or vector(0)) / sum(rate({TOTAL}[1h]))")
    shared = BurnRate(errors=ERRORS, total=TOTAL, objective=0.99,
                      windows=(BurnWindow(long=3600, short=300, factor=14.4),
                               BurnWindow(long=21600, short=3600, factor=6)))
    assert [q.split("[")[1].split("]")[0] for q in burn.queries(shared)] == ["1h", "5m", "6h"]
    assert [burn.promql_duration(s) for s in (20, 90, 0.5, 5400, 86400)] == ["20s", "1m30s", "500ms", "1h30m", "1d"]


# -- judging ----------------------------------------------------------------------------------------------
def test_both_windows_of_a_pair_must_burn() -> None:
    # budget 0.001: 14.4x = ratio 0.0144, 6x = 0.006
    short_only = burn.judge(WORKBOOK, answers(WORKBOOK, {3600: 0.002, 300: 0.05, 21600: 0.001, 1800: 0.002}))
    assert short_only.status == OK
    long_only = burn.judge(WORKBOOK, answers(WORKBOOK, {3600: 0.02, 300: 0.001, 21600: 0.001, 1800: 0.001}))
    assert long_only.status == OK  # the burn is over: the short window has cooled down
    both = burn.judge(WORKBOOK, answers(WORKBOOK, {3600: 0.0149, 300: 0.021, 21600: 0.002, 1800: 0.004}))
    assert both.status == BREACH
    assert both.value == pytest.approx(14.9)  # the rate both windows sustain: the smaller one
    assert both.text == "14.9x over 1h / 21x over 5m"
    assert both.target == "burn < 14.4x (1h & 5m)"


def test_one_burning_pair_is_enough() -> None:
    slow = burn.judge(WORKBOOK, answers(WORKBOOK, {3600: 0.01, 300: 0.002, 21600: 0.008, 1800: 0.009}))
    assert slow.status == BREACH and slow.value == pytest.approx(8.0)
    assert slow.text == "8x over 6h / 9x over 30m" and slow.target == "burn < 6x (6h & 30m)"


def test_healthy_reading_shows_the_pair_closest_to_its_factor() -> None:
    calm = burn.judge(WORKBOOK, answers(WORKBOOK, {3600: 0.001, 300: 0.0005, 21600: 0.003, 1800: 0.004}))
    assert calm.status == OK and calm.value == pytest.approx(3.0)
    assert calm.text == "3x over 6h / 4x over 30m" and calm.target == "burn < 6x (6h & 30m)"


def test_no_traffic_is_no_data_not_a_breach() -> None:
    silent = burn.judge(WORKBOOK, answers(WORKBOOK, {3600: None, 300: None, 21600: None, 1800: None}))
    assert (silent.status, silent.value) == (NODATA, None)
    assert silent.text == "no data over 1h / no data over 5m"
    quiet_now = burn.judge(WORKBOOK, answers(WORKBOOK, {3600: 0.001, 300: None, 21600: 0.001, 1800: 0.001}))
    assert quiet_now.status == NODATA  # "ok" needs every window read


def test_a_failed_query_is_an_error_unless_another_pair_already_breaches() -> None:
    failed = burn.judge(WORKBOOK, answers(WORKBOOK, {3600: "bad_data: x", 300: 0.0, 21600: 0.0, 1800: 0.0}))
    assert failed.status == ERROR and failed.error == "1h: bad_data: x"
    breach = burn.judge(WORKBOOK, answers(WORKBOOK, {3600: "timeout", 300: 0.0, 21600: 0.05, 1800: 0.05}))
    assert breach.status == BREACH


# -- the evaluation hook ----------------------------------------------------------------------------------
def test_read_turns_a_burn_rate_slo_into_a_normal_reading(tmp_path: Path) -> None:
    text = policy_text(f"{{errors: '{ERRORS}', total: '{TOTAL}', objective: 0.999}}",
                       "      - {name: auc, query: auc_query, below: 0.8}\n")
    pol = parse_policy(text)
    canned = {r.query: r.values for r in answers(WORKBOOK, {3600: 0.02, 300: 0.03, 21600: 0.0, 1800: 0.0}).values()}
    prom = StubProm({**canned, "auc_query": (0.9,)})
    availability, auc = read(prom, pol.services.values())["model-svc"]  # type: ignore[arg-type]
    assert (availability.status, availability.target, availability.detail) == (
        BREACH, "burn < 14.4x (1h & 5m)", "20x over 1h / 30x over 5m")
    assert availability.value == pytest.approx(20.0)
    assert (auc.status, auc.detail) == (OK, None)
    assert sorted(prom.sent) == sorted([*burn.queries(WORKBOOK), "auc_query"])
    # for: defaults to 0, so the evaluator calls the first burning reading sustained, and keeps the detail
    clock = Clock()
    evaluator = Evaluator(Store(f"sqlite:///{tmp_path / 'db.sqlite'}"), prom)  # type: ignore[arg-type]
    tracked = evaluator.evaluate(pol, now=clock())["model-svc"][0]
    assert tracked.sustained and tracked.detail == "20x over 1h / 30x over 5m"


# -- against a real Prometheus ----------------------------------------------------------------------------
class Served:
    """The simulator's champion(): whichever version the test says is live."""

    def __init__(self, version: str) -> None:
        self.version = version

    def __call__(self) -> str:
        return self.version


def test_real_prometheus_healthy_burst_recovery(tmp_path: Path, prometheus_bin: str) -> None:
    # objective 0.99: budget 1%; 14.4x = 14.4% errors over 20s and 5s, 6x = 6% over 40s and 10s
    text = policy_text(f"{{errors: '{ERRORS}', total: '{TOTAL}', objective: 0.99, windows: ["
                       "{long: 20s, short: 5s, factor: 14.4}, {long: 40s, short: 10s, factor: 6}]}")
    svc = parse_policy(text).services["model-svc"]
    served = Served("1")
    simulator = ModelServiceSimulator(
        "model-svc", champion=served, rps=50,
        profiles={"1": VersionProfile(latency_seconds=0.05), "2": VersionProfile(latency_seconds=0.05, error_rate=0.5)},
        default=VersionProfile(latency_seconds=0.05),
    )
    with (
        simulator,
        PrometheusServer(tmp_path / "prom", [simulator.target], "1s", binary=prometheus_bin) as prometheus,
    ):
        prom = Prometheus(prometheus.url)
        try:
            def reading(status: str) -> object:
                current = read(prom, [svc])["model-svc"][0]
                return current if current.status == status else None

            healthy = wait_until(lambda: reading(OK), 40, "a healthy burn-rate reading", interval=0.5)
            assert (healthy.value, healthy.detail) == (0.0, "0x over 20s / 0x over 5s")

            served.version = "2"  # half the requests fail: 50x the budget
            burning = wait_until(lambda: reading(BREACH), 30, "the error burst to breach", interval=0.5)
            assert burning.value > 6
            assert burning.target in ("burn < 14.4x (20s & 5s)", "burn < 6x (40s & 10s)")
            assert " over 20s / " in burning.detail or " over 40s / " in burning.detail

            served.version = "1"
            recovered = wait_until(lambda: reading(OK), 60, "recovery to ok", interval=0.5)
            assert recovered.value is not None and recovered.value <= 14.4
        finally:
            prom.close()
