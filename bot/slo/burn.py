"""Burn-rate SLOs (SRE workbook, multi-window alerting): the queries, the verdict and the text shown to humans.

Called by bot.slo.evaluation.read for every SLO with `burn_rate:` and by bot.slo.rules for the Prometheus alerts.
The error ratio over a window W is `sum(rate(errors[W])) / sum(rate(total[W]))`; the burn rate is that
ratio divided by the error budget `1 - objective`. A window pair (long, short, factor) breaches when BOTH
windows burn faster than `factor`: the long window proves the burn is significant, the short one that it is
still going on. Any breaching pair is a breach. No traffic (no series, or 0/0) is no data, never a breach.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from bot.infra.prom import QueryResult
from bot.slo.durations import format_duration
from bot.slo.policy import BurnRate, BurnWindow

OK, BREACH, NODATA, ERROR = "ok", "breach", "nodata", "error"  # the same words as bot.slo.evaluation


@dataclass(frozen=True)
class BurnReading:
    """The verdict of one burn-rate SLO at one moment.

    `value` is the burn rate of the worst pair (the smaller of its two windows' rates, i.e. the rate both
    windows sustain; "worst" = highest relative to the pair's factor); `text` shows that pair's two window
    rates, e.g. "14.9x over 1h / 21x over 5m"; `target` is that pair's target, e.g. "burn < 14.4x (1h & 5m)".
    """

    status: str
    value: float | None
    text: str
    target: str
    error: str | None = None


def promql_duration(seconds: float) -> str:
    """A PromQL range duration: 3600 -> `1h`, 90 -> `1m30s`, 0.5 -> `500ms`."""
    millis = round(seconds * 1000)
    if millis <= 0:
        raise ValueError(f"a PromQL window must be positive, got {seconds!r} seconds")
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        amount, millis = divmod(millis, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


def ratio_query(burn: BurnRate, window: float) -> str:
    """The error ratio over `window` seconds. A service that never failed has no error series at all, so the
    errors side falls back to 0; no traffic leaves the total side empty (or 0), which reads as no data."""
    w = promql_duration(window)
    return f"(sum(rate({burn.errors}[{w}])) or vector(0)) / sum(rate({burn.total}[{w}]))"


def queries(burn: BurnRate) -> list[str]:
    """Every query this SLO needs, one per distinct window (pairs that share a window share its query)."""
    windows = [seconds for pair in burn.windows for seconds in (pair.long, pair.short)]
    return [ratio_query(burn, seconds) for seconds in dict.fromkeys(windows)]


def budget(burn: BurnRate) -> float:
    """The error budget: the share of events allowed to fail."""
    return 1.0 - burn.objective


def rate_text(rate: float) -> str:
    """`14.9x`, `21x`, `0.5x`, `1000x`; `+Infx` for errors with no requests counted in the window (x/0)."""
    if math.isinf(rate):
        return "+Infx" if rate > 0 else "-Infx"
    return f"{rate:.0f}x" if rate >= 100 else f"{rate:.3g}x"


def pair_text(pair: BurnWindow, long_rate: float | None, short_rate: float | None) -> str:
    """`14.9x over 1h / 21x over 5m`, with `no data` for a window without traffic."""
    def one(rate: float | None, seconds: float) -> str:
        return f"{'no data' if rate is None else rate_text(rate)} over {format_duration(seconds)}"

    return f"{one(long_rate, pair.long)} / {one(short_rate, pair.short)}"


def judge(burn: BurnRate, results: Mapping[str, QueryResult]) -> BurnReading:
    """The verdict from the answers to `queries(burn)` (keyed by query, as Prometheus.query_many returns).

    Breach when, for ANY pair, both windows burn faster than its factor. Otherwise a failed query is an
    error and a window without traffic is no data: "ok" needs every window read.
    """
    rates: dict[float, float | None] = {}
    errors: list[str] = []
    for seconds in dict.fromkeys(s for pair in burn.windows for s in (pair.long, pair.short)):
        result = results[ratio_query(burn, seconds)]
        if result.error is not None:
            errors.append(f"{format_duration(seconds)}: {result.error}")
        rates[seconds] = max(result.values) / budget(burn) if result.values else None

    def severity(pair: BurnWindow) -> float:
        long_rate, short_rate = rates[pair.long], rates[pair.short]
        if long_rate is None or short_rate is None:
            return -1.0
        return min(long_rate, short_rate) / pair.factor

    worst = max(burn.windows, key=severity)
    long_rate, short_rate = rates[worst.long], rates[worst.short]
    value = None if long_rate is None or short_rate is None else min(long_rate, short_rate)
    text = pair_text(worst, long_rate, short_rate)
    if value is not None and value > worst.factor:
        return BurnReading(BREACH, value, text, worst.target_text())
    if errors:
        return BurnReading(ERROR, value, text, worst.target_text(), "; ".join(errors))
    if any(rate is None for rate in rates.values()):
        return BurnReading(NODATA, value, text, burn.target_text())
    return BurnReading(OK, value, text, worst.target_text())
