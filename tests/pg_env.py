"""A throwaway PostgreSQL server for the tests, from Debian's `postgresql` package (15 on bookworm).

Used by tests/conftest.py (the session fixture `postgres_url` and the per-test `fresh_postgres_url`). It
never uses the cluster Debian's package creates (`/var/lib/postgresql/15/main`, port 5432): it runs
`initdb` into a new directory and `pg_ctl start` on a free port of 127.0.0.1, with durability off (fsync,
synchronous_commit, full_page_writes) since the data is thrown away. PostgreSQL refuses to run as root, so
as root every command runs as the `postgres` user (`runuser -u postgres --`) in a directory that user owns
(made with `install -d -o postgres` under the system temp dir: pytest's own temp dirs are root's 0700).
Every command is an argument list (never a shell) with a timeout.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from sandbox.servers import HOST, free_port

BIN_GLOB = "/usr/lib/postgresql/*/bin"
USER = "rb"  # the superuser initdb creates; trust authentication, so no password
DATABASE = "rollback_bot"
_COMMAND_TIMEOUT = 60.0  # initdb takes ~1 s, a start ~1 s; a minute means something is wrong
_START_ATTEMPTS = 3  # free_port() can race with another process: retry on a new port
_SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding both initdb and pg_ctl, or None."""
    found = [Path(d) for d in glob.glob(BIN_GLOB)
             if os.access(Path(d) / "initdb", os.X_OK) and os.access(Path(d) / "pg_ctl", os.X_OK)]
    return max(found, key=lambda d: _version(d.parent.name), default=None)


def _version(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:  # not a version directory name: sorts first
        return ()


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:  # the server may have died before creating its log: say so instead of failing again
        return f"(no log at {path})"


class PostgresStartError(RuntimeError):
    """initdb or pg_ctl failed; the message has the command, its output and the tail of the server log."""


class PostgresServer:
    """One PostgreSQL server on 127.0.0.1:`port`, its data in a temp dir; a context manager."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        self.port = 0
        self.dir = Path(tempfile.gettempdir()) / f"rollback-bot-pg-{uuid.uuid4().hex[:10]}"
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._started = False

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the database created at start."""
        return self.database_url(DATABASE)

    def database_url(self, name: str) -> str:
        return f"postgresql+psycopg://{USER}@{HOST}:{self.port}/{name}"

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> Self:
        try:
            self._make_dir()
            self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", USER, "--no-sync",
                       "-E", "UTF8", "--locale=C"])  # C: the machine's LANG may name a locale not generated
            for attempt in range(_START_ATTEMPTS):
                self.port = free_port()
                options = f"-c listen_addresses={HOST} -p {self.port} -k {self.dir} {_SERVER_OPTIONS}"
                try:
                    self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                               "-t", "30", "-o", options, "start"])
                except PostgresStartError:
                    # Another process took the port between free_port() and the bind: try a new one.
                    if attempt + 1 < _START_ATTEMPTS and "already in use" in _log_tail(self.log):
                        continue
                    raise
                self._started = True
                break
            create_database(self.database_url("postgres"), DATABASE)
        except BaseException:
            # Whatever started must not outlive a failed start (a KeyboardInterrupt included).
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._started:
            self._started = False
            try:
                self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "30",
                           "stop"])
            except PostgresStartError:
                # Already gone (killed from outside): nothing left to stop; the directory still goes.
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- helpers -------------------------------------------------------------------------------------
    def _make_dir(self) -> None:
        if self.as_root:
            self._run(["install", "-d", "-m", "0700", "-o", "postgres", "-g", "postgres", str(self.dir)],
                      as_postgres=False)
        else:
            self.dir.mkdir(mode=0o700)

    def _run(self, argv: list[str], *, as_postgres: bool = True) -> None:
        if as_postgres and self.as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        started = time.monotonic()
        try:
            done = subprocess.run(argv, cwd=self.dir if self.dir.exists() else None, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as exc:  # reported like a failure, with what it printed so far
            raise PostgresStartError(f"{argv} did not finish within {_COMMAND_TIMEOUT:.0f}s:\n{exc.output or ''}\n"
                                     f"{_log_tail(self.log)}") from exc
        if done.returncode != 0:
            raise PostgresStartError(f"{argv} exited {done.returncode} after {time.monotonic() - started:.1f}s:\n"
                                     f"{done.stdout}{done.stderr}\nserver log:\n{_log_tail(self.log)}")


def _admin(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection (CREATE/DROP DATABASE refuse to run in a transaction) to `url`'s server."""
    parsed = make_url(url)
    return psycopg.connect(host=parsed.host, port=parsed.port, user=parsed.username, dbname="postgres",
                           autocommit=True, connect_timeout=10)


def create_database(url: str, name: str | None = None) -> str:
    """CREATE DATABASE `name` (default a unique one) on `url`'s server; its SQLAlchemy URL."""
    name = name or f"t_{uuid.uuid4().hex[:16]}"
    with _admin(url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """DROP DATABASE `url`'s database, closing its sessions first (a test's stores may still hold some)."""
    name = make_url(url).database
    with _admin(url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name or "")))
