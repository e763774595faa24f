"""Baselines of relative SLOs (`above_baseline:` / `below_baseline:`): what the version serving now is judged
against, and recording them at each promotion.

- A recorded baseline (`baseline: recorded`) is measured by the promotion gate (bot.slo.gate) right before it moves
  the alias: the outgoing champion's median over the soak window (`promote.healthy_for`, a `query_range` at step
  `evaluate_every`), stored with the promotion (bot.infra.store.baselines) and never changed. It belongs to the
  version it measured: the version serving now is judged against its own recorded value when it has one (it was
  the outgoing champion of an earlier promotion, and a rollback restored it), else against the value recorded at
  the promotion that made it the champion (the version it replaced).
- A live baseline (`baseline: {label: model_version}`) is the previous champion's own series of the same query at
  the same moment (a canary or shadow share still serving it), read by bot.slo.evaluation.

Used by bot.slo.evaluation (every cycle and every verification tick), bot.slo.gate (recording) and readiness.
Which versions are the champion and the previous one is read from the model registry's aliases (`promote.to` and
`promote.previous`, or champion and previous_champion), through the gate's alias cache. No baseline (never
promoted by the bot, or the registry unreadable) is no data: never a breach, and it holds neither the promotion
gate nor verification.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from bot.infra.model_registry import RegistryError
from bot.infra.prom import Prometheus, Series
from bot.infra.store import NewBaseline, RecordedBaseline, Store
from bot.slo.durations import format_duration
from bot.slo.percent import format_change
from bot.slo.policy import Service, Slo

log = logging.getLogger(__name__)

RECORDS_TTL = 30.0  # seconds the recorded baselines read from the store are trusted (another replica may record)


class Aliases(Protocol):
    """Each model's aliases, as the gate's AliasCache (bot.slo.gate) reads and caches them."""

    def get(self, model: str, max_age: float | None = None) -> dict[str, str]: ...

    def prefetch(self, models: set[str]) -> None: ...

    def forget(self, model: str) -> None: ...


@dataclass(frozen=True)
class Base:
    """The baseline a relative SLO's value is judged against now, and whose it is in words."""

    value: float
    version: str
    source: str  # "recorded at the 12:04 promotion" / "its series now"


@dataclass(frozen=True)
class Versions:
    """The version serving now (the champion) and the one before it (previous), None when the alias is not set;
    `error` when the registry could not be read."""

    current: str | None
    previous: str | None
    error: str | None = None


def aliases_of(svc: Service) -> tuple[str, str]:
    """(champion alias, previous champion alias) of a service: its promote policy's, else MLflow's usual names."""
    return (svc.promote.to, svc.promote.previous) if svc.promote else ("champion", "previous_champion")


def worst(slo: Slo, values: Iterable[float]) -> float | None:
    """The worst of several series' values (as bot.slo.evaluation.judge counts them); None without a number."""
    numbers = [v for v in values if not math.isnan(v)]
    if not numbers:
        return None
    return min(numbers) if slo.higher_is_better else max(numbers)


def words(slo: Slo, value: float, current: str | None, base: Base) -> str:
    """"0.83 on v5 vs baseline 0.86 (v4, recorded at the 12:04 promotion): −3.5%, allowed −3%"."""
    change = (value - base.value) / abs(base.value) if base.value else (0.0 if value == base.value else math.inf)
    shown = format_change(change) if math.isfinite(change) else f"{value - base.value:+.4g}"
    on = f" on v{current}" if current else ""
    floor = f" and {slo.min_delta:.4g}" if slo.min_delta else ""
    return (f"{value:.4g}{on} vs baseline {base.value:.4g} (v{base.version}, {base.source}): {shown}, allowed "
            f"{slo.allowed_text()}{floor}")


def pick(records: list[RecordedBaseline], current: str) -> RecordedBaseline | None:
    """The recorded baseline that judges `current`: its own (newest) value, recorded when it was the outgoing
    champion, else the newest value recorded at a promotion of `current` (the version it replaced)."""
    own = [r for r in records if r.version == current]
    if own:
        return own[-1]
    replaced = [r for r in records if r.promoted == current]
    return replaced[-1] if replaced else None


def promotion_time(at: float, now: float) -> str:
    """"12:04" today, "2026-11-30 12:04" before (UTC)."""
    return time.strftime("%H:%M" if now - at < 86400 else "%Y-%m-%d %H:%M", time.gmtime(at))


class Baselines:
    def __init__(self, store: Store, aliases: Aliases, prom: Prometheus, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.aliases = aliases
        self.prom = prom
        self.clock = clock
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], list[RecordedBaseline]] = {}
        self._read_at: float | None = None

    # -- judging ------------------------------------------------------------------------------------------
    def prefetch(self, services: Iterable[Service]) -> None:
        """Read the aliases of these services' models at once (many models: one listing), before a cycle."""
        models = {svc.model for svc in services if any(slo.relative for slo in svc.slos)}
        if models:
            self.aliases.prefetch(models)

    def moved(self, svc: Service) -> None:
        """The service's aliases may have moved (a rollback ran): read them again at the next use."""
        self.aliases.forget(svc.model)

    def versions(self, svc: Service) -> Versions:
        current, previous = aliases_of(svc)
        try:
            seen = self.aliases.get(svc.model)
        except RegistryError as exc:
            return Versions(None, None, str(exc))
        return Versions(seen.get(current), seen.get(previous))

    def recorded(self, svc: Service, slo: Slo, current: str | None) -> Base | None:
        """The recorded baseline judging `current` now (None: none recorded for it yet)."""
        if current is None:
            return None
        record = pick(self._records_of(svc.name, slo.name), current)
        if record is None:
            return None
        return Base(record.value, record.version, f"recorded at the {promotion_time(record.recorded_at, self.clock())}"
                                                  f" promotion")

    def missing(self, svc: Service, slo: Slo, versions: Versions) -> str:
        """Why a relative SLO has no baseline now, in words (the reading's detail, readiness)."""
        if versions.error:
            return f"no baseline: the model registry could not be read ({versions.error})"
        current, previous = aliases_of(svc)
        if versions.current is None:
            return f"no baseline: no @{current} version"
        if slo.live_label:
            if versions.previous is None:
                return f"no baseline yet: no @{previous} version to compare with"
            return f"no baseline yet: no series with {slo.live_label}=\"{versions.previous}\" (@{previous}) now"
        return f"no baseline yet for v{versions.current}: the next promotion by the bot records one"

    def _records_of(self, service: str, slo: str) -> list[RecordedBaseline]:
        with self._lock:
            if self._read_at is None or self.clock() - self._read_at >= RECORDS_TTL:
                self._load()
            return self._records.get((service, slo), [])

    def _load(self) -> None:
        records: dict[tuple[str, str], list[RecordedBaseline]] = {}
        for record in self.store.baselines():
            records.setdefault((record.service, record.slo), []).append(record)
        self._records, self._read_at = records, self.clock()

    def forget(self) -> None:
        """Read the recorded baselines from the store again at the next use."""
        with self._lock:
            self._read_at = None

    # -- recording ----------------------------------------------------------------------------------------
    def record(self, svc: Service, *, outgoing: str, promoted: str, step: float,
               now: float | None = None) -> list[RecordedBaseline]:
        """At a promotion of `promoted` over `outgoing`: each recorded-baseline SLO's median over the soak window,
        stored. An SLO without data over the window gets no baseline (logged); the promotion goes on."""
        window = svc.promote.healthy_for if svc.promote else 0.0
        end = now if now is not None else time.time()
        measured = []
        for slo in svc.slos:
            if not slo.relative or slo.live_label:
                continue
            result = self.prom.query_range(slo.query or "", end - window, end, step)
            points = [] if result.error else per_moment(slo, svc, result.series)
            if not points:
                log.warning("%s/%s: no baseline recorded for v%s at the promotion of v%s: %s", svc.name, slo.name,
                            outgoing, promoted, result.error or f"no data over the last {format_duration(window)}")
                continue
            measured.append(NewBaseline(svc.name, slo.name, outgoing, promoted, statistics.median(points),
                                        len(points), window))
        stored = self.store.record_baselines(measured)
        self.forget()
        return stored


def per_moment(slo: Slo, svc: Service, series: tuple[Series, ...]) -> list[float]:
    """The worst value at each moment of a range result (only this service's series for a `by:` SLO)."""
    chosen = [s for s in series if slo.by is None or s.labels.get(slo.by) == (slo.match or svc.name)]
    moments: dict[float, list[float]] = {}
    for one in chosen:
        for at, value in one.points:
            moments.setdefault(at, []).append(value)
    out = [worst(slo, values) for _, values in sorted(moments.items())]
    return [v for v in out if v is not None and math.isfinite(v)]
