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

from bot.infra.store.claims import Claim, ClaimColumns, claim, release
from bot.infra.store.database import Database, inserted_id, to_record
from bot.infra.store.tables import events

_CLAIM = ClaimColumns(events, events.c.id, events.c.slack_ts, events.c.claimed_by, events.c.claim_until)


@dataclass(frozen=True)
class Event:
    id: int
    incident_id: int
    at: float
    kind: str
    text: str
    data: dict[str, Any]
    slack_ts: str | None


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
        """Claim the unposted event for `replica_id` for `ttl` seconds (bot.infra.store.claims); None when it is
        posted, claimed by someone else right now, or gone."""
        return claim(self.db, _CLAIM, event_id, replica_id, ttl)

    def release_event(self, event_id: int, replica_id: str) -> None:
        """Give `replica_id`'s claim up now (its post failed): the next claim reads the thread first (a post that
        timed out may have reached Slack)."""
        release(self.db, _CLAIM, event_id, replica_id)

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
