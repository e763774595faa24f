"""Rollback drills: the Drill record and the drills table, one row per drill the bot ran.

Written through `Store.record_drill` by bot.incidents.drills (after a promotion, on /rollback drill); read by
/rollback history and /rollback report (bot.incidents.oncall, bot.incidents.report). A dry-run drill has no
`recover_seconds`; a staging drill has it when its verification saw the SLOs stable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select

from bot.infra.store.database import Database, inserted_id, to_record
from bot.infra.store.tables import drills


@dataclass(frozen=True)
class Drill:
    id: int
    service: str
    mode: str  # dry_run | staging
    trigger: str  # promotion | command
    actor: str
    version: str | None  # the release the drill rolls back from (the one just promoted)
    baseline: str | None  # where it rolls back to (the version just replaced)
    ok: bool
    steps_planned: int
    steps_total: int
    planning_seconds: float
    recover_seconds: float | None
    restored: bool | None
    summary: str
    started_at: float
    finished_at: float
    detail: dict[str, Any] = field(default_factory=dict)


class Drills:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record_drill(self, *, service: str, mode: str, trigger: str, actor: str, version: str | None,
                     baseline: str | None, ok: bool, steps_planned: int, steps_total: int, planning_seconds: float,
                     summary: str, started_at: float, recover_seconds: float | None = None,
                     restored: bool | None = None, detail: dict[str, Any] | None = None) -> Drill:
        values = dict(service=service, mode=mode, trigger=trigger, actor=actor, version=version, baseline=baseline,
                      ok=ok, steps_planned=steps_planned, steps_total=steps_total, planning_seconds=planning_seconds,
                      recover_seconds=recover_seconds, restored=restored, summary=summary,
                      detail=json.loads(json.dumps(detail or {}, default=str)), started_at=started_at,
                      finished_at=self.db.clock())
        with self.db.begin() as conn:
            drill_id = inserted_id(conn.execute(insert(drills).values(**values)))
            row = conn.execute(select(drills).where(drills.c.id == drill_id)).one()
        return to_record(Drill, row)

    def recent_drills(self, service: str, limit: int = 10, since: float | None = None) -> list[Drill]:
        """The service's last drills, newest first."""
        query = select(drills).where(drills.c.service == service)
        if since is not None:
            query = query.where(drills.c.started_at >= since)
        with self.db.engine.connect() as conn:
            rows = conn.execute(query.order_by(drills.c.started_at.desc(), drills.c.id.desc()).limit(limit)).all()
        return [to_record(Drill, r) for r in rows]

    def last_drills(self, services: Sequence[str] | None = None) -> dict[str, Drill]:
        """Each service's newest drill, in one read (the report of many services)."""
        newest = select(func.max(drills.c.id).label("id")).group_by(drills.c.service)
        if services is not None:
            newest = newest.where(drills.c.service.in_(list(services)))
        query = select(drills).where(drills.c.id.in_(newest.scalar_subquery()))
        with self.db.engine.connect() as conn:
            return {d.service: d for d in (to_record(Drill, r) for r in conn.execute(query).all())}
