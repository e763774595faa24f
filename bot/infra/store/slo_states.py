"""SLO and service state: each SLO's last status and breach clock, and each service's healthy_since.

Called through `Store` by bot.slo.evaluation (`slo_states` / `put_slo_states` and `healthy_since_all` /
`set_healthy_since`, one read and one write per evaluation cycle) and bot.slo.gate (`healthy_since`,
`set_healthy_since`, for the promotion gate). Kept here so a restart resumes a breach's `for:` clock.

Every write is one INSERT … ON CONFLICT DO UPDATE (`Database.insert`), never a read followed by an insert, so
replicas writing the same keys at once each succeed and the last write wins. A batch is one executemany of
that statement, its rows in key order: two replicas upserting overlapping batches take the rows' locks in
the same order and wait for each other instead of deadlocking (PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import select

from bot.infra.store.database import Database, to_record
from bot.infra.store.fitting import fit
from bot.infra.store.tables import service_state, slo_state

_SLO_COLUMNS = ("status", "value", "breach_since", "updated_at")  # what an upsert of a known SLO replaces


@dataclass(frozen=True)
class SloState:
    service: str
    slo: str
    status: str
    value: float | None
    breach_since: float | None
    updated_at: float


class SloStates:
    def __init__(self, db: Database) -> None:
        self.db = db

    def slo_state(self, service: str, slo: str) -> SloState | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(select(slo_state).where(slo_state.c.service == service,
                                                       slo_state.c.slo == slo)).first()
        return to_record(SloState, row) if row else None

    def put_slo_state(self, state: SloState) -> None:
        values = {f.name: getattr(state, f.name) for f in fields(SloState)}
        with self.db.begin() as conn:
            conn.execute(self._upsert_slo(), values)

    def _upsert_slo(self) -> Any:
        stmt = self.db.insert(slo_state)
        return stmt.on_conflict_do_update(index_elements=[slo_state.c.service, slo_state.c.slo],
                                          set_={c: stmt.excluded[c] for c in _SLO_COLUMNS})

    def slo_states(self) -> dict[tuple[str, str], SloState]:
        """Every stored SLO state by (service, slo) as stored (see `slo_key`): one read for a whole cycle."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(slo_state)).all()
        return {(row.service, row.slo): to_record(SloState, row) for row in rows}

    @staticmethod
    def slo_key(service: str, slo: str) -> tuple[str, str]:
        """The key `slo_states` has for this SLO: its names as their columns store them (a name longer than
        its column is stored shortened, and must be looked up shortened too)."""
        return (fit(service, getattr(slo_state.c.service.type, "length", None)),
                fit(slo, getattr(slo_state.c.slo.type, "length", None)))

    def put_slo_states(self, states: Iterable[SloState]) -> None:
        """Insert or update many SLO states in one transaction, one statement (bot.slo.evaluation, once per
        cycle). A state given twice for one key (as stored, see `slo_key`) is written once: the last one."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for state in states:
            row = {f.name: getattr(state, f.name) for f in fields(SloState)}
            row["service"], row["slo"] = key = self.slo_key(state.service, state.slo)
            rows[key] = row
        if not rows:
            return
        with self.db.begin() as conn:
            conn.execute(self._upsert_slo(), [rows[key] for key in sorted(rows)])  # key order: see the docstring

    def healthy_since_all(self) -> dict[str, float | None]:
        """healthy_since of every service that has a stored state: one read for a whole evaluation cycle."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(service_state.c.service, service_state.c.healthy_since)).all()
        return {row.service: row.healthy_since for row in rows}

    def put_healthy_since(self, changes: dict[str, float | None]) -> None:
        """Set healthy_since of many services in one transaction, one statement (bot.slo.evaluation, once per
        cycle)."""
        if not changes:
            return
        now = self.db.clock()
        with self.db.begin() as conn:
            conn.execute(self._upsert_service(), [{"service": service, "healthy_since": changes[service],
                                                   "updated_at": now} for service in sorted(changes)])

    def _upsert_service(self) -> Any:
        stmt = self.db.insert(service_state)
        return stmt.on_conflict_do_update(index_elements=[service_state.c.service],
                                          set_={"healthy_since": stmt.excluded.healthy_since,
                                                "updated_at": stmt.excluded.updated_at})

    def healthy_since(self, service: str) -> float | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(select(service_state.c.healthy_since)
                               .where(service_state.c.service == service)).first()
        return row[0] if row else None

    def set_healthy_since(self, service: str, since: float | None) -> None:
        with self.db.begin() as conn:
            conn.execute(self._upsert_service(), {"service": service, "healthy_since": since,
                                                  "updated_at": self.db.clock()})
