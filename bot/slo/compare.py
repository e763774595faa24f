"""The candidate-vs-champion judgement: is the candidate significantly worse than the champion on one SLO?

Called by bot.slo.gate before a promotion, for each SLO in the service's `promote.compare` (bot.slo.policy.Compare):
`compare()` reads the SLO's query over the soak window in one range query, splits the points by the version label
(`samples_by_version`) and hands the candidate's and the champion's samples to `judge()`.

It follows Kayenta's Mann-Whitney judge (Netflix's automated canary analysis): the two versions' samples are compared
with the Mann-Whitney U test, which assumes no distribution and only ranks the values, so a few outliers or a skewed
metric do not fool it. Unlike Kayenta's two-sided test, ours is ONE-SIDED: the alternative hypothesis is "the
candidate is worse" (its values tend lower when higher is better, e.g. AUC; higher otherwise, e.g. latency). A
candidate that is better, or indistinguishable, is never held back; WORSE means the data show, at `confidence`,
that it is worse (p < 1 - confidence). Too few samples on either side is NO_VERDICT, never a pass or a fail: the gate
decides what to do with it. Knows nothing of Slack: `Comparison.words()` is plain text the caller posts.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bot.infra.prom import Prometheus, RangeResult

WORSE, NOT_WORSE, NO_VERDICT = "worse", "not worse", "no verdict"


@dataclass(frozen=True)
class Comparison:
    """The verdict on one SLO: the candidate's and champion's medians and sample counts, the one-sided p-value
    (None when no test was run) and, for NO_VERDICT, the reason ("4 of 10 samples for v6", "query failed: ...")."""

    slo: str
    candidate: str
    champion: str
    candidate_median: float | None
    champion_median: float | None
    candidate_n: int
    champion_n: int
    p_value: float | None
    confidence: float
    verdict: str
    reason: str = ""

    def words(self) -> str:
        """One line for the gate's Slack message, e.g.
        "auc-by-version: v6 median 0.843 (n=20) vs v5 0.881 (n=20), p=0.0003 < 0.05: significantly worse"."""
        if self.verdict == NO_VERDICT or self.p_value is None:
            return f"{self.slo}: no verdict yet — {self.reason or 'no test was run'}"
        p, alpha = _p_and_alpha(self.p_value, 1 - self.confidence)
        if self.verdict == WORSE:
            judged = f"p={p} < {alpha}: significantly worse"
        else:
            judged = f"p={p} ≥ {alpha}: not significantly worse"
        return (f"{self.slo}: v{self.candidate} median {_median(self.candidate_median)} (n={self.candidate_n}) "
                f"vs v{self.champion} {_median(self.champion_median)} (n={self.champion_n}), {judged}")


def judge(
    slo: str,
    *,
    higher_is_better: bool,
    candidate: Sequence[float],
    champion: Sequence[float],
    candidate_version: str,
    champion_version: str,
    confidence: float = 0.95,
    min_samples: int = 10,
) -> Comparison:
    """One-sided Mann-Whitney U of `candidate` against `champion`: WORSE when p < 1 - confidence.

    NaN and infinite samples are dropped first. Fewer than `min_samples` left on either side is NO_VERDICT. When
    every remaining sample of both versions is the same value (a constant metric) there is nothing to rank: that is
    NOT_WORSE with p = 1.0, decided here rather than by scipy (whose exact method answers about 0.5 for it and whose
    normal approximation divides by a zero variance).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be at least 1, got {min_samples}")
    cand, champ = _finite(candidate), _finite(champion)

    def result(verdict: str, p_value: float | None, reason: str = "") -> Comparison:
        return Comparison(slo, candidate_version, champion_version, _median_of(cand), _median_of(champ), len(cand),
                          len(champ), p_value, confidence, verdict, reason)

    if candidate_version == champion_version:
        return result(NO_VERDICT, None, f"the candidate and the champion are both v{candidate_version}")
    short = [f"{len(values)} of {min_samples} samples for v{version}"
             for values, version in ((cand, candidate_version), (champ, champion_version)) if len(values) < min_samples]
    if short:
        return result(NO_VERDICT, None, "; ".join(short))
    if len(set(cand) | set(champ)) == 1:
        return result(NOT_WORSE, 1.0)
    # 'auto' takes the exact distribution for small samples without ties and the normal approximation (with the tie
    # correction) otherwise; the all-tied case, where that correction leaves no variance, was handled above.
    from scipy.stats import mannwhitneyu  # here, not at import: scipy.stats costs the bot's start-up a second

    test = mannwhitneyu(cand, champ, alternative="less" if higher_is_better else "greater", method="auto")
    p_value = float(test.pvalue)
    return result(WORSE if p_value < 1 - confidence else NOT_WORSE, p_value)


def samples_by_version(result: RangeResult, label: str) -> dict[str, list[float]]:
    """Every point of every series of `result`, pooled per value of `label`; series without the label are left out."""
    out: dict[str, list[float]] = {}
    for series in result.series:
        version = series.labels.get(label)
        if version is not None:
            out.setdefault(version, []).extend(value for _, value in series.points)
    return out


def compare(
    prom: Prometheus,
    *,
    slo: str,
    query: str,
    higher_is_better: bool,
    label: str,
    candidate: str,
    champion: str,
    window: float,
    step: float,
    confidence: float,
    min_samples: int,
    now: float | None = None,
) -> Comparison:
    """Read `query` over [now - window, now] at `step` (one range query), split it by `label` and judge() the
    candidate's version against the champion's. Never raises for Prometheus: a failed query is NO_VERDICT."""
    end = time.time() if now is None else now
    answer = prom.query_range(query, end - window, end, step)

    def no_verdict(reason: str) -> Comparison:
        return Comparison(slo, candidate, champion, None, None, 0, 0, None, confidence, NO_VERDICT, reason)

    if answer.error is not None:
        return no_verdict(f"query failed: {answer.error}")
    samples = samples_by_version(answer, label)
    if not samples:
        return no_verdict(f"no series labelled {label}")
    return judge(slo, higher_is_better=higher_is_better, candidate=samples.get(candidate, []),
                 champion=samples.get(champion, []), candidate_version=candidate, champion_version=champion,
                 confidence=confidence, min_samples=min_samples)


def _finite(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if math.isfinite(v)]


def _median_of(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _median(value: float | None) -> str:
    """Three significant digits, trailing zeros kept (0.880, not 0.88), plain notation from 0.0001 to a million."""
    if value is None:
        return "n/a"
    if value == 0 or not 1e-4 <= abs(value) < 1e6:
        return f"{value:.3g}"
    return f"{value:.{max(2 - math.floor(math.log10(abs(value))), 0)}f}"


def _p_and_alpha(p_value: float, alpha: float) -> tuple[str, str]:
    """The p-value and the threshold, two significant digits, more when they would otherwise read the same."""
    shown = f"{alpha:.2g}"
    for digits in (2, 3, 4, 6):
        p = f"{p_value:.{digits}g}"
        if p != shown:
            break
    return p, shown
