"""Leases: who holds what, until when by the database's clock, under which epoch (the fencing token).

Called through `Store` by bot.infra.replica: each replica holds `replica:<id>` (its membership; work rows name it
as their owner) and some `shard:<n>` leases (the services it evaluates). Acquiring gives a new epoch, always one
more than the row's last one, so a lease taken over (or re-taken by a restarted replica with the same id) never
carries the epoch its earlier holder writes under (bot.infra.store.database.Fence). Renewing works only while the
lease has not expired: a holder paused past its expiry has lost it for good and must acquire again.
"""

from __future__ import annotations

from sqlalchemy import and_, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from bot.infra.store.database import Database, Fence
from bot.infra.store.tables import leases


class Leases:
    def __init__(self, db: Database) -> None:
        self.db = db

    def acquire(self, name: str, owner: str, ttl: float) -> Fence | None:
        """Take `name` for `ttl` seconds if it is free, expired, or `owner`'s own (then under a new epoch)."""
        now = self.db.now()
        stmt = self.db.insert(leases).values(name=name, owner=owner, epoch=1, expires_at=now + ttl)
        stmt = stmt.on_conflict_do_update(
            index_elements=[leases.c.name],
            set_={"owner": owner, "epoch": leases.c.epoch + 1, "expires_at": now + ttl},
            where=(leases.c.expires_at < now) | (leases.c.owner == owner) | leases.c.owner.is_(None),
        ).returning(leases.c.epoch)
        with self.db.engine.begin() as conn:
            epoch = conn.execute(stmt).scalar_one_or_none()
        return None if epoch is None else Fence(name, owner, int(epoch))

    def renew(self, fence: Fence, ttl: float) -> bool:
        """Extend a lease still held under `fence` by `ttl` from now; False once it expired or moved on."""
        now = self.db.now()
        with self.db.engine.begin() as conn:
            result = conn.execute(update(leases).where(*_held(fence), leases.c.expires_at >= now)
                                  .values(expires_at=now + ttl))
        return result.rowcount == 1

    def renew_many(self, fences: list[Fence], ttl: float) -> set[str]:
        """Renew several leases of one owner in one statement; the names still held (renewed)."""
        if not fences:
            return set()
        now = self.db.now()
        held = or_(*(and_(leases.c.name == f.name, leases.c.epoch == f.epoch) for f in fences))
        with self.db.engine.begin() as conn:
            rows = conn.execute(update(leases).where(held, leases.c.owner == fences[0].owner,
                                                     leases.c.expires_at >= now)
                                .values(expires_at=now + ttl).returning(leases.c.name)).all()
        return {r.name for r in rows}

    def expire_others(self, except_owner: str) -> int:
        """End every lease not held by `except_owner`: for the one replica a SQLite database can have, whose
        earlier processes are dead (bot.infra.single_replica's lock proves it)."""
        with self.db.engine.begin() as conn:
            return int(conn.execute(update(leases).where(leases.c.owner != except_owner)
                                    .values(owner=None, expires_at=self.db.now())).rowcount)

    def release(self, fence: Fence) -> None:
        """Give a lease up now (a shard handed to a newer replica, a replica stopping): free for anyone."""
        with self.db.engine.begin() as conn:
            conn.execute(update(leases).where(*_held(fence)).values(owner=None, expires_at=self.db.now()))

    def holds(self, fence: Fence) -> bool:
        """Whether the lease is still held under `fence` right now."""
        with self.db.engine.connect() as conn:
            return conn.execute(select(leases.c.name).where(*_held(fence), leases.c.expires_at >= self.db.now())
                                ).first() is not None

    def live(self, prefix: str) -> list[Fence]:
        """The unexpired leases whose name starts with `prefix`, by name."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(leases.c.name, leases.c.owner, leases.c.epoch)
                                .where(leases.c.name.startswith(prefix, autoescape=True),
                                       leases.c.expires_at >= self.db.now(), leases.c.owner.is_not(None))
                                .order_by(leases.c.name)).all()
        return [Fence(r.name, r.owner, int(r.epoch)) for r in rows]


def _held(fence: Fence) -> tuple[ColumnElement[bool], ...]:
    return (leases.c.name == fence.name, leases.c.owner == fence.owner, leases.c.epoch == fence.epoch)
