"""The inbox: Slack requests stored before their 200 ack, so an acked click or command is handled even when the
replica that acked it dies right after answering.

Called through `Store` by handlers.slack_http: `receive` on the HTTP thread (one INSERT, nothing else: it is the
only store work an ack waits for) with the replica's membership lease as the row's owner; `owns` and `done` on
the worker that dispatches the request through Bolt; `orphans` and `take` from `SlackRoute.take_over`, which each
replica's work loop calls: a row not done whose owner's replica lease (`replica:<owner>`, bot.infra.store.leases)
expired or was re-acquired under a newer epoch is any live replica's to take over, exactly like a work row
(bot.infra.store.work). `forget` is the periodic clean-up.

The row's UNIQUE key (handlers.dedupe.request_key) is the request's idempotency claim: a Slack retry or a replayed
signed request finds its key there and `receive` returns None. Only requests received within Slack's 5-minute
signature window are taken over; older ones can no longer be answered in time and are dropped. Times are the
database's clock (`Database.now`), so replicas whose clocks differ agree on who is alive.

No credentials are stored: the body loses the legacy verification `token` Slack still sends (a form field of a
slash command, a top-level key of an interaction's `payload` JSON); every other form field is kept byte for
byte, so Bolt parses the stored body exactly as it would have parsed the original.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from sqlalchemy import delete, exists, or_, select, update

from bot.infra.store.database import Database, Fence
from bot.infra.store.tables import inbox, leases
from bot.infra.store.work import owner_alive

WINDOW = 300.0  # seconds: Slack's signature window; a request received longer ago is never taken over
LEGACY_TOKEN = "token"  # Slack's deprecated verification token, sent in every request body


@dataclass(frozen=True)
class InboxRow:
    """A stored request as it was read: `owner` / `owner_epoch` are the replica that held it then."""

    id: int
    key: str
    received_at: float
    headers: dict[str, str]
    body: bytes
    owner: str | None
    owner_epoch: int | None


class _GroupCommit:
    """Requests arriving together are stored together: one INSERT of every row waiting, in one transaction, by
    whichever HTTP thread finds no insert under way (its own row included); the others wait for that commit and
    return with it. A burst of 50 clicks is then a few commits instead of 50 in a row (SQLite has one writer at a
    time; PostgreSQL commits each transaction on its own)."""

    def __init__(self, flush: Callable[[list[dict[str, Any]]], list[int | None]]) -> None:
        self._flush = flush
        self._cond = threading.Condition()
        self._waiting: list[_Pending] = []
        self._busy = False

    def store(self, row: dict[str, Any]) -> int | None:
        mine = _Pending(row)
        with self._cond:
            self._waiting.append(mine)
            while not mine.done and self._busy:
                self._cond.wait()
            if mine.done:
                return mine.result()
            self._busy = True
            batch, self._waiting = self._waiting, []
        try:
            ids = self._flush([p.row for p in batch])
            error: Exception | None = None
        except Exception as exc:  # noqa: BLE001 - every request of the batch is refused (answered 503) with it
            ids, error = [None] * len(batch), exc
        with self._cond:
            for pending, row_id in zip(batch, ids, strict=True):
                pending.finish(row_id, error)
            self._busy = False
            self._cond.notify_all()
        return mine.result()


class _Pending:
    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row
        self.done = False
        self._id: int | None = None
        self._error: Exception | None = None

    def finish(self, row_id: int | None, error: Exception | None) -> None:
        self._id, self._error, self.done = row_id, error, True

    def result(self) -> int | None:
        if self._error is not None:
            raise self._error
        return self._id


class Inbox:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._commits = _GroupCommit(self._insert)

    def receive(self, key: str, headers: dict[str, str], body: bytes | str, owner: Fence) -> int | None:
        """Store a request as received now and owned by `owner`; its row id, or None when its key is already
        there (a Slack retry or a replayed request: handled, or being handled, already). Requests arriving at
        the same moment share one INSERT and one commit (_GroupCommit)."""
        raw = body.encode("utf-8") if isinstance(body, str) else body
        return self._commits.store({"key": key, "headers": dict(headers), "body": without_token(raw),
                                    "owner": owner.owner, "owner_epoch": owner.epoch})

    def _insert(self, rows: list[dict[str, Any]]) -> list[int | None]:
        """Insert the rows whose keys are new; each row's id, or None for a key already stored (or stored by an
        earlier row of the same batch: a retry that came with its original)."""
        first: dict[str, int] = {}
        for position, row in enumerate(rows):
            first.setdefault(row["key"], position)
        now = self.db.now()
        stmt = (self.db.insert(inbox).values([{**rows[p], "received_at": now} for p in first.values()])
                .on_conflict_do_nothing(index_elements=[inbox.c.key])
                .returning(inbox.c.id, inbox.c.key))
        with self.db.begin() as conn:
            stored = {str(r.key): int(r.id) for r in conn.execute(stmt)}
        return [stored.get(row["key"]) if first[row["key"]] == position else None
                for position, row in enumerate(rows)]

    def done(self, row_id: int) -> None:
        """The request was handled (its listener ran, or failed and logged why): never taken over again."""
        with self.db.begin() as conn:
            conn.execute(update(inbox).where(inbox.c.id == row_id, inbox.c.done_at.is_(None))
                         .values(done_at=self.db.now()))

    def owns(self, row_id: int, me: Fence) -> bool:
        """Whether `me` still holds the row (not done, owned under `me`'s epoch) and `me`'s replica lease is
        still alive: a worker asks before dispatching, so a replica that was paused past its lease and resumed
        leaves the request to the replica that takes it over instead of handling it a second time."""
        query = select(inbox.c.id).where(
            inbox.c.id == row_id, inbox.c.done_at.is_(None), inbox.c.owner == me.owner,
            inbox.c.owner_epoch == me.epoch,
            exists().where(leases.c.name == me.name, leases.c.owner == me.owner, leases.c.epoch == me.epoch,
                           leases.c.expires_at >= self.db.now()))
        with self.db.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def orphans(self, me: Fence, limit: int = 32) -> list[InboxRow]:
        """Requests not done, received within the last WINDOW seconds, whose owner's replica lease is gone
        (expired, or re-acquired under a newer epoch): `me` may take them over. Oldest first."""
        now = self.db.now()
        query = (select(inbox).where(inbox.c.done_at.is_(None), inbox.c.received_at >= now - WINDOW,
                                     or_(inbox.c.owner.is_(None), ~owner_alive(inbox, now)),
                                     or_(inbox.c.owner.is_distinct_from(me.owner),
                                         inbox.c.owner_epoch.is_distinct_from(me.epoch)))
                 .order_by(inbox.c.received_at, inbox.c.id).limit(limit))
        with self.db.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_row(r) for r in rows]

    def take(self, row: InboxRow, me: Fence) -> bool:
        """Own `row` as `me`, if it is still not done and held as it was read (nobody took it meanwhile)."""
        if (row.owner, row.owner_epoch) == (me.owner, me.epoch):
            return True
        as_read = (inbox.c.id == row.id, inbox.c.done_at.is_(None), inbox.c.owner.is_not_distinct_from(row.owner),
                   inbox.c.owner_epoch.is_not_distinct_from(row.owner_epoch))
        with self.db.engine.begin() as conn:
            if self.db.dialect == "postgresql":  # a replica taking it right now holds the row: skip, not wait
                if conn.execute(select(inbox.c.id).where(*as_read).with_for_update(skip_locked=True)).first() is None:
                    return False
            result = conn.execute(update(inbox).where(*as_read).values(owner=me.owner, owner_epoch=me.epoch))
        return result.rowcount == 1

    def forget(self, older_than: float) -> int:
        """Drop requests received before `older_than` (and before Slack's signature window, whatever the caller's
        clock says): a retry or replay of them can no longer pass the signature check, so their keys can never
        match again, and they are past taking over. Returns how many."""
        with self.db.begin() as conn:
            return int(conn.execute(delete(inbox).where(inbox.c.received_at < older_than,
                                                        inbox.c.received_at < self.db.now() - WINDOW)).rowcount)


def without_token(body: bytes) -> bytes:
    """A form-encoded Slack body without the legacy verification token: the `token` field of a slash command
    dropped, and the top-level "token" of a `payload` JSON removed (that one field re-encoded); every other field
    byte for byte as received."""
    if LEGACY_TOKEN.encode() not in body:
        return body
    kept: list[bytes] = []
    for pair in body.split(b"&"):
        name, sep, value = pair.partition(b"=")
        field = unquote_plus(name.decode("utf-8", "replace"))
        if field == LEGACY_TOKEN:
            continue
        if field == "payload" and sep:
            pair = name + sep + _payload_without_token(value)
        kept.append(pair)
    return b"&".join(kept)


def _payload_without_token(value: bytes) -> bytes:
    text = unquote_plus(value.decode("utf-8", "replace"))
    try:
        payload: Any = json.loads(text)
    except ValueError:
        return value  # not JSON: Bolt cannot parse it either, and nothing in it is a field we know
    if not isinstance(payload, dict) or LEGACY_TOKEN not in payload:
        return value
    del payload[LEGACY_TOKEN]
    return _form_value(json.dumps(payload))


def _form_value(text: str) -> bytes:
    """An ASCII text (json.dumps escapes the rest) as a form value that unquote_plus, which Bolt's parse applies,
    turns back into it exactly: only what form decoding would change is escaped. quote_plus would escape every
    quote, colon and comma too, at a few times the cost, on the thread the ack waits for."""
    return text.replace("%", "%25").replace("&", "%26").replace("+", "%2B").replace(" ", "+").encode("ascii")


def _row(row: Any) -> InboxRow:
    m = row._mapping
    return InboxRow(int(m["id"]), m["key"], float(m["received_at"]), dict(m["headers"] or {}), bytes(m["body"]),
                    m["owner"], m["owner_epoch"])
