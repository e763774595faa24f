"""Durable work: plan runs, verification ticks, automatic-rollback timers and closes, one row per (kind, incident).

Called through `Store` by bot.infra.replica (which takes due rows and runs them) and by bot.incidents through the
replica's `WorkQueue` (which schedules and cancels them). A row is owned by the replica that took it, named by
its membership lease (`replica:<owner>`) and that lease's epoch; a row whose owner's lease expired, or was
re-acquired under a newer epoch by a restarted replica, is anyone's to take over. Liveness is read with the
database's clock (safety); due times with the store's clock (the bot's own, like the incidents' auto_at).
Taking a row is one conditional UPDATE (on PostgreSQL after SELECT … FOR UPDATE SKIP LOCKED), so two replicas
never both take it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Table, and_, delete, exists, literal, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from bot.infra.store.database import Database, Fence
from bot.infra.store.tables import leases, work

REPLICA = "replica:"  # the prefix of a replica's membership lease: replica:<owner>
ORPHANED = "(a stopped bot)"  # the owner of adopted in-flight work: never a live replica's id


@dataclass(frozen=True)
class WorkItem:
    """A row as it was read: `owner` / `owner_epoch` are who held it before (None: nobody yet)."""

    key: str
    kind: str
    incident_id: int | None
    due_at: float
    every: float | None
    owner: str | None
    owner_epoch: int | None


def work_key(kind: str, incident_id: int) -> str:
    return f"{kind}:{incident_id}"


class Work:
    def __init__(self, db: Database) -> None:
        self.db = db

    def schedule(self, kind: str, incident_id: int, *, due_in: float = 0.0, every: float | None = None,
                 keep: bool = False, orphan: bool = False, owner: Fence | None = None) -> None:
        """Make (kind, incident) due in `due_in` seconds, owned by nobody (any replica takes it) or by `owner`. An
        existing row is replaced, or with `keep` left as it is (picking up in-flight work never moves a live
        replica's row). `orphan`: the new row is owned by a replica that no longer exists (ORPHANED), so whoever
        takes it takes it over (work in flight when a bot from before replicas stopped)."""
        now = self.db.clock()
        held = (ORPHANED, 0) if orphan else (owner.owner, owner.epoch) if owner else (None, None)
        owned = {"owner": held[0], "owner_epoch": held[1]}
        stmt = self.db.insert(work).values(key=work_key(kind, incident_id), kind=kind, incident_id=incident_id,
                                           due_at=now + due_in, every=every, **owned)
        if keep:
            stmt = stmt.on_conflict_do_nothing(index_elements=[work.c.key])
        else:
            stmt = stmt.on_conflict_do_update(index_elements=[work.c.key], set_={
                "kind": kind, "due_at": now + due_in, "every": every, **owned, "taken_at": None})
        with self.db.begin() as conn:
            conn.execute(stmt)

    def cancel(self, kind: str, incident_id: int) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(work).where(work.c.key == work_key(kind, incident_id)))

    def pending(self, incident_id: int) -> list[WorkItem]:
        """The rows of one incident, whoever holds them."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(work).where(work.c.incident_id == incident_id).order_by(work.c.key)).all()
        return [_item(r) for r in rows]

    def due(self, me: Fence, limit: int = 64, exclude: frozenset[str] = frozenset()) -> list[WorkItem]:
        """Rows due now that `me` may run: its own, nobody's, and those of a replica whose lease is gone."""
        query = (select(work).where(work.c.due_at <= self.db.clock(),
                                    or_(work.c.owner.is_(None),
                                        and_(work.c.owner == me.owner, work.c.owner_epoch == me.epoch),
                                        ~owner_alive(work, self.db.now())))
                 .order_by(work.c.due_at).limit(limit))
        if exclude:
            query = query.where(work.c.key.not_in(sorted(exclude)))
        with self.db.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_item(r) for r in rows]

    def take(self, item: WorkItem, me: Fence) -> bool:
        """Own `item` as `me`, if it is still held as it was read (nobody else took it meanwhile)."""
        if (item.owner, item.owner_epoch) == (me.owner, me.epoch):
            return True
        query = select(work.c.key).where(work.c.key == item.key, work.c.owner.is_not_distinct_from(item.owner),
                                         work.c.owner_epoch.is_not_distinct_from(item.owner_epoch))
        with self.db.engine.begin() as conn:
            if self.db.dialect == "postgresql":  # a replica taking it right now holds the row: skip, not wait
                if conn.execute(query.with_for_update(skip_locked=True)).first() is None:
                    return False
            result = conn.execute(update(work).where(work.c.key == item.key,
                                                     work.c.owner.is_not_distinct_from(item.owner),
                                                     work.c.owner_epoch.is_not_distinct_from(item.owner_epoch))
                                  .values(owner=me.owner, owner_epoch=me.epoch, taken_at=self.db.clock()))
        return result.rowcount == 1

    def again(self, item: WorkItem, me: Fence, due_in: float) -> bool:
        """Keep `me`'s row and make it due again in `due_in` seconds (the next verification tick)."""
        with self.db.begin() as conn:
            result = conn.execute(update(work).where(*_mine(item.key, me)).values(due_at=self.db.clock() + due_in))
        return result.rowcount == 1

    def done(self, item: WorkItem, me: Fence) -> None:
        """`me` finished `item`: remove its row (not one scheduled anew meanwhile, which nobody owns yet)."""
        with self.db.begin() as conn:
            conn.execute(delete(work).where(*_mine(item.key, me)))


def owner_alive(table: Table, now: ColumnElement[float]) -> ColumnElement[bool]:
    """The row's owner (`owner`, `owner_epoch` columns of `table`: work, inbox) still holds its replica lease,
    unexpired, under the epoch the row names."""
    return exists().where(leases.c.name == literal(REPLICA) + table.c.owner, leases.c.epoch == table.c.owner_epoch,
                          leases.c.expires_at >= now)


def _mine(key: str, me: Fence) -> tuple[ColumnElement[bool], ...]:
    return (work.c.key == key, work.c.owner == me.owner, work.c.owner_epoch == me.epoch)


def _item(row: object) -> WorkItem:
    m = row._mapping  # type: ignore[attr-defined]
    return WorkItem(m["key"], m["kind"], m["incident_id"], float(m["due_at"]), m["every"], m["owner"],
                    m["owner_epoch"])
