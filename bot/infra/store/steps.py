"""Plan steps: the Step record and the steps table, one row per executor run of an incident's rollback plan.

Called through `Store` by bot.incidents.runner (`start_step` before an executor runs, `finish_step` after) and by
bot.incidents.runs, bot.incidents.recovery and bot.incidents.close (`steps`: where a halted or interrupted plan
resumes, the outcomes of earlier steps, the close's checklist).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update

from bot.infra.store.database import Database, inserted_id, to_record
from bot.infra.store.tables import steps


@dataclass(frozen=True)
class Step:
    id: int
    incident_id: int
    position: int
    executor: str
    status: str
    plan: dict[str, Any]
    outcome: dict[str, Any] | None
    started_at: float
    finished_at: float | None


class Steps:
    def __init__(self, db: Database) -> None:
        self.db = db

    def start_step(self, incident_id: int, position: int, executor: str, plan: dict[str, Any]) -> int:
        with self.db.begin() as conn:
            result = conn.execute(insert(steps).values(incident_id=incident_id, position=position,
                                                       executor=executor, status="running", plan=plan,
                                                       started_at=self.db.clock()))
        return int(inserted_id(result))

    def finish_step(self, step_id: int, ok: bool, outcome: dict[str, Any]) -> None:
        with self.db.begin() as conn:
            conn.execute(update(steps).where(steps.c.id == step_id).values(
                status="done" if ok else "failed", outcome=outcome, finished_at=self.db.clock()))

    def steps(self, incident_id: int) -> list[Step]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(steps).where(steps.c.incident_id == incident_id)
                                .order_by(steps.c.position, steps.c.id)).all()
        return [to_record(Step, r) for r in rows]
