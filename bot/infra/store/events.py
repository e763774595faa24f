"""Timeline events: the Event record and the events table, the outbox of an incident's Slack thread.

Called through `Store` by bot.slack.timeline, which adds an event, posts what is unposted and marks it posted
with its Slack ts (so a restart posts what it had not), and by bot.incidents.recovery (`events`, to see whether
an incident's summary was written).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update

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
