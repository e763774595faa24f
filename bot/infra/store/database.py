"""The connection every part of the store shares: one SQLAlchemy engine, the clock that stamps rows, and the two
helpers that turn a result into a typed record or an inserted row's id.

`Store` (bot.infra.store) opens one `Database` and hands it to each per-aggregate part; nothing else builds one.
Opening it brings the database (SQLite or PostgreSQL) to the head revision, under the database's lock so several
replicas starting at once each succeed (bot.infra.migrations; `rollback-bot migrate` does the same upgrade).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Table, create_engine, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ColumnElement

from bot.infra import metrics, migrations
from bot.infra.store.tables import leases


@dataclass(frozen=True)
class Fence:
    """A lease as its holder took it: the lease's name, the holder and the epoch it was given. Writes made while a
    fence is current (`fenced`) happen only while the lease is still held with that epoch."""

    name: str
    owner: str
    epoch: int


class Fenced(RuntimeError):
    """A write was refused: the lease it was made under expired or was taken over (a new epoch) meanwhile."""


# The fence of the work this thread is doing (bot.infra.replica sets it around each work item and evaluation
# cycle); None: writes are not fenced (a Slack request, a single-replica test).
_FENCE: ContextVar[Fence | None] = ContextVar("rollback_fence", default=None)


@contextmanager
def fenced(fence: Fence | None) -> Iterator[None]:
    """Make every store write in this block conditional on `fence` (None: unfenced)."""
    token = _FENCE.set(fence)
    try:
        yield
    finally:
        _FENCE.reset(token)


def current_fence() -> Fence | None:
    return _FENCE.get()


_FLOAT: postgresql.DOUBLE_PRECISION[float] = postgresql.DOUBLE_PRECISION()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


# PostgreSQL: enough pooled connections for a burst of acks (each stores its request) next to the work threads,
# and a timeout on everything: connecting, a statement or lock wait that never ends, a connection black-holed on
# the network (TCP keepalives and tcp_user_timeout end it within ~10 s), and the server's side of a replica cut off
# mid-transaction (idle_in_transaction_session_timeout frees its row locks, e.g. on the shared edit budget). Behind
# a proxy that keeps acknowledging, a cut-off replica's calls may hang until healed: the others take over when its
# lease expires either way, and its /healthz turns 503 once its lease is older than the ttl.
POSTGRES_ENGINE: dict[str, Any] = {
    "pool_size": 20, "max_overflow": 20, "pool_timeout": 10,
    "connect_args": {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                     "keepalives_count": 3, "tcp_user_timeout": 10_000,
                     "options": "-c statement_timeout=30000 -c lock_timeout=10000 "
                                "-c idle_in_transaction_session_timeout=15000"},
}


class Database:
    """The engine for `url` (SQLite: WAL, waits up to 10 s for another writer) and the clock of every timestamp."""

    def __init__(self, url: str, clock: Callable[[], float]) -> None:
        self.clock = clock
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        elif url.startswith("postgresql"):
            kwargs.update(POSTGRES_ENGINE)
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # The schema comes from the Alembic revisions (bot.infra.migrations), which match the tables' `metadata`.
        # Every database is brought to head here: SQLite (the default, and every test) and PostgreSQL alike, under
        # the database's lock, so replicas started together against an empty database wait for the first one's
        # upgrade and then find the schema made. A database this bot cannot use (a newer bot's revision) raises
        # SchemaError; `rollback-bot migrate` does the same upgrade ahead of a deploy.
        try:
            migrations.upgrade(self.engine)
        except (migrations.SchemaError, DBAPIError):
            # Not usable, or not reachable: close the pooled connection now rather than at garbage collection.
            self.engine.dispose()
            raise

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def now(self) -> ColumnElement[float]:
        """The database's clock, in unix seconds, as a SQL expression: every lease and due time is compared with
        it, so replicas whose own clocks differ still agree on what has expired."""
        if self.dialect == "postgresql":
            return func.extract("epoch", func.clock_timestamp()).cast(_FLOAT)
        return (func.julianday("now") - 2440587.5) * 86400.0

    def clock_now(self) -> float:
        """The database's clock read now (unix seconds)."""
        with self.engine.connect() as conn:
            return float(conn.execute(select(self.now())).scalar_one())

    def insert(self, table: Table) -> Any:
        """An INSERT of `table` with this dialect's ON CONFLICT clauses (PostgreSQL's or SQLite's): for true
        upserts (`on_conflict_do_update`, `on_conflict_do_nothing`), never a read followed by an insert."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction. Under a fence (`fenced`) it first checks, in the same transaction, that the fence's
        lease is still held with its epoch (PostgreSQL: FOR SHARE, so a takeover waits for this transaction to
        end) and raises Fenced if not: a replica that was paused past its lease and resumed changes nothing."""
        with self.engine.begin() as conn:
            fence = _FENCE.get()
            if fence is not None:
                self.check(conn, fence)
            yield conn

    def check(self, conn: Connection, fence: Fence) -> None:
        held = conn.execute(
            select(leases.c.epoch).where(leases.c.name == fence.name, leases.c.owner == fence.owner,
                                         leases.c.epoch == fence.epoch, leases.c.expires_at >= self.now())
            .with_for_update(read=True)).first()
        if held is None:
            metrics.FENCING_REJECTIONS.inc()
            raise Fenced(f"lease {fence.name} epoch {fence.epoch} of {fence.owner} is no longer held")


def to_record(cls: type, row: Any) -> Any:
    """The row as the dataclass `cls` (Incident, Event, Step, Freeze, SloState): one field per column."""
    mapping = row._mapping
    return cls(**{name: mapping[name] for name in _names(cls)})


@functools.cache
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))  # dataclasses.fields is slow: 20,000 SLO states a cycle read it


def inserted_id(result: Any) -> int:
    """The primary key of the row an INSERT's `result` created."""
    key = result.inserted_primary_key
    assert key is not None, "INSERT returned no primary key"
    return int(key[0])
