"""Freeze and the promotion gate: after a rollback the bad version is blocked and the service frozen, and
the gate promotes a candidate only when nothing says no.

Called by bot.incidents: `freeze` when a plan starts and when an incident closes (recovered, verification
failed, or a failed plan), `consider` every evaluation cycle. The freeze is stored (it survives restarts) and
the bad version carries the MLflow tag rollback_blocked=true with the incident id, so other tooling sees it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.infra import metrics
from bot.infra.actors import AUTO_ACTOR
from bot.infra.model_registry import ModelRegistry, RegistryError
from bot.infra.store import Store
from bot.slo.durations import format_duration
from bot.slo.policy import Service

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frozen:
    """What a freeze did: the version it tagged rollback_blocked (if any) and what failed on the way."""

    blocked: str | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    version: str | None = None
    previous: str | None = None


class Gate:
    def __init__(self, store: Store, registry: ModelRegistry, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock

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

    def consider(self, service: Service) -> Decision:
        """Promote `from` to `to` when healthy long enough, not frozen, and the candidate is not blocked."""
        promote = service.promote
        if promote is None:
            return Decision(False, "no promotion policy")
        if self.store.active_incident(service.name):
            return Decision(False, "an incident is open")
        frozen = self.store.frozen(service.name)
        if frozen:
            metrics.PROMOTIONS.labels(service=service.name, result="refused_frozen").inc()
            return Decision(False, f"frozen since {time.strftime('%H:%M:%S', time.gmtime(frozen.frozen_at))} "
                                   f"UTC: {frozen.reason}")
        since = self.store.healthy_since(service.name)
        now = self.clock()
        if since is None or now - since < promote.healthy_for:
            held = format_duration(now - since) if since else "0s"
            return Decision(False, f"healthy for {held} of {format_duration(promote.healthy_for)}")
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
            metrics.PROMOTIONS.labels(service=service.name, result="refused_blocked").inc()
            return Decision(False, f"version {candidate.version} is rollback_blocked")
        try:
            previous = self.registry.promote(service.model, version=candidate.version, to=promote.to,
                                             previous=promote.previous)
        except RegistryError as exc:
            return Decision(False, f"promotion failed: {exc}")
        self.store.set_healthy_since(service.name, None)
        self.store.audit(actor=AUTO_ACTOR, action="promote", result="ok",
                         detail={"service": service.name, "model": service.model, "version": candidate.version,
                                 "previous": previous})
        metrics.PROMOTIONS.labels(service=service.name, result="promoted").inc()
        return Decision(True, "promoted", candidate.version, previous)
