"""Recorded SLO baselines: the RecordedBaseline record and the slo_baselines table.

Written through `Store.record_baselines` by the promotion gate (bot.slo.gate, through bot.slo.baselines) right before
it moves the alias: for each relative SLO, the outgoing champion's median over the soak window. Rows are inserted
once and never changed, so a baseline survives restarts and is the same on every replica. Read by bot.slo.baselines
(which picks the one that judges the version now serving) and readiness.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import insert, select

from bot.infra.store.database import Database, to_record
from bot.infra.store.tables import slo_baselines


@dataclass(frozen=True)
class RecordedBaseline:
    id: int
    service: str
    slo: str
    version: str  # the version measured (the outgoing champion of that promotion)
    promoted: str  # the version that promotion moved in
    value: float
    samples: int
    window_seconds: float
    recorded_at: float


@dataclass(frozen=True)
class NewBaseline:
    """What the gate measured, before it is stored."""

    service: str
    slo: str
    version: str
    promoted: str
    value: float
    samples: int
    window_seconds: float


class Baselines:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record_baselines(self, new: Iterable[NewBaseline]) -> list[RecordedBaseline]:
        new = list(new)
        rows = [dict(service=b.service, slo=b.slo, version=b.version, promoted=b.promoted, value=b.value,
                     samples=b.samples, window_seconds=b.window_seconds, recorded_at=self.db.clock()) for b in new]
        if not rows:
            return []
        with self.db.begin() as conn:
            conn.execute(insert(slo_baselines), rows)
        return self.baselines([new[0].service])[-len(rows):]

    def baselines(self, services: Sequence[str] | None = None) -> list[RecordedBaseline]:
        """Every recorded baseline of these services (all when None), oldest first."""
        query = select(slo_baselines)
        if services is not None:
            query = query.where(slo_baselines.c.service.in_(list(services)))
        with self.db.engine.connect() as conn:
            rows = conn.execute(query.order_by(slo_baselines.c.id)).all()
        return [to_record(RecordedBaseline, r) for r in rows]
