"""SLO and service state: each SLO's last status and breach clock, and each service's healthy_since.

Called through `Store` by bot.slo.evaluation (`slo_states` / `put_slo_states` and `healthy_since_all` /
`set_healthy_since`, one read and one write per evaluation cycle) and bot.slo.gate (`healthy_since`,
`set_healthy_since`, for the promotion gate). Kept here so a restart resumes a breach's `for:` clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

from sqlalchemy import bindparam, insert, select, update

from bot.infra.store.database import Database, to_record
from bot.infra.store.fitting import fit
from bot.infra.store.tables import service_state, slo_state


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
            changed = conn.execute(update(slo_state).where(slo_state.c.service == state.service,
                                                           slo_state.c.slo == state.slo).values(**values))
            if changed.rowcount == 0:
                conn.execute(insert(slo_state).values(**values))

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
        """Insert or update many SLO states in one transaction (bot.slo.evaluation, once per cycle)."""
        rows = [{f.name: getattr(state, f.name) for f in fields(SloState)} for state in states]
        for row in rows:  # compared with the stored keys below, so as stored
            row["service"], row["slo"] = self.slo_key(row["service"], row["slo"])
        if not rows:
            return
        columns = ("status", "value", "breach_since", "updated_at")
        with self.db.begin() as conn:
            known = {(row.service, row.slo) for row in conn.execute(select(slo_state.c.service, slo_state.c.slo))}
            old = [{**{f"new_{c}": row[c] for c in columns}, "key_service": row["service"], "key_slo": row["slo"]}
                   for row in rows if (row["service"], row["slo"]) in known]
            new = [row for row in rows if (row["service"], row["slo"]) not in known]
            if old:
                conn.execute(update(slo_state)
                             .where(slo_state.c.service == bindparam("key_service"),
                                    slo_state.c.slo == bindparam("key_slo"))
                             .values({c: bindparam(f"new_{c}") for c in columns}), old)
            if new:
                conn.execute(insert(slo_state), new)

    def healthy_since_all(self) -> dict[str, float | None]:
        """healthy_since of every service that has a stored state: one read for a whole evaluation cycle."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(service_state.c.service, service_state.c.healthy_since)).all()
        return {row.service: row.healthy_since for row in rows}

    def put_healthy_since(self, changes: dict[str, float | None]) -> None:
        """Set healthy_since of many services in one transaction (bot.slo.evaluation, once per cycle)."""
        if not changes:
            return
        now = self.db.clock()
        with self.db.begin() as conn:
            known = {row[0] for row in conn.execute(select(service_state.c.service))}
            old = [{"key": s, "new_since": v, "now": now} for s, v in changes.items() if s in known]
            new = [{"service": s, "healthy_since": v, "updated_at": now} for s, v in changes.items() if s not in known]
            if old:
                conn.execute(update(service_state).where(service_state.c.service == bindparam("key"))
                             .values(healthy_since=bindparam("new_since"), updated_at=bindparam("now")), old)
            if new:
                conn.execute(insert(service_state), new)

    def healthy_since(self, service: str) -> float | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(select(service_state.c.healthy_since)
                               .where(service_state.c.service == service)).first()
        return row[0] if row else None

    def set_healthy_since(self, service: str, since: float | None) -> None:
        with self.db.begin() as conn:
            changed = conn.execute(update(service_state).where(service_state.c.service == service)
                                   .values(healthy_since=since, updated_at=self.db.clock()))
            if changed.rowcount == 0:
                conn.execute(insert(service_state).values(service=service, healthy_since=since,
                                                          updated_at=self.db.clock()))
