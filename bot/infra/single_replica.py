"""One `rollback-bot serve` per SQLite file: the lock a second one finds held, and the refusal that names PostgreSQL.

Called by bot.cli's `_serve` once, before the store is opened (so a second process never runs restart pick-up
or an evaluation cycle on the first one's database). SQLite has no leases another replica could respect: two
processes on one file would both evaluate, post and run plans. So `hold` takes an exclusive, non-blocking
`fcntl.flock` on `<database>.serve.lock` next to the file and keeps it for the life of the process; the kernel
drops it when the process ends, however it ends (SIGKILL included), so a stale lock file never blocks a restart.
In-memory SQLite (`sqlite://`, `:memory:`) is private to its process and needs no lock; other databases
(PostgreSQL) coordinate their replicas through leases instead.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from sqlalchemy.engine import make_url

SUFFIX = ".serve.lock"
POSTGRES_HINT = "for more than one replica set DATABASE_URL=postgresql+psycopg://… (PostgreSQL)"

_held: list[IO[str]] = []  # the open lock files: the lock lasts as long as its file stays open


class AlreadyServing(RuntimeError):
    """Another `rollback-bot serve` holds this SQLite database's lock; the message names PostgreSQL."""


def sqlite_file(url: str) -> Path | None:
    """The SQLite database file of `url`, absolute (as the store opens it, relative to the working directory);
    None for in-memory SQLite and for any other database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or parsed.query.get("mode") == "memory" or database.startswith("file::memory:"):
        return None
    if database.startswith("file:"):  # a URI filename (?uri=true): its path, without the URI's own query
        database = database.removeprefix("file:").split("?", 1)[0]
    return Path(database).expanduser().resolve()


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + SUFFIX)


def hold(url: str) -> Path | None:
    """Take the serve lock of `url`'s SQLite file for the life of this process; its path (None: no lock needed).
    Raise AlreadyServing when another process holds it, OSError when the lock file cannot be made."""
    database = sqlite_file(url)
    if database is None:
        return None
    path = lock_path(database)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open in _held: closing it frees the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        # Held: another serve is running on this file. Its pid, when it has written it, goes into the message.
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise AlreadyServing(f"another `rollback-bot serve`{by} is using {database}: SQLite serves one replica; "
                             f"{POSTGRES_HINT}") from None
    except BaseException:
        handle.close()
        raise
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held.append(handle)
    return path
