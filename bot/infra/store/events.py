"""Timeline events: the Event record and the events table, the outbox of an incident's Slack thread.

Called through `Store` by bot.slack.timeline, which adds an event, claims it, posts what is unposted and marks it
posted with its Slack ts (so a restart posts what it had not), and by bot.incidents.recovery (`events`, to see
whether an incident's summary was written).

Many replicas share the outbox: an event is posted by the replica that claimed it (`claim_event`: one conditional
UPDATE, by the database's clock), so two replicas flushing the same incident never both post it. A claim that
expired with the event still unposted means its poster may have died after Slack took the message and before
`mark_posted`: the new claim says so (`Claim.taken_over`), and the timeline reads the thread before posting again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.sql.elements import ColumnElement

from bot.infra.store.database import Database, inserted_id, to_record
from bot.infra.store.tables import events


@dataclass(frozen=True)
class Event:
    id: int
    incident_id: int
    at: float
    kind: str
    text: str
    data: dict[str, Any]
    slack_ts: str | None


@dataclass(frozen=True)
class Claim:
    """A claim on an event (or an incident's warning, bot.infra.store.incidents.claim_warning) as it was taken:
    held by `owner` until `until` (the database's clock). `taken_over`: an earlier claim, by `previous_owner`
    (possibly this same replica), had expired unposted, so that message may be in Slack already."""

    key: int
    owner: str
    until: float
    taken_over: bool
    previous_owner: str | None


class Events:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add_event(self, incident_id: int, kind: str, text: str, data: dict[str, Any] | None = None,
                  at: float | None = None) -> Event:
        with self.db.begin() as conn:
            result = conn.execute(insert(events).values(incident_id=incident_id, at=at or self.db.clock(),
                                                        kind=kind, text=text, data=data or {}))
            row = conn.execute(select(events).where(events.c.id == inserted_id(result))).one()
        return to_record(Event, row)

    def mark_posted(self, event_id: int, slack_ts: str) -> None:
        with self.db.begin() as conn:
            conn.execute(update(events).where(events.c.id == event_id).values(slack_ts=slack_ts))

    def claim_event(self, event_id: int, replica_id: str, ttl: float) -> Claim | None:
        """Claim the unposted event `event_id` for `replica_id` for `ttl` seconds; None when it is posted, claimed
        by someone else right now, or gone. The claim is one conditional UPDATE on the claim as it was read (its
        holder and expiry), so of two replicas racing for it exactly one wins and the winner knows whether an
        earlier, expired claim existed."""
        with self.db.engine.connect() as conn:  # read outside the write: SQLite cannot upgrade a stale read snapshot
            seen = conn.execute(select(events.c.claimed_by, events.c.claim_until)
                                .where(events.c.id == event_id, events.c.slack_ts.is_(None))).first()
        if seen is None:
            return None
        now = self.db.now()
        with self.db.begin() as conn:
            result = conn.execute(
                update(events).where(events.c.id == event_id, events.c.slack_ts.is_(None),
                                     *_claim_free(events.c.claim_until, now),
                                     events.c.claimed_by.is_not_distinct_from(seen.claimed_by),
                                     events.c.claim_until.is_not_distinct_from(seen.claim_until))
                .values(claimed_by=replica_id, claim_until=now + ttl).returning(events.c.claim_until))
            until = result.scalar_one_or_none()
        if until is None:
            return None
        return Claim(event_id, replica_id, float(until), seen.claimed_by is not None, seen.claimed_by)

    def release_event(self, event_id: int, replica_id: str) -> None:
        """Give `replica_id`'s claim up now (its post failed): anyone may claim the event at once. The claimer's
        name stays, so the next claim counts as taken over and reads the thread first (a post that timed out may
        have reached Slack)."""
        with self.db.begin() as conn:
            conn.execute(update(events).where(events.c.id == event_id, events.c.claimed_by == replica_id,
                                              events.c.slack_ts.is_(None))
                         .values(claim_until=None))

    def events(self, incident_id: int) -> list[Event]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(events).where(events.c.incident_id == incident_id)
                                .order_by(events.c.id)).all()
        return [to_record(Event, r) for r in rows]

    def unposted_events(self, incident_id: int | None = None) -> list[Event]:
        query = select(events).where(events.c.slack_ts.is_(None)).order_by(events.c.id)
        if incident_id is not None:
            query = query.where(events.c.incident_id == incident_id)
        with self.db.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [to_record(Event, r) for r in rows]


def _claim_free(claim_until: ColumnElement[float], now: ColumnElement[float]) -> tuple[ColumnElement[bool]]:
    """The claim column is unset or expired by the database's clock `now`."""
    return (claim_until.is_(None) | (claim_until < now),)
