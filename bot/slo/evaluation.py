"""SLO evaluation: turn Prometheus readings into ok / breach / no data / error, and track how long each
breach and each healthy streak has held.

Called every `evaluate_every` by bot.incidents.detection (which opens incidents for sustained breaches and runs the
promotion gate) and every `verify.every` by bot.incidents.verify (which only needs `read`). One bad query never
breaks a cycle: that SLO is reported as erroring and the rest go on.

A reading's value is a finite number or None. NaN is no data (as in bot.infra.prom). An infinite value (`errors/0`
when nothing was served, `-1/0`) still counts against the threshold: +Inf breaches `above:` and -Inf breaches
`below:`. PostgreSQL's json (an incident's detail) refuses Infinity, so such a reading has value None and says
"+Inf" / "-Inf" in its `detail`, the words the warning shows; its stored SLO state has no value either.

Identical query texts are sent once per cycle. An SLO with `by: <label>` reads one series of a grouped
query (the one whose label equals `match`, default the service's name), so hundreds of services sharing
one query text cost one Prometheus query per cycle. The store is read once and written once per cycle, and only
the SLOs whose status or breach clock changed are written.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from bot.infra import metrics
from bot.infra.prom import Prometheus, QueryResult
from bot.infra.store import SloState, Store
from bot.slo import burn, grouping
from bot.slo.baselines import Base, Baselines, words, worst
from bot.slo.policy import BurnRate, Policy, Service, Slo

log = logging.getLogger(__name__)

OK, BREACH, NODATA, ERROR = "ok", "breach", "nodata", "error"
# Cycles start a few milliseconds early or late, so two cycles one interval apart can measure 0.999 of it.
# A breach that has held `for` minus this share of a cycle counts as held; otherwise such jitter would
# delay the warning by a whole extra cycle (benchmarks/detection_latency.py found it).
CYCLE_JITTER = 0.1


@dataclass(frozen=True)
class Reading:
    """One SLO's state at one moment."""

    service: str
    slo: str
    status: str
    value: float | None
    target: str
    error: str | None = None
    breach_since: float | None = None
    sustained: bool = False
    detail: str | None = None  # the value in words when a number is not enough: "14.9x over 1h / 21x over 5m"
    # A relative SLO without a baseline yet (status NODATA, `detail` says why): it holds neither the promotion gate
    # (the first promotion records the baseline) nor verification.
    no_baseline: bool = False

    @property
    def within_target(self) -> bool:
        return self.status == OK or self.no_baseline


def judge(slo: Slo, result: QueryResult, values: tuple[float, ...] | None = None) -> tuple[str, float | None]:
    """Status and value of one SLO from its query result (or from `values`, this service's series of a
    grouped result). Several series: the worst one counts; NaN ones are no data. The value may be infinite
    (see `finite`)."""
    if result.error is not None:
        return ERROR, None
    values = tuple(v for v in (result.values if values is None else values) if not math.isnan(v))
    if not values:
        return NODATA, None
    value = max(values) if slo.above is not None else min(values)
    return (BREACH if slo.breached(value) else OK), value


def finite(reading: Reading) -> Reading:
    """The reading with a finite value or None: +Inf / -Inf (judged already) become None with those words in
    `detail`, so the warning reads "+Inf" and the store never receives an infinite number."""
    if reading.value is None or math.isfinite(reading.value):
        return reading
    words = "NaN" if math.isnan(reading.value) else ("+Inf" if reading.value > 0 else "-Inf")
    return replace(reading, value=None, detail=reading.detail or words)


class _Groups:
    """Grouped results indexed by label value, built once per (query, label) and cycle."""

    def __init__(self) -> None:
        self._index: dict[tuple[str, str], dict[str, tuple[float, ...]]] = {}

    def values(self, result: QueryResult, label: str, match: str) -> tuple[float, ...]:
        key = (result.query, label)
        if key not in self._index:
            self._index[key] = result.by_label(label)
        return self._index[key].get(match, ())


class Grouper:
    """Automatic grouping with a check at run time: each cycle one member of each group (in turn) is also
    queried alone, and a group whose sampled member reads differently alone is evaluated query by query from
    then on (logged, counted in /metrics)."""

    def __init__(self) -> None:
        self.disabled: set[str] = set()
        self._turn = 0

    def plan(self, services: Iterable[Service]) -> grouping.Plan:
        plan = grouping_plan(services)
        if not self.disabled:
            return plan
        alone = dict(plan.alone)
        for group in plan.groups:
            if group.query in self.disabled:
                alone.update({q: "grouping turned off after a mismatch" for q in group.members})
        return grouping.Plan(tuple(g for g in plan.groups if g.query not in self.disabled), alone)

    def samples(self, plan: grouping.Plan) -> dict[str, str]:
        """Grouped query -> the member queried alone too this cycle."""
        self._turn += 1
        return {g.query: sorted(g.members)[self._turn % len(g.members)] for g in plan.groups}

    def check(self, plan: grouping.Plan, samples: dict[str, str], results: dict[str, QueryResult]) -> None:
        for group in plan.groups:
            member = samples.get(group.query)
            grouped, alone = results.get(group.query), results.get(member or "")
            if member is None or grouped is None or alone is None or grouped.error or alone.error:
                continue
            mine = sorted(v for v in grouped.by_label(group.label).get(group.members[member], ())
                          if not math.isnan(v))
            theirs = sorted(v for v in alone.values if not math.isnan(v))
            if len(mine) != len(theirs) or any(not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
                                               for a, b in zip(mine, theirs, strict=True)):
                log.warning("grouped query %r read %s for %s=%s but %s alone; evaluating its %d queries one by "
                            "one from now on", group.query[:200], mine, group.label, group.members[member], theirs,
                            len(group.members))
                self.disabled.add(group.query)
                metrics.GROUPING_MISMATCHES.inc()
                metrics.GROUPS_DISABLED.set(len(self.disabled))


def read(prom: Prometheus, services: Iterable[Service], *, group: bool = True,
         grouper: Grouper | None = None, baselines: Baselines | None = None) -> dict[str, list[Reading]]:
    """Query every SLO of these services once (identical queries are sent once) and judge them. With `group`,
    queries written per service that differ only in one label's value are sent as one (bot.slo.grouping);
    a `grouper` also cross-checks one member per group each cycle. Relative SLOs are judged against `baselines`
    (without it they have no baseline)."""
    services = list(services)
    if baselines is not None:
        baselines.prefetch(services)
    if not group:
        plan = grouping.Plan((), {})
    else:
        plan = grouper.plan(services) if grouper else grouping_plan(services)
    samples = grouper.samples(plan) if grouper else {}
    sent = {q: _sent(q, plan) for svc in services for slo in svc.slos for q in _queries(slo)}
    # One instant for the whole cycle: a group and its member checked alone read the same samples, and every SLO
    # of a cycle sees the same moment.
    results = prom.query_many(dict.fromkeys([query for query, _, _ in sent.values()] + list(samples.values())),
                              at=time.time())
    if grouper:
        grouper.check(plan, samples, results)
    groups = _Groups()
    out: dict[str, list[Reading]] = {}
    for svc in services:
        readings = []
        for slo in svc.slos:
            if slo.burn_rate is not None:
                readings.append(_burn_reading(svc, slo.name, slo.burn_rate, results))
                continue
            query, label, match = sent[slo.query or ""]
            result = results[query]
            if slo.by is not None:
                label, match = slo.by, slo.match or svc.name
            values = None if label is None else groups.values(result, label, match or "")
            if result.error:
                log.warning("%s/%s: query failed: %s", svc.name, slo.name, result.error)
            if slo.relative:
                if slo.live_label and label is not None:  # its text is also another SLO's, sent grouped
                    result, values = result.only(label, match or ""), None
                readings.append(finite(relative(svc, slo, result, values, baselines)))
                continue
            status, value = judge(slo, result, values)
            readings.append(finite(Reading(svc.name, slo.name, status, value, slo.target_text(), result.error)))
        out[svc.name] = readings
    return out


def relative(svc: Service, slo: Slo, result: QueryResult, values: tuple[float, ...] | None,
             baselines: Baselines | None) -> Reading:
    """A relative SLO's reading: the version serving now against its baseline (recorded at a promotion, or the
    previous champion's series now, `baseline: {label: ...}`); no baseline is no data that holds nothing back."""
    target = slo.target_text()
    if result.error is not None:
        return Reading(svc.name, slo.name, ERROR, None, target, result.error)
    if baselines is None:  # a reader without baselines (a staging drill's verification) judges no relative SLO
        return Reading(svc.name, slo.name, NODATA, None, target, detail="no baseline here", no_baseline=True)
    versions = baselines.versions(svc)
    if slo.live_label:
        by_version = result.by_label(slo.live_label)
        value = worst(slo, by_version.get(versions.current or "", ()))
        previous = worst(slo, by_version.get(versions.previous or "", ()))
        base = Base(previous, versions.previous or "?", "its series now") if previous is not None else None
    else:
        value = worst(slo, result.values if values is None else values)
        base = baselines.recorded(svc, slo, versions.current)
    if value is None:
        return Reading(svc.name, slo.name, NODATA, None, target)
    if base is None:
        return Reading(svc.name, slo.name, NODATA, value, target, detail=baselines.missing(svc, slo, versions),
                       no_baseline=True)
    status = BREACH if slo.breached_against(value, base.value) else OK
    return Reading(svc.name, slo.name, status, value, target, detail=words(slo, value, versions.current, base))


def grouping_plan(services: Iterable[Service]) -> grouping.Plan:
    """The automatic grouping of these services' plain `query:` SLOs (not `by:`, not burn rate, not a live
    baseline, which reads every version's series of its query)."""
    return grouping.cached_plan(tuple(sorted({slo.query for svc in services for slo in svc.slos
                                              if slo.query and slo.by is None and slo.burn_rate is None
                                              and slo.live_label is None})))


def _sent(query: str, plan: grouping.Plan) -> tuple[str, str | None, str | None]:
    """What is sent for `query` and how its series are picked: (query, None, None) when it goes alone."""
    grouped = plan.for_query(query)
    return grouped if grouped else (query, None, None)


def _queries(slo: Slo) -> list[str]:
    return burn.queries(slo.burn_rate) if slo.burn_rate is not None else [slo.query or ""]


def _burn_reading(svc: Service, name: str, burn_rate: BurnRate, results: dict[str, QueryResult]) -> Reading:
    verdict = burn.judge(burn_rate, results)
    if verdict.error:
        log.warning("%s/%s: query failed: %s", svc.name, name, verdict.error)
    return finite(Reading(svc.name, name, verdict.status, verdict.value, verdict.target, verdict.error,
                          detail=verdict.text))


class Evaluator:
    """Keeps, in the store, since when each SLO has breached and since when each service is healthy."""

    def __init__(self, store: Store, prom: Prometheus, *, group: bool = True, baselines: Baselines | None = None) -> None:
        self.store = store
        self.prom = prom
        self.baselines = baselines  # what relative SLOs are judged against (bot.slo.baselines)
        self.group = group  # False: one query per SLO text (the per-SLO floor benchmark 4 compares against)
        self.grouper = Grouper()
        # The stored SLO states as of the last cycle: read from the store at the first cycle, then kept up to date
        # here (this is their only writer), so a cycle does not read 20,000 rows back.
        self._states: dict[tuple[str, str], SloState] | None = None

    def forget_states(self) -> None:
        """Read the stored SLO states again at the next cycle (someone else changed them)."""
        self._states = None

    def evaluate(self, policy: Policy, now: float | None = None,
                 services: Iterable[Service] | None = None) -> dict[str, list[Reading]]:
        """Read and track the SLOs of `services` (default: every service of the policy)."""
        now = now or time.time()
        chosen = policy.services.values() if services is None else services
        fresh = read(self.prom, chosen, group=self.group, grouper=self.grouper, baselines=self.baselines)
        previous = self._states if self._states is not None else self.store.slo_states()
        self._states = None  # until this cycle's changes are stored
        healthy_since = self.store.healthy_since_all()
        changed: list[SloState] = []
        healthy_changes: dict[str, float | None] = {}
        out: dict[str, list[Reading]] = {}
        for name, readings in fresh.items():
            svc = policy.services[name]
            tracked = [self._track(slo, r, previous.get(self.store.slo_key(name, slo.name)), now, changed,
                                   CYCLE_JITTER * policy.evaluate_every)
                       for slo, r in zip(svc.slos, readings, strict=True)]
            out[name] = tracked
            healthy = all(r.within_target for r in tracked)
            since = healthy_since.get(name)
            if healthy and since is None:
                healthy_changes[name] = now
            elif not healthy and since is not None:
                healthy_changes[name] = None
        self.store.put_slo_states(changed)
        previous.update({self.store.slo_key(state.service, state.slo): state for state in changed})
        self._states = previous
        self.store.put_healthy_since(healthy_changes)
        return out

    @staticmethod
    def _track(slo: Slo, reading: Reading, previous: SloState | None, now: float, changed: list[SloState],
               jitter: float = 0.0) -> Reading:
        """The reading with its breach clock; its new state goes to `changed` when its status or breach clock
        differ from the stored ones (a value that moves within the same status is not written: 20,000 SLOs
        would otherwise be 20,000 row updates every cycle; the stored value is the one of the last change)."""
        breach_since: float | None = None
        if reading.status == BREACH:
            breach_since = previous.breach_since if previous and previous.breach_since else now
        elif reading.status in (NODATA, ERROR) and previous is not None:
            # No data or a failed query neither ends a breach nor starts one: keep the clock as it was,
            # but it cannot become "sustained" on a reading we do not have.
            breach_since = previous.breach_since
        if previous is None or (previous.status, previous.breach_since) != (reading.status, breach_since):
            changed.append(SloState(reading.service, reading.slo, reading.status, reading.value, breach_since, now))
        sustained = reading.status == BREACH and breach_since is not None and now - breach_since >= slo.for_ - jitter
        if breach_since is None and not sustained:
            return reading  # as read: most SLOs, most cycles (dataclasses.replace costs 20,000 calls a cycle)
        return replace(reading, breach_since=breach_since, sustained=sustained)
