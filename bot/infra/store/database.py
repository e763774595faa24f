"""The connection every part of the store shares: one SQLAlchemy engine, the clock that stamps rows, and the two
helpers that turn a result into a typed record or an inserted row's id.

`Store` (bot.infra.store) opens one `Database` and hands it to each per-aggregate part; nothing else builds one.
Opening it brings a SQLite database to the head revision and refuses any other database that is not at head
(bot.infra.migrations; `rollback-bot migrate` upgrades those).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from bot.infra import migrations


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class Database:
    """The engine for `url` (SQLite: WAL, waits up to 10 s for another writer) and the clock of every timestamp."""

    def __init__(self, url: str, clock: Callable[[], float]) -> None:
        self.clock = clock
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # The schema comes from the Alembic revisions (bot.infra.migrations), which match the tables' `metadata`.
        # SQLite (the default, and every test) is brought to head here; any other database is migrated only by
        # `rollback-bot migrate`, and a store on one that is behind refuses to start, naming that command.
        if self.engine.dialect.name == "sqlite":
            migrations.upgrade(self.engine)
        else:
            try:
                migrations.require_current(self.engine)
            except (migrations.SchemaError, DBAPIError):
                # Not usable, or not reachable: close the pooled connection now rather than at garbage collection.
                self.engine.dispose()
                raise


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
