"""Posting claims: a row (an event, an incident's warning) is posted to Slack by one replica at a time.

Used by bot.infra.store.events (`claim_event`) and bot.infra.store.incidents (`claim_warning`), each naming its
columns: the row's id, the column that is set once it is posted (slack_ts, message_ts), and the claim's holder and
expiry (the database's clock). A claim is one conditional UPDATE on the claim as it was read, so of replicas racing
for it exactly one wins, and the winner knows whether an earlier claim expired unposted (its message may be in
Slack already). A released claim keeps its holder's name, so the next one counts as taken over too.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Column, Table, select, update

from bot.infra.store.database import Database


@dataclass(frozen=True)
class Claim:
    """A claim as it was taken: held by `owner` until `until` (the database's clock). `taken_over`: an earlier
    claim, by `previous_owner` (possibly this same replica), had expired unposted, so that message may be in Slack
    already."""

    key: int
    owner: str
    until: float
    taken_over: bool
    previous_owner: str | None


@dataclass(frozen=True)
class ClaimColumns:
    """Where a table keeps a posting claim."""

    table: Table
    id: Column[int]
    posted: Column[str]
    by: Column[str]
    until: Column[float]


def claim(db: Database, cols: ClaimColumns, key: int, replica_id: str, ttl: float) -> Claim | None:
    """Claim the unposted row `key` for `replica_id` for `ttl` seconds; None when it is posted, claimed by someone
    else right now, or gone."""
    with db.engine.connect() as conn:  # read outside the write: SQLite cannot upgrade a stale read snapshot
        seen = conn.execute(select(cols.by, cols.until).where(cols.id == key, cols.posted.is_(None))).first()
    if seen is None:
        return None
    previous_by, previous_until = seen
    now = db.now()
    with db.begin() as conn:
        until = conn.execute(
            update(cols.table).where(cols.id == key, cols.posted.is_(None),
                                     cols.until.is_(None) | (cols.until < now),
                                     cols.by.is_not_distinct_from(previous_by),
                                     cols.until.is_not_distinct_from(previous_until))
            .values({cols.by: replica_id, cols.until: now + ttl}).returning(cols.until)).scalar_one_or_none()
    if until is None:
        return None
    return Claim(key, replica_id, float(until), previous_by is not None, previous_by)


def release(db: Database, cols: ClaimColumns, key: int, replica_id: str) -> None:
    """Give `replica_id`'s claim up now (its post failed): anyone may claim the row at once."""
    with db.begin() as conn:
        conn.execute(update(cols.table).where(cols.id == key, cols.by == replica_id, cols.posted.is_(None))
                     .values({cols.until: None}))
