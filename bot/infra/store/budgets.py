"""Budgets and a cache shared by every replica on one database: rate limits that must hold cluster-wide, and values
one replica fetched that the others may reuse until they expire.

Called through `Store` by bot.slack.timeline (`take_slots`/`extend_slot`: one chat.update per incident per interval,
and the workspace's chat.update budget) and bot.incidents.approvers (`cached`/`cache`: a Slack user group's members).

A budget row holds the next time its action may happen (`next_at`, the database's clock) and is taken with one
conditional upsert, so two replicas never both get the same slot. With `burst` > 1 it is the generic cell rate
algorithm: `next_at` is the theoretical arrival time, and an action may go while it is less than
(burst - 1) x every ahead of now; each action pushes it on by `every`. So the long-run rate is one per `every` and
up to `burst` may go back to back after a quiet spell.

Neither is state a lease protects (a paused replica taking a slot only delays an edit), so these writes are not
fenced (`Database.begin`) and never raise Fenced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.engine import Connection

from bot.infra.store.database import Database
from bot.infra.store.tables import budgets, shared_cache

_MIN_WAIT = 0.01  # a refused slot always asks for a wait, however close its time is


class _Refused(Exception):
    """Raised inside take_slots' transaction to roll back the slots it took: one of them was not free."""

    def __init__(self, wait: float) -> None:
        super().__init__(wait)
        self.wait = wait


class Budgets:
    def __init__(self, db: Database) -> None:
        self.db = db

    def take_slot(self, name: str, every: float, burst: int = 1) -> float:
        """Seconds to wait before the action `name` may happen; 0: it may happen now and the slot is taken."""
        return self.take_slots([(name, every, burst)])

    def take_slots(self, slots: Sequence[tuple[str, float, int]]) -> float:
        """Take every (name, every, burst) slot, or none: 0 when all were free (all are taken now), else the longest
        wait among those that were not (none is taken). Rows are locked in name order, so two callers taking
        overlapping sets never deadlock."""
        try:
            with self.db.engine.begin() as conn:
                refused = 0.0
                for name, every, burst in sorted(slots):
                    wait = self._take(conn, name, every, burst)
                    refused = max(refused, wait)
                if refused > 0:
                    raise _Refused(refused)
        except _Refused as exc:  # raised only to roll the slots already taken back
            return exc.wait
        return 0.0

    def _take(self, conn: Connection, name: str, every: float, burst: int) -> float:
        now = self.db.now()
        ahead = max(burst - 1, 0) * every  # how far the arrival time may run ahead of now
        start = case((budgets.c.next_at > now, budgets.c.next_at), else_=now)  # max(next_at, now), any dialect
        stmt = self.db.insert(budgets).values(name=name, next_at=now + every)
        stmt = stmt.on_conflict_do_update(index_elements=[budgets.c.name], set_={"next_at": start + every},
                                          where=budgets.c.next_at - now <= ahead).returning(budgets.c.next_at)
        if conn.execute(stmt).first() is not None:
            return 0.0
        next_at = conn.execute(select(budgets.c.next_at - now).where(budgets.c.name == name)).scalar_one()
        return max(float(next_at) - ahead, _MIN_WAIT)

    def extend_slot(self, name: str, every: float) -> None:
        """Make the next `name` wait at least `every` from now (an action that took long counts from its end)."""
        now = self.db.now()
        with self.db.engine.begin() as conn:
            conn.execute(update(budgets).where(budgets.c.name == name, budgets.c.next_at < now + every)
                         .values(next_at=now + every))


class SharedCache:
    def __init__(self, db: Database) -> None:
        self.db = db

    def cached(self, key: str) -> tuple[Any, float] | None:
        """The value stored under `key` and the seconds it has left, or None when there is none or it expired."""
        now = self.db.now()
        with self.db.engine.connect() as conn:
            row = conn.execute(select(shared_cache.c.value, shared_cache.c.expires_at - now)
                               .where(shared_cache.c.key == key, shared_cache.c.expires_at > now)).first()
        return None if row is None else (row[0], float(row[1]))

    def cache(self, key: str, value: Any, ttl: float) -> None:
        """Store `value` (JSON) under `key` for `ttl` seconds from now, replacing what was there."""
        now = self.db.now()
        stmt = self.db.insert(shared_cache).values(key=key, value=value, expires_at=now + ttl)
        stmt = stmt.on_conflict_do_update(index_elements=[shared_cache.c.key],
                                          set_={"value": value, "expires_at": now + ttl})
        with self.db.engine.begin() as conn:
            conn.execute(stmt)
