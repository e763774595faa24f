"""Relative SLOs in units: percent parsing and policy errors with file:line, judging against a baseline, which
recorded baseline judges which version, a recorded baseline surviving a restart, and the no-data cases (no baseline
yet holds neither the promotion gate nor verification)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.infra.prom import QueryResult, RangeResult, Sample, Series
from bot.infra.store import NewBaseline, RecordedBaseline, Store
from bot.slack.blocks import value_text
from bot.slo import rules
from bot.slo.baselines import Baselines, pick
from bot.slo.evaluation import BREACH, NODATA, OK, Evaluator, read
from bot.slo.percent import format_change, format_percent, parse_percent
from bot.slo.policy import Policy, Slo
from bot.slo.policy_file import PolicyError, parse_policy
from tests.stubs import StubProm

QUERY = 'min(model_auc{service="model-svc"})'
LIVE = 'model_quality_auc{service="model-svc"}'


def policy_text(slos: str, promote: str = "    promote: {healthy_for: 10s}") -> str:
    return f"""evaluate_every: 1s
services:
  model-svc:
    channel: C0MODELSVC
    approvers: [U0APPROVER]
    model: recommender
    slos:
{slos}
    rollback:
      - mlflow_alias: {{model: recommender}}
{promote}
"""


RELATIVE = f"""      - name: auc-drop
        kind: quality
        query: '{QUERY}'
        below_baseline: 3%
        min_delta: 0.005
      - name: auc-live
        query: '{LIVE}'
        below_baseline: 3%
        baseline: {{label: model_version}}"""


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    return [str(p) for p in caught.value.problems]


# -- percent -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "share"), [("3%", 0.03), ("0.5%", 0.005), (" 10 % ", 0.1), ("150%", 1.5),
                                             (".25%", 0.0025)])
def test_parse_percent(text: str, share: float) -> None:
    assert parse_percent(text) == pytest.approx(share)


@pytest.mark.parametrize(("text", "words"), [(3, "percent sign, e.g. '3%' (got 3: 3% or 300%?)"),
                                             (0.03, "(got 0.03: 3% or 300%?)"), ("three", "got 'three'"),
                                             ("0%", "above 0%"), ("-3%", "got '-3%'"), (True, "got True")])
def test_parse_percent_refuses(text: object, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_percent(text)
    assert words in str(caught.value)


def test_format_change_and_percent() -> None:
    assert [format_change(c) for c in (-0.035, 0.1, 0.0, -0.0025)] == ["−3.5%", "+10%", "±0%", "−0.25%"]
    assert format_percent(0.95) == "95%"


# -- policy --------------------------------------------------------------------------------------------------
def test_relative_slos_parse_with_their_words() -> None:
    svc = parse_policy(policy_text(RELATIVE)).services["model-svc"]
    drop, live = svc.slos
    assert (drop.below_baseline, drop.min_delta, drop.baseline, drop.live_label) == (0.03, 0.005, None, None)
    assert live.live_label == "model_version" and live.higher_is_better
    assert drop.target_text() == "allowed −3% vs the baseline recorded at each promotion (breach only beyond 0.005)"
    assert live.target_text() == "allowed −3% vs the previous champion's series (by model_version)"
    latency = Slo.model_validate({"name": "p95", "query": "x", "above_baseline": "10%"})
    assert (latency.higher_is_better, latency.target_text()) == (False, "allowed +10% vs the baseline recorded at "
                                                                        "each promotion")


@pytest.mark.parametrize(("old", "new", "expected"), [
    pytest.param("below_baseline: 3%\n        min", "below_baseline: 3\n        min",
                 "policy.yaml:11: services.model-svc.slos[0].below_baseline: write the allowed change with a percent "
                 "sign, e.g. '3%' (got 3: 3% or 300%?)", id="bare-number"),
    pytest.param("below_baseline: 3%\n        min", "below_baseline: 100%\n        min",
                 "policy.yaml:11: services.model-svc.slos[0].below_baseline: 100% below the baseline is below zero",
                 id="all-of-it"),
    pytest.param("below_baseline: 3%\n        min", "below_baseline: 3%\n        below: 0.8\n        min",
                 "policy.yaml:8: services.model-svc.slos[0]: set exactly one of 'above:' (breach while value > above) "
                 "or 'below:' (breach while value < below); got 'below:' and 'below_baseline:'", id="both-kinds"),
    pytest.param("below_baseline: 3%\n        min", "below: 0.8\n        min",
                 "policy.yaml:12: services.model-svc.slos[0].min_delta: 'min_delta:' is for a threshold relative to "
                 "a baseline", id="min-delta-on-absolute"),
    pytest.param("min_delta: 0.005", "min_delta: -1",
                 "policy.yaml:12: services.model-svc.slos[0].min_delta: input should be greater than or equal to 0",
                 id="negative-floor"),
    pytest.param("baseline: {label: model_version}", "baseline: {label: 'model version'}",
                 "policy.yaml:16: services.model-svc.slos[1].baseline.label: expected a Prometheus label name",
                 id="bad-label"),
    pytest.param("baseline: {label: model_version}", "baseline: previous",
                 "policy.yaml:16: services.model-svc.slos[1].baseline: expected 'recorded' (the default) or "
                 "{label: <the label naming the version>}; got 'previous'", id="bad-baseline"),
    pytest.param("{healthy_for: 10s}", "{healthy_for: 10s, compare: {slos: [auc-dorp]}}",
                 "policy.yaml:19: services.model-svc.promote.compare.slos[0]: no SLO named 'auc-dorp'; this service's "
                 "SLOs: auc-drop, auc-live", id="unknown-compared-slo"),
    pytest.param("{healthy_for: 10s}", "{healthy_for: 10s, compare: {slos: [auc-drop], confidence: 95}}",
                 "policy.yaml:19: services.model-svc.promote.compare.confidence: input should be less than 1",
                 id="confidence-as-percent"),
    pytest.param("{healthy_for: 10s}", "{healthy_for: 10s, compare: {slos: [auc-drop], min_sample: 10}}",
                 "policy.yaml:19: services.model-svc.promote.compare.min_sample: unknown field (did you mean "
                 "'min_samples'?)", id="typo-in-compare"),
])
def test_bad_relative_policy_names_line_and_field(old: str, new: str, expected: str) -> None:
    text = policy_text(RELATIVE)
    assert old in text
    found = problems(text.replace(old, new, 1))
    assert any(line.startswith(expected) for line in found), "\n".join(found)


def test_baseline_on_an_absolute_slo_and_a_live_one_with_by_are_refused() -> None:
    found = problems(policy_text("      - {name: auc, query: 'x', below: 0.8, baseline: {label: v}}\n"
                                 "      - {name: live, query: 'y', below_baseline: 3%, baseline: {label: v}, by: s}"))
    assert any("slos[0].baseline: 'baseline:' is for a threshold relative to a baseline" in p for p in found), found
    assert any("slos[1].by: a live baseline reads every version's series" in p for p in found), found


# -- judging -------------------------------------------------------------------------------------------------
def test_breached_against_the_allowed_share_and_the_floor() -> None:
    auc = Slo.model_validate({"name": "auc", "query": "q", "below_baseline": "3%"})
    assert auc.breached_against(0.8299, 0.86) and not auc.breached_against(0.8514, 0.86)
    assert not auc.breached_against(0.95, 0.86)  # better is never a breach
    floored = Slo.model_validate({"name": "auc", "query": "q", "below_baseline": "3%", "min_delta": 0.005})
    assert not floored.breached_against(0.096, 0.1)  # 4% worse, but only 0.004
    assert floored.breached_against(0.8299, 0.86)
    latency = Slo.model_validate({"name": "p95", "query": "q", "above_baseline": "10%"})
    assert latency.breached_against(0.23, 0.2) and not latency.breached_against(0.21, 0.2)
    assert not latency.breached_against(float("nan"), 0.2)


def record(id_: int, version: str, promoted: str, value: float) -> RecordedBaseline:
    return RecordedBaseline(id_, "model-svc", "auc-drop", version, promoted, value, 10, 600.0, 1_800_000_000.0 + id_)


def test_the_version_serving_is_judged_against_its_own_value_else_the_one_it_replaced() -> None:
    records = [record(1, "4", "5", 0.86), record(2, "5", "6", 0.88)]
    assert pick(records, "5") == records[1]  # restored after v6: its own value, recorded when v6 replaced it
    assert pick(records, "6") == records[1]  # v6 against v5, the version it replaced
    assert pick(records, "4") == records[0]
    assert pick(records, "7") is None
    assert pick([*records, record(3, "4", "7", 0.87)], "4").value == 0.87  # the newest of its own


class Aliases:
    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases

    def get(self, model: str, max_age: float | None = None) -> dict[str, str]:
        return self.aliases

    def prefetch(self, models: set[str]) -> None:
        pass

    def forget(self, model: str) -> None:
        pass


class RangeProm(StubProm):
    """A StubProm with one range answer: a series of points."""

    def __init__(self, answers: dict, points: list[float]) -> None:
        super().__init__(answers)
        self.points = points

    def query_range(self, query: str, start: float, end: float, step: float) -> RangeResult:
        return RangeResult(query, (Series({}, tuple((start + i * step, v) for i, v in enumerate(self.points))),))


def test_a_recorded_baseline_survives_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bot.db'}"
    policy = parse_policy(policy_text(RELATIVE))
    svc = policy.services["model-svc"]
    prom = RangeProm({}, [0.86, 0.85, 0.87, float("nan"), 0.86])
    recorded = Baselines(Store(url), Aliases({"champion": "5"}), prom).record(svc, outgoing="4", promoted="5",
                                                                               step=1.0, now=1_800_000_000.0)
    assert [(r.slo, r.version, r.promoted, r.value, r.samples, r.window_seconds) for r in recorded] == [
        ("auc-drop", "4", "5", 0.86, 4, 10.0)]  # the median of the numbers; the live SLO records nothing

    again = Baselines(Store(url), Aliases({"champion": "5"}), prom)  # a new process on the same database
    base = again.recorded(svc, svc.slos[0], "5")
    assert base is not None and (base.value, base.version) == (0.86, "4")
    assert base.source.startswith("recorded at the ") and base.source.endswith(" promotion")


def readings(policy: Policy, answers: dict, aliases: dict[str, str], store: Store) -> dict[str, object]:
    baselines = Baselines(store, Aliases(aliases), StubProm(answers))
    return {r.slo: r for r in read(StubProm(answers), policy.services.values(), baselines=baselines)["model-svc"]}


def live_result(values: dict[str, float]) -> QueryResult:
    samples = tuple(Sample({"service": "model-svc", "model_version": v}, x) for v, x in values.items())
    return QueryResult(LIVE, tuple(s.value for s in samples), samples=samples)


class LiveProm(StubProm):
    def __init__(self, answers: dict, live: dict[str, float]) -> None:
        super().__init__(answers)
        self.live = live

    def query_many(self, queries, at=None):  # type: ignore[no-untyped-def]
        out = super().query_many(queries, at)
        if LIVE in out:
            out[LIVE] = live_result(self.live)
        return out


def test_relative_readings_breach_say_both_numbers_and_no_baseline_is_no_data(tmp_path: Path) -> None:
    policy = parse_policy(policy_text(RELATIVE))
    svc = policy.services["model-svc"]
    store = Store(f"sqlite:///{tmp_path / 'bot.db'}")

    def read_now(auc: float, live: dict[str, float], aliases: dict[str, str]) -> dict:
        prom = LiveProm({QUERY: (auc,)}, live)
        baselines = Baselines(store, Aliases(aliases), prom)
        return {r.slo: r for r in read(prom, [svc], baselines=baselines)["model-svc"]}

    # Never promoted by the bot, no previous version's series: no data that holds nothing back.
    first = read_now(0.83, {"5": 0.83}, {"champion": "5"})
    for name, why in (("auc-drop", "no baseline yet for v5: the next promotion by the bot records one"),
                      ("auc-live", "no baseline yet: no @previous_champion version to compare with")):
        assert (first[name].status, first[name].no_baseline, first[name].within_target) == (NODATA, True, True)
        assert first[name].detail == why and value_text(first[name]) == why
    no_series = read_now(0.83, {"5": 0.83}, {"champion": "5", "previous_champion": "4"})["auc-live"]
    assert no_series.detail == 'no baseline yet: no series with model_version="4" (@previous_champion) now'

    store.record_baselines([NewBaseline("model-svc", "auc-drop", "4", "5", 0.86, 30, 600.0)])
    judged = read_now(0.8299, {"5": 0.8299, "4": 0.86}, {"champion": "5", "previous_champion": "4"})
    assert judged["auc-drop"].status == BREACH and judged["auc-live"].status == BREACH
    assert judged["auc-drop"].detail.startswith("0.8299 on v5 vs baseline 0.86 (v4, recorded at the ")
    assert judged["auc-drop"].detail.endswith(" promotion): −3.5%, allowed −3% and 0.005")
    assert judged["auc-live"].detail == "0.8299 on v5 vs baseline 0.86 (v4, its series now): −3.5%, allowed −3%"

    fine = read_now(0.8514, {"5": 0.8514, "4": 0.86}, {"champion": "5", "previous_champion": "4"})
    assert fine["auc-drop"].status == fine["auc-live"].status == OK

    # The champion's own series missing is ordinary no data: that does hold.
    gone = read_now(float("nan"), {"4": 0.86}, {"champion": "5", "previous_champion": "4"})
    assert (gone["auc-live"].status, gone["auc-live"].no_baseline, gone["auc-live"].within_target) == (
        NODATA, False, False)


def test_no_baseline_does_not_reset_healthy_for(tmp_path: Path) -> None:
    """The first promotion records the baseline: an SLO waiting for it must not keep the service unhealthy."""
    policy = parse_policy(policy_text(RELATIVE))
    store = Store(f"sqlite:///{tmp_path / 'bot.db'}")
    prom = LiveProm({QUERY: (0.83,)}, {"5": 0.83})
    evaluator = Evaluator(store, prom, baselines=Baselines(store, Aliases({"champion": "5"}), prom))
    evaluator.evaluate(policy, now=1000.0)
    evaluator.evaluate(policy, now=1001.0)
    assert store.healthy_since("model-svc") == 1000.0
    without = Evaluator(store, prom)  # no baselines at all: the same
    without.evaluate(policy, now=1002.0)
    assert store.healthy_since("model-svc") == 1000.0


def test_relative_slos_get_no_prometheus_rule() -> None:
    policy = parse_policy(policy_text(RELATIVE + f"\n      - {{name: auc, query: '{QUERY}', below: 0.8}}"))
    assert [r["labels"]["slo"] for r in rules.service_rules(policy.services["model-svc"])] == ["auc"]


def test_readiness_reports_each_relative_slos_baseline(tmp_path: Path) -> None:
    """No baseline yet is "unknown" (holds nothing back); recorded, about to be recorded, or a live series is ok."""
    from bot.incidents.readiness import SLO_BASELINES, Readiness

    svc = parse_policy(policy_text(RELATIVE)).services["model-svc"]
    store = Store(f"sqlite:///{tmp_path / 'bot.db'}")
    prom = RangeProm({}, [0.86, 0.86])
    aliases = Aliases({"champion": "5", "previous_champion": "4"})
    readiness = Readiness(runner=None, prom=prom, approvers=None,  # type: ignore[arg-type]
                          baselines=Baselines(store, aliases, prom))
    before = readiness._slo_baselines(svc, None)
    assert (before.name, before.status) == (SLO_BASELINES, "unknown")
    assert before.detail == ("auc-drop: no baseline yet for v5: the next promotion by the bot records one; auc-live: "
                             'no baseline yet: no series with model_version="4" (@previous_champion) now')
    promoting = readiness._slo_baselines(svc, ("6", "5"))
    assert "auc-drop: recorded from v5 at this promotion" in promoting.detail

    store.record_baselines([NewBaseline("model-svc", "auc-drop", "4", "5", 0.86, 30, 600.0)])
    live = LiveProm({}, {"5": 0.85, "4": 0.86})
    readiness.prom = live
    readiness.baselines = Baselines(store, aliases, live)
    after = readiness._slo_baselines(svc, None)
    assert after.status == "ok", after.detail
    assert after.detail.startswith("auc-drop: 0.86 (v4, recorded at the ") and after.detail.endswith(
        "auc-live: v4's series")
