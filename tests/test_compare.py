"""The candidate-vs-champion judgement (bot.slo.compare): judge() on hand-made samples, samples_by_version on a
hand-built RangeResult, and compare() against a fake Prometheus that answers one range query."""

from __future__ import annotations

import math
from typing import cast

import pytest
from scipy.stats import mannwhitneyu

from bot.infra.prom import Prometheus, RangeResult, Series
from bot.slo.compare import NO_VERDICT, NOT_WORSE, WORSE, Comparison, compare, judge, samples_by_version

# A champion AUC around 0.881 with a little spread, and deterministic variations on it.
CHAMPION = [0.881 + 0.001 * ((i * 7) % 11 - 5) for i in range(20)]
WORSE_AUC = [v - 0.038 for v in CHAMPION]  # around 0.843
BETTER_AUC = [v + 0.02 for v in CHAMPION]
SAME_AUC = list(reversed(CHAMPION))


def auc(candidate: list[float], champion: list[float] = CHAMPION, **kw: object) -> Comparison:
    return judge("auc-by-version", higher_is_better=True, candidate=candidate, champion=champion,
                 candidate_version="6", champion_version="5", **kw)  # type: ignore[arg-type]


def test_a_clearly_worse_candidate_is_worse_when_higher_is_better() -> None:
    result = auc(WORSE_AUC)
    expected = mannwhitneyu(WORSE_AUC, CHAMPION, alternative="less").pvalue
    assert result.verdict == WORSE
    assert result.p_value == pytest.approx(float(expected))
    assert result.p_value is not None and result.p_value < 1e-6
    assert (result.candidate_n, result.champion_n) == (20, 20)
    assert result.candidate_median == pytest.approx(0.843)
    assert result.champion_median == pytest.approx(0.881)
    assert (result.candidate, result.champion, result.confidence) == ("6", "5", 0.95)


def test_a_clearly_worse_candidate_is_worse_when_lower_is_better() -> None:
    champion = [0.100 + 0.002 * (i % 5) for i in range(15)]  # latency in seconds
    slower = [v * 1.5 for v in champion]
    result = judge("latency-p95", higher_is_better=False, candidate=slower, champion=champion,
                   candidate_version="7", champion_version="6")
    assert result.verdict == WORSE
    assert result.p_value == pytest.approx(float(mannwhitneyu(slower, champion, alternative="greater").pvalue))
    assert result.p_value is not None and result.p_value < 1e-4
    # The same faster candidate is not worse: the test is one-sided.
    faster = [v / 1.5 for v in champion]
    back = judge("latency-p95", higher_is_better=False, candidate=faster, champion=champion,
                 candidate_version="7", champion_version="6")
    assert back.verdict == NOT_WORSE
    assert back.p_value == pytest.approx(float(mannwhitneyu(faster, champion, alternative="greater").pvalue))
    assert back.p_value is not None and back.p_value > 0.999


def test_an_equal_candidate_is_not_worse() -> None:
    result = auc(SAME_AUC)
    assert result.verdict == NOT_WORSE
    assert result.p_value == pytest.approx(float(mannwhitneyu(SAME_AUC, CHAMPION, alternative="less").pvalue))
    assert result.p_value is not None and 0.4 < result.p_value < 0.6


def test_a_better_candidate_is_not_worse_with_p_near_one() -> None:
    result = auc(BETTER_AUC)
    assert result.verdict == NOT_WORSE
    assert result.p_value == pytest.approx(float(mannwhitneyu(BETTER_AUC, CHAMPION, alternative="less").pvalue))
    assert result.p_value is not None and result.p_value > 0.9999


def test_confidence_sets_the_threshold() -> None:
    candidate = [v - 0.0025 for v in CHAMPION]  # slightly worse: p between 0.01 and 0.05
    p = float(mannwhitneyu(candidate, CHAMPION, alternative="less").pvalue)
    assert 0.01 < p < 0.05
    assert auc(candidate, confidence=0.95).verdict == WORSE
    assert auc(candidate, confidence=0.99).verdict == NOT_WORSE


def test_too_few_samples_is_no_verdict_naming_counts_and_version() -> None:
    result = auc(WORSE_AUC[:4])
    assert result.verdict == NO_VERDICT
    assert result.p_value is None
    assert result.reason == "4 of 10 samples for v6"
    assert result.candidate_n == 4
    both = auc(WORSE_AUC[:4], CHAMPION[:3], min_samples=5)
    assert (both.verdict, both.reason) == (NO_VERDICT, "4 of 5 samples for v6; 3 of 5 samples for v5")
    assert auc([]).reason == "0 of 10 samples for v6"
    assert auc([]).candidate_median is None


def test_all_tied_constant_series_are_not_worse_without_a_warning() -> None:
    # pytest runs with -W error: any RuntimeWarning from scipy or numpy would fail this test.
    result = auc([0.9] * 20, [0.9] * 20)
    assert (result.verdict, result.p_value) == (NOT_WORSE, 1.0)
    assert result.candidate_median == result.champion_median == 0.9
    # Constant but different: there is something to rank, and scipy answers.
    lower = auc([0.8] * 12, [0.9] * 10)
    assert lower.verdict == WORSE
    assert lower.p_value == pytest.approx(float(mannwhitneyu([0.8] * 12, [0.9] * 10, alternative="less").pvalue))
    # Heavy ties (two values only) go through the tie-corrected normal approximation.
    tied = [0.8, 0.9] * 10
    heavy = auc(tied, [0.9] * 20)
    assert heavy.verdict == WORSE
    assert heavy.p_value == pytest.approx(float(mannwhitneyu(tied, [0.9] * 20, alternative="less").pvalue))


def test_nan_and_inf_samples_are_dropped_first() -> None:
    dirty = [math.nan, *WORSE_AUC[:9], math.inf, -math.inf]
    result = auc(dirty)
    assert (result.verdict, result.candidate_n, result.reason) == (NO_VERDICT, 9, "9 of 10 samples for v6")
    clean = auc([math.nan, *WORSE_AUC, math.inf])
    assert clean.candidate_n == 20
    assert clean.p_value == auc(WORSE_AUC).p_value


def test_the_same_version_on_both_sides_is_no_verdict() -> None:
    result = judge("auc", higher_is_better=True, candidate=CHAMPION, champion=CHAMPION, candidate_version="5",
                   champion_version="5")
    assert (result.verdict, result.reason) == (NO_VERDICT, "the candidate and the champion are both v5")


def test_bad_confidence_is_refused() -> None:
    with pytest.raises(ValueError, match="confidence"):
        auc(CHAMPION, confidence=1.0)


# -- samples_by_version -----------------------------------------------------------------------------------------------
RANGE = RangeResult(
    "model_quality_auc",
    (
        Series({"model_version": "5", "pod": "a"}, ((1.0, 0.88), (2.0, 0.882))),
        Series({"model_version": "6"}, ((1.0, 0.84),)),
        Series({"model_version": "5", "pod": "b"}, ((1.0, 0.879),)),
        Series({"pod": "c"}, ((1.0, 0.5),)),  # no model_version: left out
    ),
)


def test_samples_by_version_pools_every_point_per_label_value() -> None:
    assert samples_by_version(RANGE, "model_version") == {"5": [0.88, 0.882, 0.879], "6": [0.84]}
    assert samples_by_version(RANGE, "pod") == {"a": [0.88, 0.882], "b": [0.879], "c": [0.5]}
    assert samples_by_version(RANGE, "missing") == {}
    assert samples_by_version(RangeResult("q", error="down"), "model_version") == {}


# -- compare() against a fake Prometheus ------------------------------------------------------------------------------
class FakeProm:
    """Answers query_range with a fixed RangeResult and records what was asked (duck-typed for Prometheus)."""

    def __init__(self, answer: RangeResult) -> None:
        self.answer = answer
        self.asked: list[tuple[str, float, float, float]] = []

    def query_range(self, query: str, start: float, end: float, step: float) -> RangeResult:
        self.asked.append((query, start, end, step))
        return self.answer


def by_version(query: str, series: dict[str, list[float]], step: float = 15.0) -> RangeResult:
    return RangeResult(query, tuple(
        Series({"service": "model-svc", "model_version": version},
               tuple((1_800_000_000.0 + i * step, v) for i, v in enumerate(values)))
        for version, values in series.items()))


def run(prom: FakeProm, **kw: object) -> Comparison:
    args: dict[str, object] = dict(slo="auc-by-version", query="model_quality_auc", higher_is_better=True,
                                   label="model_version", candidate="6", champion="5", window=300.0, step=15.0,
                                   confidence=0.95, min_samples=10, now=1_800_000_300.0)
    args.update(kw)
    return compare(cast(Prometheus, prom), **args)  # type: ignore[arg-type]


def test_compare_reads_one_range_over_the_window_and_judges() -> None:
    prom = FakeProm(by_version("model_quality_auc", {"5": CHAMPION, "6": WORSE_AUC}))
    result = run(prom)
    assert prom.asked == [("model_quality_auc", 1_800_000_000.0, 1_800_000_300.0, 15.0)]
    assert result == judge("auc-by-version", higher_is_better=True, candidate=WORSE_AUC, champion=CHAMPION,
                           candidate_version="6", champion_version="5")
    assert result.verdict == WORSE


def test_compare_with_an_equal_candidate_is_not_worse() -> None:
    result = run(FakeProm(by_version("q", {"5": CHAMPION, "6": SAME_AUC})))
    assert result.verdict == NOT_WORSE
    assert result.p_value == pytest.approx(float(mannwhitneyu(SAME_AUC, CHAMPION, alternative="less").pvalue))


def test_a_failed_query_is_no_verdict_with_the_error() -> None:
    result = run(FakeProm(RangeResult("q", error="ConnectionError: refused")))
    assert (result.verdict, result.reason, result.p_value) == (NO_VERDICT, "query failed: ConnectionError: refused",
                                                               None)
    assert (result.candidate, result.champion, result.candidate_n) == ("6", "5", 0)


def test_no_labelled_series_is_no_verdict() -> None:
    result = run(FakeProm(RangeResult("q", (Series({"service": "model-svc"}, ((1.0, 0.9),)),))))
    assert (result.verdict, result.reason) == (NO_VERDICT, "no series labelled model_version")


def test_a_candidate_without_series_yet_is_no_verdict_for_it() -> None:
    result = run(FakeProm(by_version("q", {"5": CHAMPION})))
    assert (result.verdict, result.reason, result.champion_n) == (NO_VERDICT, "0 of 10 samples for v6", 20)


# -- words() ----------------------------------------------------------------------------------------------------------
def comparison(verdict: str, p_value: float | None, reason: str = "", n: int = 20) -> Comparison:
    return Comparison("auc-by-version", "6", "5", 0.843, 0.881, n, 20, p_value, 0.95, verdict, reason)


def test_words_for_each_verdict() -> None:
    assert comparison(WORSE, 0.0003).words() == (
        "auc-by-version: v6 median 0.843 (n=20) vs v5 0.881 (n=20), p=0.0003 < 0.05: significantly worse")
    not_worse = Comparison("auc-by-version", "6", "5", 0.88, 0.881, 20, 20, 0.41, 0.95, NOT_WORSE)
    assert not_worse.words() == (
        "auc-by-version: v6 median 0.880 (n=20) vs v5 0.881 (n=20), p=0.41 ≥ 0.05: not significantly worse")
    assert comparison(NO_VERDICT, None, "4 of 10 samples for v6", n=4).words() == (
        "auc-by-version: no verdict yet — 4 of 10 samples for v6")


def test_words_of_real_judgements() -> None:
    assert auc(WORSE_AUC).words().endswith(": significantly worse")
    assert auc(WORSE_AUC).words().startswith("auc-by-version: v6 median 0.843 (n=20) vs v5 0.881 (n=20), p=")
    assert auc([0.9] * 20, [0.9] * 20).words() == (
        "auc-by-version: v6 median 0.900 (n=20) vs v5 0.900 (n=20), p=1 ≥ 0.05: not significantly worse")
    assert auc(CHAMPION, confidence=0.99).words().endswith("≥ 0.01: not significantly worse")
