"""Freeze and the promotion gate: after a rollback the bad version is blocked and the service frozen, and
the gate promotes a candidate only when nothing says no.

Called by bot.incidents: `freeze` when a plan starts and when an incident closes (recovered, verification
failed, or a failed plan), `consider_all` every evaluation cycle (three store reads for every service, the registry
only for services healthy long enough, their aliases cached for ALIAS_TTL). Nothing is promoted while the service
or every service (`/rollback freeze --all`, the freezes row ALL) is frozen, during a freeze window
(bot.slo.windows), while the readiness check handed in says the way back after the promotion is not ready, or, with
`promote.compare`, while the candidate is significantly worse than the champion over the soak window or there are
too few samples to say (bot.slo.compare); a candidate held back is reported once (Decision.notify) for the caller to
word. Right after a promotion the outgoing champion's values of the relative SLOs are recorded as the baselines the
new version is judged against (bot.slo.baselines).
The freeze is stored (it survives restarts) and the bad version carries the MLflow tag rollback_blocked=true with
the incident id, so other tooling sees it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from bot.infra import metrics
from bot.infra.actors import AUTO_ACTOR
from bot.infra.model_registry import ModelRegistry, RegistryError
from bot.infra.prom import Prometheus
from bot.infra.store import ALL, Freeze, RecordedBaseline, Store
from bot.slo import compare
from bot.slo.baselines import Baselines
from bot.slo.compare import Comparison
from bot.slo.durations import format_duration
from bot.slo.policy import Policy, Service
from bot.slo.windows import OpenWindow, open_window

log = logging.getLogger(__name__)


# How long the gate trusts an alias read (or `healthy_for`, if shorter). A candidate registered now is promoted at
# most this much later; whatever the gate does is decided on fresh reads (the cache only says there is nothing to do).
ALIAS_TTL = 30.0
# Above this many models to read at once, the cache lists every registered model (1,000 per read) instead.
ALIAS_POINT_READS = 20
# How long a "not ready" verdict on a candidate is trusted before readiness is checked again (it plans every step:
# git, helm, Kubernetes and MLflow reads). A "ready" verdict is never kept: the promotion follows at once.
NOT_READY_RECHECK = 60.0
# How long a comparison that held a candidate back is trusted before it is made again (a range query per compared
# SLO); a comparison that lets the candidate through is never kept: the promotion follows at once.
COMPARE_RECHECK = 30.0


class Verdict(Protocol):
    """What the readiness check (bot.incidents.readiness, handed in by bot.app) says about the way back."""

    @property
    def ready(self) -> bool: ...


# (service, candidate version, outgoing version or None) -> the readiness of the way back after that promotion
CheckReadiness = Callable[[Service, str, "str | None"], Verdict]


@dataclass(frozen=True)
class Frozen:
    """What a freeze did: the version it tagged rollback_blocked (if any) and what failed on the way."""

    blocked: str | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """What the gate did. `held` says why a candidate (`version`) waits: "window" (a freeze window, `window`) or
    "readiness" (the way back is not ready, `readiness`); `notify` is true the first time it is held so (once per
    candidate and window, or per candidate, across replicas and restarts), for the caller to say so."""

    promoted: bool
    reason: str
    version: str | None = None
    previous: str | None = None
    held: str | None = None
    notify: bool = False
    window: OpenWindow | None = None
    readiness: Any = None
    comparisons: tuple[Comparison, ...] = ()  # promote.compare's verdicts, held back ("compare") or promoted
    baselines: tuple[RecordedBaseline, ...] = ()  # recorded at this promotion


class Gate:
    def __init__(self, store: Store, registry: ModelRegistry, clock: Callable[[], float] = time.time,
                 alias_ttl: float = ALIAS_TTL, may_act: Callable[[str], bool] = lambda _: True,
                 policy: Policy | None = None, readiness: CheckReadiness | None = None,
                 prom: Prometheus | None = None) -> None:
        self.store = store
        self.prom = prom  # the comparison's and the baselines' range queries
        self._held_back: dict[tuple[str, str, str], tuple[float, tuple[Comparison, ...]]] = {}
        self.registry = registry
        self.clock = clock
        self.policy = policy  # its top-level freeze windows apply to every service
        self.readiness = readiness
        self._not_ready: dict[tuple[str, str, str | None], tuple[float, Verdict]] = {}
        # Whether this replica still holds the lease of the service's shard, asked right before aliases move.
        self.may_act = may_act
        self.aliases = AliasCache(registry, alias_ttl)
        # The relative SLOs' baselines, recorded at each promotion; evaluation and verification judge with it too.
        self.baselines = Baselines(store, self.aliases, prom, clock=clock) if prom is not None else None

    def freeze(self, service: Service, *, incident_id: int, bad_version: str | None, reason: str,
               block: bool = True) -> Frozen:
        """Freeze the service (auto-promotion stops) and, with `block`, tag the bad version rollback_blocked. The one
        freeze path: a plan run freezes before its first step (block=False), the close freezes and blocks."""
        problems = []
        if bad_version and block:
            try:
                self.registry.block(service.model, bad_version, incident_id)
            except RegistryError as exc:
                problems.append(str(exc))
        self.store.freeze(service=service.name, reason=reason, actor=AUTO_ACTOR, incident_id=incident_id,
                          blocked_version=bad_version)
        return Frozen(bad_version if block else None, tuple(problems))

    def consider_all(self, services: Iterable[Service]) -> list[tuple[Service, Decision]]:
        """The gate of every service, once per evaluation cycle: three store reads for all of them (services with
        an active incident, freezes, healthy_since) and the registry only for services healthy long enough."""
        services = [s for s in services if s.promote is not None]
        if not services:
            return []
        active, frozen, healthy = (self.store.active_services(), self.store.frozen_by_service(),
                                   self.store.healthy_since_all())
        everything = frozen.get(ALL)
        due = [s for s in services if s.name not in active and s.name not in frozen and everything is None
               and _held(healthy.get(s.name), self.clock(), s)]
        self.aliases.prefetch({s.model for s in due})
        return [(s, self._decide(s, s.name in active, frozen.get(s.name) or everything, healthy.get(s.name)))
                for s in services]

    def consider(self, service: Service) -> Decision:
        """The gate of one service, read from the store now (consider_all does every service at once)."""
        return self._decide(service, self.store.active_incident(service.name) is not None,
                            self.store.frozen(service.name) or self.store.frozen(ALL),
                            self.store.healthy_since(service.name))

    def _decide(self, service: Service, active: bool, frozen: Freeze | None, since: float | None) -> Decision:
        """Promote `from` to `to` when healthy long enough, not frozen (the service, or every service at once), out
        of any freeze window, the candidate is not blocked and the way back after the promotion is ready."""
        promote = service.promote
        if promote is None:
            return Decision(False, "no promotion policy")
        if active:
            return Decision(False, "an incident is open")
        if frozen:
            metrics.PROMOTIONS.labels(service=service.name, result="refused_frozen").inc()
            scope = "every service frozen" if frozen.service == ALL else "frozen"
            return Decision(False, f"{scope} since {time.strftime('%H:%M:%S', time.gmtime(frozen.frozen_at))} "
                                   f"UTC: {frozen.reason}")
        now = self.clock()
        if not _held(since, now, service):
            held = format_duration(now - since) if since else "0s"
            return Decision(False, f"healthy for {held} of {format_duration(promote.healthy_for)}")
        try:  # the aliases as read at most ALIAS_TTL ago: nothing to do is the common answer
            seen = self.aliases.get(service.model, max_age=min(self.aliases.ttl, promote.healthy_for))
        except RegistryError as exc:
            return Decision(False, f"registry unavailable: {exc}")
        if promote.from_ not in seen:
            return Decision(False, f"no @{promote.from_} version")
        if seen[promote.from_] == seen.get(promote.to):
            return Decision(False, f"@{promote.from_} is already @{promote.to}")
        if self.aliases.was_blocked(service.model, seen[promote.from_]):
            metrics.PROMOTIONS.labels(service=service.name, result="refused_blocked").inc()
            return Decision(False, f"version {seen[promote.from_]} is rollback_blocked")
        window = open_window(service, self.policy, now) if self.policy else None
        if window is not None:  # a ready candidate held back: said once per candidate and window
            metrics.PROMOTIONS.labels(service=service.name, result="refused_window").inc()
            version = seen[promote.from_]
            until = time.strftime("%a %Y-%m-%d %H:%M", time.gmtime(window.end))
            return Decision(False, f"freeze window ({window.reason}) until {until} UTC", version, held="window",
                            window=window,
                            notify=self.store.claim_request(f"once:window:{service.model}:{version}:{window.start}"))
        self.aliases.forget(service.model)  # about to act: read again now, and again after whatever happens
        try:
            candidate = self.registry.by_alias(service.model, promote.from_)
            current = self.registry.by_alias(service.model, promote.to)
        except RegistryError as exc:
            return Decision(False, f"registry unavailable: {exc}")
        if candidate is None:
            return Decision(False, f"no @{promote.from_} version")
        if current is not None and candidate.version == current.version:
            return Decision(False, f"@{promote.from_} is already @{promote.to}")
        if candidate.blocked:
            self.aliases.note_blocked(service.model, candidate.version)
            metrics.PROMOTIONS.labels(service=service.name, result="refused_blocked").inc()
            return Decision(False, f"version {candidate.version} is rollback_blocked")
        verdict = self._readiness(service, candidate.version, current.version if current else None)
        if verdict is not None and not verdict.ready:
            metrics.PROMOTIONS.labels(service=service.name, result="refused_not_ready").inc()
            return Decision(False, "the way back after this promotion is not ready", candidate.version,
                            held="readiness", readiness=verdict,
                            notify=self.store.claim_request(f"once:not-ready:{service.model}:{candidate.version}"))
        comparisons = self._compare(service, candidate.version, current.version if current else None)
        if any(c.verdict != compare.NOT_WORSE for c in comparisons):
            metrics.PROMOTIONS.labels(service=service.name, result="refused_compare").inc()
            judged = compare.WORSE if any(c.verdict == compare.WORSE for c in comparisons) else compare.NO_VERDICT
            reason = ("significantly worse than the champion" if judged == compare.WORSE
                      else "no comparison verdict yet")
            return Decision(False, reason, candidate.version, held="compare", comparisons=comparisons,
                            notify=self.store.claim_request(
                                f"once:compare:{service.model}:{candidate.version}:{judged}"))
        if not self.may_act(service.name):
            return Decision(False, "this replica no longer evaluates the service (its shard moved)")
        # One promotion per candidate, whichever replica gets here: the first to claim the key promotes.
        claim = f"promote:{service.model}:{candidate.version}:{promote.to}"
        if not self.store.claim_request(claim):
            return Decision(False, f"version {candidate.version} is being promoted by another replica")
        soak_end = time.time()  # the soak window the outgoing champion's baselines are read over ends here (Prometheus time)
        try:
            previous = self.registry.promote(service.model, version=candidate.version, to=promote.to,
                                             previous=promote.previous)
        except RegistryError as exc:
            self.store.release_request(claim)  # not promoted: a later cycle may try again
            return Decision(False, f"promotion failed: {exc}")
        finally:
            self.aliases.forget(service.model)
        recorded = self._record(service, previous, candidate.version, soak_end)
        self.store.set_healthy_since(service.name, None)
        self.store.audit(actor=AUTO_ACTOR, action="promote", result="ok",
                         detail={"service": service.name, "model": service.model, "version": candidate.version,
                                 "previous": previous})
        metrics.PROMOTIONS.labels(service=service.name, result="promoted").inc()
        return Decision(True, "promoted", candidate.version, previous, comparisons=comparisons, baselines=recorded)

    def _record(self, service: Service, outgoing: str | None, promoted: str, until: float
                ) -> tuple[RecordedBaseline, ...]:
        """The outgoing champion's baselines, measured over the soak window that ended at `until`."""
        if self.baselines is None or outgoing is None or not any(s.relative for s in service.slos):
            return ()
        step = self.policy.evaluate_every if self.policy else 15.0
        try:
            return tuple(self.baselines.record(service, outgoing=outgoing, promoted=promoted, step=step, now=until))
        except Exception:  # noqa: BLE001 - the promotion happened; a baseline not recorded is no data, never a breach
            log.exception("%s: recording the baselines of v%s failed", service.name, outgoing)
            return ()

    def _compare(self, service: Service, candidate: str, champion: str | None) -> tuple[Comparison, ...]:
        """promote.compare's verdict on each listed SLO, candidate against champion over the soak window; () when
        the policy compares nothing or there is no champion to compare with (the first release). A comparison that
        held the candidate back is trusted for COMPARE_RECHECK (at most `healthy_for`)."""
        promote = service.promote
        spec = promote.compare if promote else None
        if promote is None or spec is None or champion is None or self.prom is None:
            return ()
        key = (service.name, candidate, champion)
        hit = self._held_back.get(key)
        if hit is not None and self.clock() - hit[0] < min(COMPARE_RECHECK, promote.healthy_for):
            return hit[1]
        slos = {slo.name: slo for slo in service.slos}
        step = self.policy.evaluate_every if self.policy else 15.0
        comparisons = tuple(
            compare.compare(self.prom, slo=name, query=slos[name].query or "",
                            higher_is_better=slos[name].higher_is_better, label=spec.label, candidate=candidate,
                            champion=champion, window=promote.healthy_for, step=step, confidence=spec.confidence,
                            min_samples=spec.min_samples, now=time.time())
            for name in spec.slos)
        if any(c.verdict != compare.NOT_WORSE for c in comparisons):
            self._held_back[key] = (self.clock(), comparisons)
        else:
            self._held_back.pop(key, None)
        return comparisons


    def _readiness(self, service: Service, candidate: str, outgoing: str | None) -> Verdict | None:
        """The readiness of the way back after promoting `candidate` over `outgoing`; a "not ready" is trusted
        for NOT_READY_RECHECK."""
        if self.readiness is None:
            return None
        key = (service.name, candidate, outgoing)
        hit = self._not_ready.get(key)
        if hit is not None and self.clock() - hit[0] < NOT_READY_RECHECK:
            return hit[1]
        verdict = self.readiness(service, candidate, outgoing)
        if verdict.ready:
            self._not_ready.pop(key, None)
        else:
            self._not_ready[key] = (self.clock(), verdict)
        return verdict


def _held(since: float | None, now: float, service: Service) -> bool:
    return service.promote is not None and since is not None and now - since >= service.promote.healthy_for


class AliasCache:
    """Each model's aliases as read at most `ttl` seconds ago (time.monotonic). Many models missing at once are
    read by listing every registered model, a page per 1,000, rather than one read per model."""

    def __init__(self, registry: ModelRegistry, ttl: float) -> None:
        self.registry = registry
        self.ttl = ttl
        self._seen: dict[str, tuple[float, dict[str, str]]] = {}
        self._blocked: dict[tuple[str, str], float] = {}

    def get(self, model: str, max_age: float | None = None) -> dict[str, str]:
        hit = self._seen.get(model)
        if hit is not None and time.monotonic() - hit[0] < (self.ttl if max_age is None else max_age):
            return hit[1]
        aliases = self.registry.aliases(model)
        self._seen[model] = (time.monotonic(), aliases)
        return aliases

    def prefetch(self, models: set[str]) -> None:
        now = time.monotonic()
        missing = {m for m in models if m not in self._seen or now - self._seen[m][0] >= self.ttl}
        if len(missing) <= ALIAS_POINT_READS:
            return  # read one by one by get(), as each is needed
        try:
            listed = self.registry.all_aliases()
        except RegistryError as exc:
            log.warning("listing the registry's aliases failed (each model is read alone instead): %s", exc)
            return
        for model in missing:
            self._seen[model] = (now, listed.get(model, {}))

    def forget(self, model: str) -> None:
        self._seen.pop(model, None)

    def note_blocked(self, model: str, version: str) -> None:
        """A fresh read found this version rollback_blocked: trusted as such for `ttl`."""
        self._blocked[(model, version)] = time.monotonic()

    def was_blocked(self, model: str, version: str) -> bool:
        at = self._blocked.get((model, version))
        return at is not None and time.monotonic() - at < self.ttl
