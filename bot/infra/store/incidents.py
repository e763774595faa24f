"""Incidents: the Incident record, its states, and every read and write of the incidents table.

Called through `Store` by bot.incidents (service, runs, verify and recovery through states.move; detection, close,
oncall, report, alerts), bot.slack.timeline (the warning's message_ts) and bot.slo.gate (`active_incident`). What must
happen once is decided by the database: `transition` and `set_if` are conditional UPDATEs, and "one active incident
per service" is the UNIQUE active_service column, so both hold across threads and across processes sharing the
database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from bot.infra.store.claims import Claim, ClaimColumns, claim, release
from bot.infra.store.database import Database, inserted_id, to_record
from bot.infra.store.tables import incidents

_WARNING_CLAIM = ClaimColumns(incidents, incidents.c.id, incidents.c.message_ts, incidents.c.warn_claimed_by,
                              incidents.c.warn_claim_until)

# halted: a step failed or the bot restarted mid-plan; it waits for an approver to retry/resume or stop.
ACTIVE_STATES = ("open", "executing", "halted", "verifying")
FINAL_STATES = ("recovered", "verify_failed", "failed", "dismissed")


@dataclass(frozen=True)
class Incident:
    id: int
    service: str
    active_service: str | None
    state: str
    trigger: str
    detail: dict[str, Any]
    baseline: dict[str, Any]
    breach_started_at: float | None
    opened_at: float
    warned_at: float | None
    channel: str | None
    message_ts: str | None
    progress_ts: str | None
    requested_by: str | None
    first_approver: str | None
    approved_by: str | None
    approved_at: float | None
    executed_at: float | None
    recovered_at: float | None
    finished_at: float | None
    error: str | None
    verification: dict[str, Any]
    resume_from: int | None
    halt_kind: str | None
    auto_at: float | None
    armed_by: str | None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def alerted_at(self) -> float:
        """When people were told: the warning, else the opening (an incident whose warning was never posted)."""
        return self.warned_at if self.warned_at is not None else self.opened_at

    @property
    def alert_to_stable(self) -> float | None:
        """Seconds from the alert to verified recovery, the time the recover target is about; None unless
        recovered (the summary's verdict and /rollback report)."""
        if self.state != "recovered" or self.recovered_at is None:
            return None
        return max(0.0, self.recovered_at - self.alerted_at)


class Incidents:
    def __init__(self, db: Database) -> None:
        self.db = db

    def open_incident(self, *, service: str, trigger: str, detail: dict[str, Any], baseline: dict[str, Any],
                      breach_started_at: float | None, channel: str,
                      requested_by: str | None = None, auto_at: float | None = None,
                      armed_by: str | None = None, first_approver: str | None = None) -> Incident | None:
        """Create an incident, or return None when the service already has an active one."""
        now = self.db.clock()
        try:
            with self.db.begin() as conn:
                result = conn.execute(insert(incidents).values(
                    service=service, active_service=service, state="open", trigger=trigger,
                    detail=detail, baseline=baseline, breach_started_at=breach_started_at,
                    opened_at=now, channel=channel, requested_by=requested_by, auto_at=auto_at,
                    armed_by=armed_by, first_approver=first_approver))
                new_id = inserted_id(result)
        except IntegrityError:
            # The UNIQUE active_service column refused a second active incident for this service.
            return None
        return self.incident(new_id)

    def incident(self, incident_id: int) -> Incident:
        with self.db.engine.connect() as conn:
            row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).one()
        return to_record(Incident, row)

    def find_incident(self, incident_id: int) -> Incident | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).first()
        return to_record(Incident, row) if row else None

    def active_incident(self, service: str) -> Incident | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(select(incidents).where(incidents.c.active_service == service)).first()
        return to_record(Incident, row) if row else None

    def active_services(self) -> frozenset[str]:
        """Every service with an active incident: one read for a whole evaluation cycle (bot.slo.gate)."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(incidents.c.active_service).where(incidents.c.active_service.is_not(None)))
            return frozenset(row[0] for row in rows)

    def incidents_in(self, states: tuple[str, ...]) -> list[Incident]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(incidents).where(incidents.c.state.in_(states))
                                .order_by(incidents.c.id)).all()
        return [to_record(Incident, r) for r in rows]

    def last_warned_finished_at(self, service: str) -> float | None:
        """When the service's most recent incident about a breach (detected or alerted, not a person's
        request) ended; None if it never had one that ended."""
        with self.db.engine.connect() as conn:
            row = conn.execute(select(incidents.c.finished_at).where(incidents.c.service == service,
                                                                     incidents.c.trigger != "manual",
                                                                     incidents.c.finished_at.is_not(None))
                               .order_by(incidents.c.finished_at.desc()).limit(1)).first()
        return row[0] if row else None

    def recent_incidents(self, service: str | None = None, limit: int = 10) -> list[Incident]:
        query = select(incidents).order_by(incidents.c.id.desc()).limit(limit)
        if service:
            query = query.where(incidents.c.service == service)
        with self.db.engine.connect() as conn:
            return [to_record(Incident, r) for r in conn.execute(query).all()]

    def incidents_since(self, since: float, services: Sequence[str] | None = None) -> list[Incident]:
        """Every incident opened at or after `since` (of `services`, or of all), oldest first, in one read
        (/rollback report)."""
        query = select(incidents).where(incidents.c.opened_at >= since)
        if services is not None:
            query = query.where(incidents.c.service.in_(list(services)))
        with self.db.engine.connect() as conn:
            return [to_record(Incident, r) for r in conn.execute(query.order_by(incidents.c.id)).all()]

    def transition(self, incident_id: int, from_states: tuple[str, ...], to_state: str, *,
                   first_approver_other_than: str | None = None, auto: bool | None = None,
                   **values: Any) -> Incident | None:
        """Move an incident to `to_state` only if it is in one of `from_states`; None if it was not.

        This conditional UPDATE is what makes an approval, a dismissal or a verdict happen once, however
        many clicks, retries, threads or processes race for it. `first_approver_other_than` adds the two-person rule
        (another approver must have given the first approval); `auto` requires the automatic run to be (still)
        armed or not. A final state also frees the service (active_service NULL) and sets finished_at.
        """
        values["state"] = to_state
        if to_state in FINAL_STATES:
            values["active_service"] = None
            values.setdefault("finished_at", self.db.clock())
        conditions = [incidents.c.id == incident_id, incidents.c.state.in_(from_states)]
        if first_approver_other_than is not None:
            conditions += [incidents.c.first_approver.is_not(None),
                           incidents.c.first_approver != first_approver_other_than]
        if auto is not None:
            conditions.append(incidents.c.auto_at.is_not(None) if auto else incidents.c.auto_at.is_(None))
        with self.db.begin() as conn:
            result = conn.execute(update(incidents).where(*conditions).values(**values))
        return self.incident(incident_id) if result.rowcount == 1 else None

    def set_if(self, incident_id: int, state: str, column: str, expected: Any, value: Any) -> Incident | None:
        """Set one column only while the incident is in `state` and the column still holds `expected`
        (e.g. record who requested a rollback, once; disarm an automatic rollback, once)."""
        col = incidents.c[column]
        condition = col.is_(None) if expected is None else col == expected
        with self.db.begin() as conn:
            result = conn.execute(update(incidents).where(incidents.c.id == incident_id, incidents.c.state == state,
                                                          condition).values({column: value}))
        return self.incident(incident_id) if result.rowcount == 1 else None

    def update_incident(self, incident_id: int, **values: Any) -> Incident:
        """Set columns unconditionally (message_ts, verification progress) and return the incident afterwards."""
        with self.db.begin() as conn:
            conn.execute(update(incidents).where(incidents.c.id == incident_id).values(**values))
        return self.incident(incident_id)

    # -- the warning's claim, for many replicas on one database (bot.slack.timeline.post_warning)

    def claim_warning(self, incident_id: int, replica_id: str, ttl: float) -> Claim | None:
        """Claim posting the warning of `incident_id` (still without message_ts) for `replica_id` for `ttl` seconds
        (bot.infra.store.claims); None when it is posted, claimed by another replica right now, or gone."""
        return claim(self.db, _WARNING_CLAIM, incident_id, replica_id, ttl)

    def release_warning(self, incident_id: int, replica_id: str) -> None:
        """Give `replica_id`'s warning claim up now (its post failed): the next claim searches the channel first."""
        release(self.db, _WARNING_CLAIM, incident_id, replica_id)

    def mark_warned(self, incident_id: int, message_ts: str, warned_at: float) -> Incident | None:
        """Store the warning's ts once: None when the incident already has one (set by another replica)."""
        with self.db.begin() as conn:
            result = conn.execute(update(incidents).where(incidents.c.id == incident_id,
                                                          incidents.c.message_ts.is_(None))
                                  .values(message_ts=message_ts, warned_at=warned_at))
        return self.incident(incident_id) if result.rowcount == 1 else None
