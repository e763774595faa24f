"""Freezes: the Freeze record and the freezes table, one row per service whose automatic promotion is off.

Called through `Store` by bot.slo.gate (`freeze` when a plan starts and when an incident closes, `frozen` before
promoting), bot.incidents.oncall (/rollback freeze, unfreeze and status), bot.incidents.close (the checklist)
and the demo (sandbox.demo). Freezing a frozen service replaces its row (every column but the service): one
INSERT … ON CONFLICT DO UPDATE, so replicas freezing one service at once each succeed and the last one wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from bot.infra.store.database import Database, to_record
from bot.infra.store.tables import freezes

# The service of the org-wide stop's row (`/rollback freeze --all`): no service is named "*".
ALL = "*"


@dataclass(frozen=True)
class Freeze:
    service: str
    frozen_at: float
    reason: str
    incident_id: int | None
    blocked_version: str | None
    actor: str


class Freezes:
    def __init__(self, db: Database) -> None:
        self.db = db

    def freeze(self, *, service: str, reason: str, actor: str, incident_id: int | None = None,
               blocked_version: str | None = None) -> Freeze:
        """Freeze `service` (or replace its freeze); the row as this call wrote it, read back in the same
        transaction (which holds the row's lock), so a freeze another replica writes right after is not it."""
        values = dict(frozen_at=self.db.clock(), reason=reason, incident_id=incident_id,
                      blocked_version=blocked_version, actor=actor)
        stmt = self.db.insert(freezes).values(service=service, **values)
        with self.db.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=[freezes.c.service], set_=values))
            # Read back rather than RETURNING: a RETURNING of the Text column (its fitted type) has no cache key.
            row = conn.execute(select(freezes).where(freezes.c.service == service)).one()
        return to_record(Freeze, row)

    def frozen(self, service: str) -> Freeze | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(select(freezes).where(freezes.c.service == service)).first()
        return to_record(Freeze, row) if row else None

    def all_frozen(self) -> list[Freeze]:
        with self.db.engine.connect() as conn:
            return [to_record(Freeze, r) for r in conn.execute(select(freezes).order_by(freezes.c.service)).all()]

    def frozen_by_service(self) -> dict[str, Freeze]:
        """Every freeze by service: one read for a whole evaluation cycle (bot.slo.gate)."""
        return {f.service: f for f in self.all_frozen()}

    def unfreeze(self, service: str) -> bool:
        with self.db.begin() as conn:
            return conn.execute(freezes.delete().where(freezes.c.service == service)).rowcount == 1
