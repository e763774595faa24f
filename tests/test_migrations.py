"""The store's schema comes from the Alembic revisions (bot.infra.migrations), and they describe exactly what the code
queries with (bot.infra.store.metadata); databases from before Alembic keep their rows; `rollback-bot migrate`
upgrades, reruns and never prints a password; a Store brings any database to head by itself (as `serve` does),
under the database's lock, so three processes starting together against an empty PostgreSQL database all come
up; a database a newer bot migrated is refused, naming its revision.

Each database test runs on SQLite and on a real PostgreSQL server (tests/pg_env.py): `bare_url` is an empty
database (for PostgreSQL a fresh one that, unlike `fresh_postgres_url`, is not migrated).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from setuptools import find_packages
from sqlalchemy import JSON, Column, Float, Index, Integer, MetaData, String, Table, Text, create_engine, insert, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError

from bot.infra import migrations
from bot.infra.store import Store, _FittedString, metadata
from tests import pg_env

ROOT = Path(__file__).resolve().parents[1]
HEAD = "0005_baselines"
PASSWORD = "s3cret"  # the trust-auth test server ignores it; it must never be printed


# -- the schema before Alembic: bot/infra/store.py's tables at commit a8443bc, as create_all made them ----------------
def schema_at_a8443bc() -> MetaData:
    """A copy of a8443bc's tables (written out, so later revisions never change it): what every database the
    bot created before Alembic has. Today's differ by incidents.first_approver and incidents.armed_by."""
    old = MetaData()
    Table("incidents", old,
          Column("id", Integer, primary_key=True, autoincrement=True),
          Column("service", String(128), nullable=False, index=True),
          Column("active_service", String(128), unique=True, nullable=True),
          Column("state", String(32), nullable=False),
          Column("trigger", String(128), nullable=False),
          Column("detail", JSON, nullable=False, default=dict),
          Column("baseline", JSON, nullable=False, default=dict),
          Column("breach_started_at", Float, nullable=True),
          Column("opened_at", Float, nullable=False),
          Column("warned_at", Float, nullable=True),
          Column("channel", String(32), nullable=True),
          Column("message_ts", String(32), nullable=True),
          Column("progress_ts", String(32), nullable=True),
          Column("requested_by", String(32), nullable=True),
          Column("approved_by", String(32), nullable=True),
          Column("approved_at", Float, nullable=True),
          Column("executed_at", Float, nullable=True),
          Column("recovered_at", Float, nullable=True),
          Column("finished_at", Float, nullable=True),
          Column("error", Text, nullable=True),
          Column("resume_from", Integer, nullable=True),
          Column("halt_kind", String(16), nullable=True),
          Column("auto_at", Float, nullable=True),
          Column("verification", JSON, nullable=False, default=dict))
    Table("events", old,
          Column("id", Integer, primary_key=True, autoincrement=True),
          Column("incident_id", Integer, nullable=False, index=True),
          Column("at", Float, nullable=False),
          Column("kind", String(64), nullable=False),
          Column("text", Text, nullable=False),
          Column("data", JSON, nullable=False, default=dict),
          Column("slack_ts", String(32), nullable=True))
    Table("steps", old,
          Column("id", Integer, primary_key=True, autoincrement=True),
          Column("incident_id", Integer, nullable=False, index=True),
          Column("position", Integer, nullable=False),
          Column("executor", String(64), nullable=False),
          Column("status", String(16), nullable=False),
          Column("plan", JSON, nullable=False, default=dict),
          Column("outcome", JSON, nullable=True),
          Column("started_at", Float, nullable=False),
          Column("finished_at", Float, nullable=True))
    Table("audit", old,
          Column("id", Integer, primary_key=True, autoincrement=True),
          Column("at", Float, nullable=False),
          Column("incident_id", Integer, nullable=True, index=True),
          Column("actor", String(64), nullable=False),
          Column("action", String(64), nullable=False),
          Column("result", String(32), nullable=False),
          Column("detail", JSON, nullable=False, default=dict))
    Table("slo_state", old,
          Column("service", String(128), primary_key=True),
          Column("slo", String(128), primary_key=True),
          Column("status", String(16), nullable=False),
          Column("value", Float, nullable=True),
          Column("breach_since", Float, nullable=True),
          Column("updated_at", Float, nullable=False))
    Table("service_state", old,
          Column("service", String(128), primary_key=True),
          Column("healthy_since", Float, nullable=True),
          Column("updated_at", Float, nullable=False))
    Table("seen_requests", old,
          Column("key", String(255), primary_key=True),
          Column("at", Float, nullable=False, index=True))
    Table("freezes", old,
          Column("service", String(128), primary_key=True),
          Column("frozen_at", Float, nullable=False),
          Column("reason", Text, nullable=False),
          Column("incident_id", Integer, nullable=True),
          Column("blocked_version", String(64), nullable=True),
          Column("actor", String(64), nullable=False))
    Table("alerts", old,
          Column("fingerprint", String(64), primary_key=True),
          Column("starts_at", String(64), primary_key=True),
          Column("service", String(128), nullable=False),
          Column("alertname", String(255), nullable=False),
          Column("incident_id", Integer, nullable=True),
          Column("received_at", Float, nullable=False),
          Column("resolved_at", Float, nullable=True))
    return old


# -- fixtures and helpers -----------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def bare_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, never migrated: a new SQLite file, or a new database on the session's PostgreSQL
    (with a password in its URL that the trust-auth server ignores), dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
        return
    url = pg_env.create_database(str(request.getfixturevalue("postgres_url")))
    yield make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)
    pg_env.drop_database(url)


@pytest.fixture
def engine(bare_url: str) -> Iterator[Engine]:
    made = create_engine(bare_url)
    yield made
    made.dispose()


def schema_differences(engine: Engine, target: MetaData) -> list[Any]:
    """alembic's autogenerate comparison of the live database with `target` (types, nullability, indexes,
    unique constraints, missing or extra tables and columns); alembic's own alembic_version is not compared."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "compare_type": True,
            "include_name": lambda name, kind, _parent: not (kind == "table" and name == "alembic_version"),
        })
        return list(compare_metadata(context, target))


def upgrade_to(engine: Engine, revision: str) -> None:
    """Run the revisions up to `revision` only (what an older bot's migrate would have left)."""
    with engine.begin() as conn:
        command.upgrade(migrations.config(conn), revision)


def old_incident(engine: Engine, service: str = "model-svc") -> int:
    """An active incident written with a8443bc's columns only, as a bot of that time wrote it; its id."""
    with engine.begin() as conn:
        result = conn.execute(insert(schema_at_a8443bc().tables["incidents"]).values(
            service=service, active_service=service, state="open", trigger="p95_latency", detail={"value": 0.9},
            baseline={"version": "3"}, opened_at=1000.0, channel="C1", requested_by="U0", verification={}))
        pk = result.inserted_primary_key
        assert pk is not None
        return int(pk[0])


def run_migrate(env_url: str | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`rollback-bot migrate` as its own process, without any Slack variable in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_") and k != "DATABASE_URL"}
    env["PYTHONPATH"] = str(ROOT)
    if env_url is not None:
        env["DATABASE_URL"] = env_url
    return subprocess.run([sys.executable, "-m", "bot.cli", "migrate"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


# -- the revisions are the schema ---------------------------------------------------------------------------
def test_head_is_the_newest_revision() -> None:
    assert migrations.head() == HEAD


def test_upgrade_makes_exactly_the_store_metadata(engine: Engine) -> None:
    assert migrations.current(engine) is None and not migrations.is_current(engine)
    done = migrations.upgrade(engine)
    assert done == migrations.Upgrade(before=None, stamped=None, after=HEAD)
    assert migrations.current(engine) == HEAD and migrations.is_current(engine)
    assert schema_differences(engine, metadata) == []
    assert migrations.upgrade(engine) == migrations.Upgrade(before=HEAD, stamped=None, after=HEAD)  # a no-op


def test_the_comparison_sees_what_a_revision_would_miss(engine: Engine) -> None:
    """The empty comparison above means something: a changed length, nullability, a missing column or index
    each shows up (with the store's fitted TypeDecorator types, as bot.infra.store.metadata has them)."""
    migrations.upgrade(engine)
    changed = MetaData()
    for table in metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["incidents"].c.first_approver.type = _FittedString(33)
    changed.tables["steps"].c.position.nullable = True
    changed.tables["alerts"].append_column(Column("extra", Integer))
    Index("ix_freezes_actor", changed.tables["freezes"].c.actor)
    found = schema_differences(engine, changed)
    flat = [d for item in found for d in (item if isinstance(item, list) else [item])]
    kinds = sorted((d[0], d[2] if d[0] != "add_index" else d[1].name) for d in flat)
    assert kinds == [("add_column", "alerts"), ("add_index", "ix_freezes_actor"), ("modify_nullable", "steps"),
                     ("modify_type", "incidents")]


def test_revision_0001_is_the_schema_of_a8443bc(engine: Engine) -> None:
    upgrade_to(engine, migrations.INITIAL)
    assert migrations.current(engine) == migrations.INITIAL
    assert schema_differences(engine, schema_at_a8443bc()) == []


# -- databases from before Alembic ------------------------------------------------------------------------
def test_database_from_before_alembic_keeps_its_rows_and_gains_the_new_columns(bare_url: str, engine: Engine) -> None:
    schema_at_a8443bc().create_all(engine)
    old_id = old_incident(engine)
    store = Store(bare_url)  # the store stamps and upgrades by itself, as `serve` does
    try:
        assert migrations.current(engine) == HEAD
        assert schema_differences(engine, metadata) == []
        kept = store.incident(old_id)
        assert (kept.service, kept.state, kept.detail, kept.requested_by) == ("model-svc", "open", {"value": 0.9}, "U0")
        assert (kept.first_approver, kept.armed_by) == (None, None)
        assert store.active_incident("model-svc") == kept  # the UNIQUE still holds the old row's service
        new = store.open_incident(service="other-svc", trigger="p95_latency", detail={}, baseline={},
                                  breach_started_at=None, channel="C1", first_approver="U1", armed_by="detection")
        assert new is not None
        assert (store.incident(new.id).first_approver, store.incident(new.id).armed_by) == ("U1", "detection")
        assert store.open_incident(service="model-svc", trigger="x", detail={}, baseline={}, breach_started_at=None,
                                   channel="C1") is None
    finally:
        store.engine.dispose()


def test_database_made_by_create_all_of_todays_schema_is_stamped_at_head(bare_url: str, engine: Engine) -> None:
    """A database the bot created between the authorization columns and Alembic already has them: it is
    stamped at head, not given the columns a second time."""
    plain = MetaData()
    for table in metadata.tables.values():
        table.to_metadata(plain)
    plain.create_all(engine)
    old_id = old_incident(engine)
    assert migrations.upgrade(bare_url) == migrations.Upgrade(before=None, stamped=HEAD, after=HEAD)
    assert schema_differences(engine, metadata) == []
    store = Store(bare_url)
    try:
        assert store.incident(old_id).service == "model-svc"
    finally:
        store.engine.dispose()


# -- concurrency --------------------------------------------------------------------------------------------
def test_several_stores_upgrading_one_database_at_once(bare_url: str, engine: Engine) -> None:
    """Four threads upgrade the same new database at the same moment, by building a Store each (as several
    stores in one process do): none fails, the schema is made once."""
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    stores: list[Store] = []

    def one() -> None:
        barrier.wait(timeout=30)
        try:
            stores.append(Store(bare_url))
        except BaseException as exc:  # collected, so the assertion below shows every thread's failure
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for store in stores:
        store.engine.dispose()
    assert errors == []
    assert migrations.current(engine) == HEAD
    assert schema_differences(engine, metadata) == []


def test_two_processes_migrating_one_database_at_once(bare_url: str, tmp_path: Path, engine: Engine) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    env.update(PYTHONPATH=str(ROOT), DATABASE_URL=bare_url)
    argv = [sys.executable, "-m", "bot.cli", "migrate"]
    procs = [subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert sum("revision after: " in out for out, _ in outputs) + sum("already at head" in out for out, _ in outputs) == 2
    assert migrations.current(engine) == HEAD


# -- rollback-bot migrate -----------------------------------------------------------------------------------
def test_migrate_command_upgrades_then_is_already_at_head(bare_url: str, tmp_path: Path, engine: Engine) -> None:
    first = run_migrate(bare_url, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "revision before: none (empty)" in first.stdout
    assert f"revision after: {HEAD} (head)" in first.stdout
    assert migrations.current(engine) == HEAD
    second = run_migrate(bare_url, tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"already at head: {HEAD}" in second.stdout
    for done in (first, second):
        assert PASSWORD not in done.stdout + done.stderr
        assert make_url(bare_url).render_as_string(hide_password=True) in done.stdout
    if engine.dialect.name == "postgresql":
        assert ":***@" in first.stdout


def test_migrate_command_defaults_to_the_sqlite_file_in_the_working_directory(tmp_path: Path) -> None:
    done = run_migrate(None, tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"sqlite:///{tmp_path / 'rollback-bot.db'}" in done.stdout
    assert (tmp_path / "rollback-bot.db").exists()
    assert "already at head" in run_migrate(None, tmp_path).stdout


def test_migrate_command_stamps_a_database_from_before_alembic(bare_url: str, tmp_path: Path, engine: Engine) -> None:
    schema_at_a8443bc().create_all(engine)
    old_id = old_incident(engine)
    done = run_migrate(bare_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"revision before: none (tables from before Alembic), stamped {migrations.INITIAL}" in done.stdout
    assert f"revision after: {HEAD} (head)" in done.stdout
    with engine.connect() as conn:
        assert {c["name"] for c in inspect(conn).get_columns("incidents")} >= {"first_approver", "armed_by"}
    store = Store(bare_url)
    try:
        assert store.incident(old_id).trigger == "p95_latency"
    finally:
        store.engine.dispose()


def test_migrate_command_on_an_unreachable_server_says_so_without_the_password(tmp_path: Path) -> None:
    from sandbox.servers import free_port

    url = f"postgresql+psycopg://rb:{PASSWORD}@127.0.0.1:{free_port()}/db?connect_timeout=5"
    done = run_migrate(url, tmp_path)
    assert done.returncode == 1
    assert "cannot migrate" in done.stderr and "rb:***@127.0.0.1" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr


# -- a Store migrates by itself, PostgreSQL included ----------------------------------------------------------
@pytest.fixture
def bare_postgres_url(postgres_url: str) -> Iterator[str]:
    url = pg_env.create_database(postgres_url)
    yield make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)
    pg_env.drop_database(url)


def test_store_on_an_empty_postgres_database_makes_the_schema(bare_postgres_url: str) -> None:
    engine = create_engine(bare_postgres_url)
    try:
        assert inspect(engine).get_table_names() == []
        Store(bare_postgres_url).engine.dispose()
        assert migrations.current(engine) == HEAD
        assert schema_differences(engine, metadata) == []
    finally:
        engine.dispose()


def test_store_on_a_postgres_database_one_revision_behind_upgrades_it(bare_postgres_url: str) -> None:
    engine = create_engine(bare_postgres_url)
    try:
        upgrade_to(engine, migrations.INITIAL)
        old_id = old_incident(engine)
        store = Store(bare_postgres_url)
        try:
            assert migrations.current(engine) == HEAD
            assert store.incident(old_id).trigger == "p95_latency"
        finally:
            store.engine.dispose()
    finally:
        engine.dispose()


def test_a_database_a_newer_bot_migrated_is_refused_naming_its_revision(bare_url: str, tmp_path: Path,
                                                                          engine: Engine) -> None:
    """A revision this bot does not have (a newer bot's, during a rolling deploy) is neither upgraded nor
    downgraded: the Store raises SchemaError (serve refuses to start) and `migrate` says so in one line."""
    migrations.upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099_future'")
    with pytest.raises(migrations.SchemaError) as raised:
        Store(bare_url)
    message = str(raised.value)
    assert "is at revision 0099_future, which this bot does not know" in message and HEAD in message
    assert PASSWORD not in message and make_url(bare_url).render_as_string(hide_password=True) in message
    done = run_migrate(bare_url, tmp_path)
    assert done.returncode == 1 and "cannot migrate" in done.stderr and "0099_future" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and PASSWORD not in done.stdout + done.stderr
    assert migrations.current(engine) == "0099_future"


# Imports the store (the slow part of a start), says so, then builds a Store on the URL when told to.
_STARTER = """
import sys
from bot.infra.store import Store
print("imported", flush=True)
sys.stdin.readline()
Store(sys.argv[1]).engine.dispose()
print("up", flush=True)
"""


def test_three_processes_starting_on_an_empty_postgres_database_all_come_up(postgres_url: str) -> None:
    """What three replicas started together do: each process builds a Store on the same empty database at
    the same moment (released together once all three have imported the bot). Five rounds, a new database
    each: every process comes up, the schema is made once."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _round in range(5):
        url = pg_env.create_database(postgres_url)
        try:
            procs = [subprocess.Popen([sys.executable, "-c", _STARTER, url], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                     for _ in range(3)]
            try:
                for proc in procs:
                    assert proc.stdout is not None and proc.stdout.readline().strip() == "imported"
                for proc in procs:  # the start signal, to all three within microseconds
                    assert proc.stdin is not None
                    proc.stdin.write("\n")
                    proc.stdin.flush()
                outputs = [proc.communicate(timeout=60) for proc in procs]
            finally:
                for proc in procs:
                    if proc.poll() is None:  # a failed assertion above: do not leave it running
                        proc.kill()
                        proc.wait(10)
            assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
            assert [out.strip() for out, _err in outputs] == ["up"] * 3
            check = create_engine(url)
            try:
                assert migrations.current(check) == HEAD
                assert schema_differences(check, metadata) == []
            finally:
                check.dispose()
        finally:
            pg_env.drop_database(url)


# -- packaging ------------------------------------------------------------------------------------------------
def test_setuptools_ships_the_migrations() -> None:
    """pyproject's package discovery finds the migrations and their revisions (packages with __init__.py), so
    the wheel has the files Alembic loads by path."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    found = set(find_packages(str(ROOT), include=include))
    assert {"bot.infra.migrations", "bot.infra.migrations.versions"} <= found
    versions = ROOT / "bot" / "infra" / "migrations" / "versions"
    assert {p.name for p in versions.glob("0*.py")} == {"0001_initial.py", "0002_authorization.py", "0003_replicas.py",
                                                           "0004_drills.py", "0005_baselines.py"}
    assert (ROOT / "bot" / "infra" / "migrations" / "env.py").is_file()


def test_a_race_lost_despite_the_lock_is_checked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the locked upgrade still fails because another process made the tables first, `upgrade` looks again
    and, finding the database at head (the other one's work, so this call did nothing), returns instead of
    raising."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    real = migrations._upgrade_locked
    calls: list[int] = []

    def lose_the_race(engine: Engine) -> migrations.Upgrade:
        calls.append(1)
        other = migrations.engine_for(url)  # "the other process", on its own engine: it wins
        try:
            real(other)
        finally:
            other.dispose()
        raise OperationalError("CREATE TABLE incidents", {}, Exception("table incidents already exists"))

    monkeypatch.setattr(migrations, "_upgrade_locked", lose_the_race)
    assert migrations.upgrade(url) == migrations.Upgrade(before=HEAD, stamped=None, after=HEAD)
    assert calls == [1]
    check = migrations.engine_for(url)
    try:
        assert schema_differences(check, metadata) == []
    finally:
        check.dispose()
