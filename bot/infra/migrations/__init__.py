"""The store's schema migrations (Alembic), and the small API the bot uses to apply them.

bot.infra.store's `Store.__init__` calls `upgrade` on every database (so `serve`, each of its replicas and every
test bring their database to head by themselves); `rollback-bot migrate` (bot.cli) calls `upgrade` on
DATABASE_URL, to migrate ahead of a deploy. The revisions are hand-written files in bot/infra/migrations/versions,
run by bot/infra/migrations/env.py on the connection this module opens; Alembic is configured in code (`config`),
no alembic.ini.

A database created before Alembic (the tables exist, alembic_version does not) is stamped with the revision
its tables already match, then upgraded, so existing SQLite files keep their rows and gain the new columns.
The whole upgrade is one transaction that first takes the database's write lock (SQLite: BEGIN IMMEDIATE;
PostgreSQL: a transaction-level advisory lock), and reads the revision again only once it holds it, so two
stores or processes upgrading the same database (three replicas started together against an empty one) wait
for each other instead of both creating the tables (alembic_version included); the one that waited finds the
schema at head and does nothing. The unlocked read before it only skips the lock when the database is at head
already (PostgreSQL's DDL is transactional: tables being made by another upgrade are not seen until it commits).
A race lost anyway (SQLite refuses a new connection's switch to WAL while another one creates the file) is
retried a few times after a short pause. A database at a revision this bot does not know (a newer bot migrated
it) is refused with SchemaError, never downgraded.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import NamedTuple

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError

DIRECTORY = Path(__file__).resolve().parent
INITIAL = "0001_initial"
# Columns of the revision after 0001 that a database created by create_all before Alembic may already have
# (the bot's create_all made them from commit 32fa52d on): such a database is stamped at that revision.
_AUTHORIZATION = "0002_authorization"
_AUTHORIZATION_COLUMNS = {"first_approver", "armed_by"}
_REPLICAS = "0003_replicas"  # its tables are new: a database that has `leases` has all of it
_DRILLS = "0004_drills"  # likewise `drills`
_BASELINES = "0005_baselines"  # likewise `slo_baselines`
_PG_LOCK_KEY = 0x726F6C6C6261636B  # "rollback": the advisory lock every upgrade of a PostgreSQL database takes
_SQLITE_TIMEOUT = 10  # seconds a SQLite connection waits for another one's write lock (as bot.infra.store's engine)
_ATTEMPTS = 5  # of an upgrade that lost a race to another store or process (see _upgrade)
_RETRY_PAUSE = 0.05  # seconds before the second attempt; then 0.1, 0.15, 0.2


class SchemaError(RuntimeError):
    """The database's schema is not the one the bot needs, and the bot cannot migrate it (`upgrade` of a database
    at a revision newer than this bot's)."""


class Upgrade(NamedTuple):
    """What `upgrade` did: the revision before (None: no alembic_version), the revision a database from
    before Alembic was stamped with (else None), and the revision after (the head)."""

    before: str | None
    stamped: str | None
    after: str


def config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for these migrations, without an ini file; env.py runs on `connection`."""
    cfg = Config()
    cfg.set_main_option("script_location", str(DIRECTORY))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def head() -> str:
    """The newest revision (the one bot.infra.store's metadata describes)."""
    revision = ScriptDirectory.from_config(config()).get_current_head()
    if revision is None:  # no revision files at all: a broken install, not a database problem
        raise RuntimeError(f"no Alembic revisions under {DIRECTORY / 'versions'}")
    return revision


def current(engine: Engine | Connection) -> str | None:
    """The database's revision, or None when it has no alembic_version (empty, or created before Alembic)."""
    if isinstance(engine, Connection):
        return MigrationContext.configure(engine).get_current_revision()
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_current(engine: Engine | Connection) -> bool:
    """Whether the database is at the head revision."""
    return current(engine) == head()


def describe(engine: Engine | Connection) -> str:
    """The database's revision in words: the revision, or what a database without alembic_version holds."""
    revision = current(engine)
    if revision is not None:
        return revision
    if isinstance(engine, Connection):
        return "none (empty)" if _unversioned_revision(engine) is None else "none (tables from before Alembic)"
    with engine.connect() as conn:
        return describe(conn)


def shown(engine: Engine) -> str:
    """The engine's URL as it may be printed: the password as ***."""
    return engine.url.render_as_string(hide_password=True)


def engine_for(url: str | URL) -> Engine:
    """An engine for `url` as `upgrade` opens one (SQLite waits for another writer like bot.infra.store's engine)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return create_engine(parsed, connect_args={"timeout": _SQLITE_TIMEOUT})
    return create_engine(parsed)


def upgrade(engine_or_url: Engine | str | URL) -> Upgrade:
    """Bring the database to the head revision; safe to call again and from several processes at once."""
    if isinstance(engine_or_url, Engine):
        return _upgrade(engine_or_url)
    engine = engine_for(engine_or_url)
    try:
        return _upgrade(engine)
    finally:
        engine.dispose()


def _upgrade(engine: Engine) -> Upgrade:
    target = head()
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            revision = current(engine)
            if revision == target:  # the usual case (every restart): no lock, no Alembic environment
                return Upgrade(revision, None, target)
            _require_known(engine, revision)
            return _upgrade_locked(engine)
        except DBAPIError:
            # Another store or process got in first: it created the tables despite the lock, or (SQLite) it was
            # creating the file while this connection's PRAGMA journal_mode=WAL wanted it, which SQLite refuses
            # at once instead of waiting. Look again shortly: the other one's work is then done or visible.
            if attempt == _ATTEMPTS:
                raise
            time.sleep(_RETRY_PAUSE * attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _upgrade_locked(engine: Engine) -> Upgrade:
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            # pysqlite begins no transaction before DDL: BEGIN IMMEDIATE takes the write lock before the revision
            # is read, so the whole upgrade (stamp included) is one transaction and one writer at a time.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})  # freed at commit
        before = current(conn)  # read again under the lock: another upgrade may have finished meanwhile
        _require_known(engine, before)
        stamped = _unversioned_revision(conn) if before is None else None
        cfg = config(conn)
        if stamped is not None:
            command.stamp(cfg, stamped)
        if (stamped or before) != head():
            command.upgrade(cfg, "head")
        conn.commit()
    return Upgrade(before, stamped, head())


def _require_known(engine: Engine, revision: str | None) -> None:
    """Raise SchemaError when `revision` is not one of this bot's (a newer bot migrated the database): Alembic
    could neither upgrade nor describe it, and a downgrade would lose what the newer bot stored."""
    if revision is None or revision in _revisions():
        return
    raise SchemaError(f"the database at {shown(engine)} is at revision {revision}, which this bot does not know "
                      f"(its newest is {head()}): a newer rollback-bot migrated it; run that version")


@functools.cache
def _revisions() -> frozenset[str]:
    return frozenset(script.revision for script in ScriptDirectory.from_config(config()).walk_revisions())


def _unversioned_revision(conn: Connection) -> str | None:
    """For a database without alembic_version: the revision its tables already match (they were made by
    create_all before Alembic), or None when it has no store tables at all."""
    inspector = inspect(conn)
    if not inspector.has_table("incidents"):
        return None
    if inspector.has_table("slo_baselines"):  # today's tables, made by metadata.create_all (as tests do)
        return _BASELINES
    if inspector.has_table("drills"):
        return _DRILLS
    if inspector.has_table("leases"):
        return _REPLICAS
    columns = {column["name"] for column in inspector.get_columns("incidents")}
    return _AUTHORIZATION if _AUTHORIZATION_COLUMNS <= columns else INITIAL
