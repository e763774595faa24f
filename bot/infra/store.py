"""Durable state: incidents, their timeline events and executor steps, the audit log, SLO state and freezes.

Everything the bot knows lives here (SQLAlchemy Core; SQLite by default, any SQLAlchemy URL works), so a
restart loses nothing and several processes agree. Called by bot.incidents, bot.slo.evaluation, bot.incidents.verify,
bot.slo.gate and the CLI. State changes that must happen once are conditional UPDATEs (`transition`), and "one
open incident per service" is a UNIQUE column, so both hold across threads and processes.

Tested on SQLite and PostgreSQL 15. What the store writes fits both (`_guard_columns`): text from outside
(alert names, user IDs, reasons) is cut to its String(n) column's length instead of making PostgreSQL refuse
the row, NUL characters and lone surrogates are dropped from all text, and a JSON value's non-finite floats
(+Inf from a query like `x/0`) are written as null, since PostgreSQL's json refuses NaN and Infinity. Text
and JSON values are stored without credentials (bot.infra.redact): an MLflow or git error that echoes a URL's
password leaves no trace of it in the timeline, the audit log or an incident's baseline.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    bindparam,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from bot.infra import migrations
from bot.infra.redact import REDACTOR, redact

# halted: a step failed or the bot restarted mid-plan; it waits for an approver to retry/resume or stop.
ACTIVE_STATES = ("open", "executing", "halted", "verifying")
FINAL_STATES = ("recovered", "verify_failed", "failed", "dismissed")

# An incident's trigger: an SLO's name or an Alertmanager alertname (handlers.alertmanager shortens it to this).
TRIGGER_LENGTH = 128

metadata = MetaData()

incidents = Table(
    "incidents", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(128), nullable=False, index=True),
    # Equals `service` while the incident is active, NULL afterwards: UNIQUE makes "one open incident per
    # service" a database fact (NULLs never collide in SQLite or PostgreSQL).
    Column("active_service", String(128), unique=True, nullable=True),
    Column("state", String(32), nullable=False),
    Column("trigger", String(TRIGGER_LENGTH), nullable=False),
    Column("detail", JSON, nullable=False, default=dict),
    Column("baseline", JSON, nullable=False, default=dict),
    Column("breach_started_at", Float, nullable=True),
    Column("opened_at", Float, nullable=False),
    Column("warned_at", Float, nullable=True),
    Column("channel", String(32), nullable=True),
    Column("message_ts", String(32), nullable=True),
    Column("progress_ts", String(32), nullable=True),
    Column("requested_by", String(32), nullable=True),
    # With two_person: the first approver's confirmation (an approver's own /rollback, or the first click);
    # the plan runs on a different approver's (bot.incidents.authorization).
    Column("first_approver", String(32), nullable=True),
    Column("approved_by", String(32), nullable=True),
    Column("approved_at", Float, nullable=True),
    Column("executed_at", Float, nullable=True),
    Column("recovered_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("error", Text, nullable=True),
    # While halted: the position of the first step not known to be done (Retry step / Resume starts there),
    # and whether the halt came from a restart mid-plan ("interrupted") or a failing step ("failed").
    Column("resume_from", Integer, nullable=True),
    Column("halt_kind", String(16), nullable=True),
    # auto_rollback: when the plan runs by itself unless an approver presses Stop (NULL = not automatic).
    Column("auto_at", Float, nullable=True),
    # What opened the incident: detection | alertmanager | request. Only the first two may arm auto_at.
    Column("armed_by", String(16), nullable=True),
    # Verification progress (started_at, stable_since, last_update), kept so a restart can continue it.
    Column("verification", JSON, nullable=False, default=dict),
)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", Integer, nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("data", JSON, nullable=False, default=dict),
    Column("slack_ts", String(32), nullable=True),
)

steps = Table(
    "steps", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", Integer, nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("executor", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # running | done | failed
    Column("plan", JSON, nullable=False, default=dict),
    Column("outcome", JSON, nullable=True),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
)

audit_log = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("incident_id", Integer, nullable=True, index=True),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("result", String(32), nullable=False),
    Column("detail", JSON, nullable=False, default=dict),
)

slo_state = Table(
    "slo_state", metadata,
    Column("service", String(128), primary_key=True),
    Column("slo", String(128), primary_key=True),
    Column("status", String(16), nullable=False),  # ok | breach | nodata | error
    Column("value", Float, nullable=True),
    Column("breach_since", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
)

service_state = Table(
    "service_state", metadata,
    Column("service", String(128), primary_key=True),
    Column("healthy_since", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
)

# Slack requests already handled, by idempotency key: a retry (X-Slack-Retry-Num) or a replayed signed
# request finds its key here and does nothing a second time, in any process sharing the database.
seen_requests = Table(
    "seen_requests", metadata,
    Column("key", String(255), primary_key=True),
    Column("at", Float, nullable=False, index=True),
)

freezes = Table(
    "freezes", metadata,
    Column("service", String(128), primary_key=True),
    Column("frozen_at", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("incident_id", Integer, nullable=True),
    Column("blocked_version", String(64), nullable=True),
    Column("actor", String(64), nullable=False),
)

# Alertmanager alerts already handled (handlers.alertmanager), by fingerprint and startsAt: repeat sends
# (group_interval, repeat_interval, retries) find their row and open nothing new; resolved_at is set once.
alerts = Table(
    "alerts", metadata,
    Column("fingerprint", String(64), primary_key=True),
    Column("starts_at", String(64), primary_key=True),
    Column("service", String(128), nullable=False),
    Column("alertname", String(255), nullable=False),
    Column("incident_id", Integer, nullable=True),
    Column("received_at", Float, nullable=False),
    Column("resolved_at", Float, nullable=True),
)


# -- what every write fits into (SQLite accepts anything; PostgreSQL refuses what does not fit) ------------
def fit(text: str, length: int | None = None) -> str:
    """`text` as the store writes it into a column of `length` characters (None: unbounded): NUL characters
    dropped and lone surrogates replaced (PostgreSQL and UTF-8 refuse them), and, when still too long, cut to
    `length` ending in "…" so a reader sees it was shortened. handlers.alertmanager shortens alert names with it."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    text = text.replace("\x00", "")
    if length is not None and len(text) > length:
        return text[: length - 1] + "…"
    return text


def finite_json(value: Any) -> Any:
    """`value` (a JSON value) with every non-finite float (NaN, +Inf, -Inf) replaced by None and its text
    cleaned like `fit`: PostgreSQL's json refuses NaN and Infinity, and Python writes them unquoted."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return fit(value)
    if isinstance(value, dict):
        return {fit(k) if isinstance(k, str) else k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


class _FittedString(TypeDecorator[str]):
    """A String(n) column's type as written: each value bound to it (insert, update, or compared in a WHERE,
    so a lookup finds what was stored) goes through `fit`. The DDL stays VARCHAR(n)."""

    impl = String
    cache_ok = True

    def __init__(self, length: int | None = None) -> None:
        super().__init__(length)
        self.length = length

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return fit(value, self.length) if isinstance(value, str) else value


class _FittedText(_FittedString):
    """A Text column's type as written: no length to fit, the same clean text, and no credentials (event texts,
    errors and reasons carry what executors and libraries said, URLs included; bot.infra.redact)."""

    impl = Text

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return redact(fit(value)) if isinstance(value, str) else value


class _FiniteJSON(TypeDecorator[Any]):
    """A JSON column's type as written: the value goes through `finite_json`, and its strings through bot.infra.redact."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return REDACTOR.deep(finite_json(value))


def _guard_columns(meta: MetaData) -> None:
    """Give every String(n), Text and JSON column of the store's tables its fitted type, in this one place, so
    no write path (and no column added later) can hand PostgreSQL a value it refuses."""
    for table in meta.tables.values():
        for column in table.columns:
            kind = column.type
            if isinstance(kind, JSON):
                column.type = _FiniteJSON()
            elif isinstance(kind, Text):
                column.type = _FittedText()
            elif isinstance(kind, String):
                column.type = _FittedString(kind.length)


_guard_columns(metadata)  # after the last Table (tests/test_store_edges.py checks that every column is guarded)


@dataclass(frozen=True)
class Incident:
    id: int
    service: str
    active_service: str | None
    state: str
    trigger: str
    detail: dict[str, Any]
    baseline: dict[str, Any]
    breach_started_at: float | None
    opened_at: float
    warned_at: float | None
    channel: str | None
    message_ts: str | None
    progress_ts: str | None
    requested_by: str | None
    first_approver: str | None
    approved_by: str | None
    approved_at: float | None
    executed_at: float | None
    recovered_at: float | None
    finished_at: float | None
    error: str | None
    verification: dict[str, Any]
    resume_from: int | None
    halt_kind: str | None
    auto_at: float | None
    armed_by: str | None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True)
class Event:
    id: int
    incident_id: int
    at: float
    kind: str
    text: str
    data: dict[str, Any]
    slack_ts: str | None


@dataclass(frozen=True)
class Step:
    id: int
    incident_id: int
    position: int
    executor: str
    status: str
    plan: dict[str, Any]
    outcome: dict[str, Any] | None
    started_at: float
    finished_at: float | None


@dataclass(frozen=True)
class Freeze:
    service: str
    frozen_at: float
    reason: str
    incident_id: int | None
    blocked_version: str | None
    actor: str


@dataclass(frozen=True)
class SloState:
    service: str
    slo: str
    status: str
    value: float | None
    breach_since: float | None
    updated_at: float


def _row(cls: type, row: Any) -> Any:
    mapping = row._mapping
    return cls(**{f.name: mapping[f.name] for f in fields(cls)})


def _pk(result: Any) -> int:
    key = result.inserted_primary_key
    assert key is not None, "INSERT returned no primary key"
    return int(key[0])


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class Store:
    def __init__(self, url: str = "sqlite:///rollback-bot.db", clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # The schema comes from the Alembic revisions (bot.infra.migrations), which match `metadata`. SQLite (the
        # default, and every test) is brought to head here; any other database is migrated only by
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

    # -- incidents ---------------------------------------------------------------------------------
    def open_incident(self, *, service: str, trigger: str, detail: dict[str, Any], baseline: dict[str, Any],
                      breach_started_at: float | None, channel: str,
                      requested_by: str | None = None, auto_at: float | None = None,
                      armed_by: str | None = None, first_approver: str | None = None) -> Incident | None:
        """Create an incident, or return None when the service already has an active one."""
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                result = conn.execute(insert(incidents).values(
                    service=service, active_service=service, state="open", trigger=trigger,
                    detail=detail, baseline=baseline, breach_started_at=breach_started_at,
                    opened_at=now, channel=channel, requested_by=requested_by, auto_at=auto_at,
                    armed_by=armed_by, first_approver=first_approver))
                new_id = _pk(result)
        except IntegrityError:
            # The UNIQUE active_service column refused a second active incident for this service.
            return None
        return self.incident(new_id)

    def incident(self, incident_id: int) -> Incident:
        with self.engine.connect() as conn:
            row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).one()
        return _row(Incident, row)

    def find_incident(self, incident_id: int) -> Incident | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).first()
        return _row(Incident, row) if row else None

    def active_incident(self, service: str) -> Incident | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(incidents).where(incidents.c.active_service == service)).first()
        return _row(Incident, row) if row else None

    def incidents_in(self, states: tuple[str, ...]) -> list[Incident]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(incidents).where(incidents.c.state.in_(states))
                                .order_by(incidents.c.id)).all()
        return [_row(Incident, r) for r in rows]

    def last_warned_finished_at(self, service: str) -> float | None:
        """When the service's most recent incident about a breach (detected or alerted, not a person's
        request) ended; None if it never had one that ended."""
        with self.engine.connect() as conn:
            row = conn.execute(select(incidents.c.finished_at).where(incidents.c.service == service,
                                                                     incidents.c.trigger != "manual",
                                                                     incidents.c.finished_at.is_not(None))
                               .order_by(incidents.c.finished_at.desc()).limit(1)).first()
        return row[0] if row else None

    def recent_incidents(self, service: str | None = None, limit: int = 10) -> list[Incident]:
        query = select(incidents).order_by(incidents.c.id.desc()).limit(limit)
        if service:
            query = query.where(incidents.c.service == service)
        with self.engine.connect() as conn:
            return [_row(Incident, r) for r in conn.execute(query).all()]

    def transition(self, incident_id: int, from_states: tuple[str, ...], to_state: str, *,
                   first_approver_other_than: str | None = None, auto: bool | None = None,
                   **values: Any) -> Incident | None:
        """Move an incident to `to_state` only if it is in one of `from_states`; None if it was not.

        This conditional UPDATE is what makes an approval, a dismissal or a verdict happen once, however
        many clicks, retries or processes race for it. `first_approver_other_than` adds the two-person rule
        (another approver must have given the first approval); `auto` requires the automatic run to be (still)
        armed or not.
        """
        values["state"] = to_state
        if to_state in FINAL_STATES:
            values["active_service"] = None
            values.setdefault("finished_at", self.clock())
        conditions = [incidents.c.id == incident_id, incidents.c.state.in_(from_states)]
        if first_approver_other_than is not None:
            conditions += [incidents.c.first_approver.is_not(None),
                           incidents.c.first_approver != first_approver_other_than]
        if auto is not None:
            conditions.append(incidents.c.auto_at.is_not(None) if auto else incidents.c.auto_at.is_(None))
        with self.engine.begin() as conn:
            result = conn.execute(update(incidents).where(*conditions).values(**values))
        return self.incident(incident_id) if result.rowcount == 1 else None

    def set_if(self, incident_id: int, state: str, column: str, expected: Any, value: Any) -> Incident | None:
        """Set one column only while the incident is in `state` and the column still holds `expected`
        (e.g. record who requested a rollback, once; disarm an automatic rollback, once)."""
        col = incidents.c[column]
        condition = col.is_(None) if expected is None else col == expected
        with self.engine.begin() as conn:
            result = conn.execute(update(incidents).where(incidents.c.id == incident_id, incidents.c.state == state,
                                                          condition).values({column: value}))
        return self.incident(incident_id) if result.rowcount == 1 else None

    def forget_requests(self, older_than: float) -> int:
        """Drop request keys claimed before `older_than`: Slack stops retrying within minutes, and Bolt refuses
        a replay whose signed timestamp is over 5 minutes old, so old keys can never match again."""
        with self.engine.begin() as conn:
            return int(conn.execute(seen_requests.delete().where(seen_requests.c.at < older_than)).rowcount)

    def claim_request(self, key: str) -> bool:
        """True the first time `key` is claimed, False for a retry or replay of the same Slack request."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(seen_requests).values(key=key[:255], at=self.clock()))
        except IntegrityError:
            # Primary key taken: this request was already handled (here or by another process).
            return False
        return True

    def update_incident(self, incident_id: int, **values: Any) -> Incident:
        with self.engine.begin() as conn:
            conn.execute(update(incidents).where(incidents.c.id == incident_id).values(**values))
        return self.incident(incident_id)

    # -- timeline ----------------------------------------------------------------------------------
    def add_event(self, incident_id: int, kind: str, text: str, data: dict[str, Any] | None = None,
                  at: float | None = None) -> Event:
        with self.engine.begin() as conn:
            result = conn.execute(insert(events).values(incident_id=incident_id, at=at or self.clock(),
                                                        kind=kind, text=text, data=data or {}))
            row = conn.execute(select(events).where(events.c.id == _pk(result))).one()
        return _row(Event, row)

    def mark_posted(self, event_id: int, slack_ts: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(events).where(events.c.id == event_id).values(slack_ts=slack_ts))

    def events(self, incident_id: int) -> list[Event]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(events).where(events.c.incident_id == incident_id)
                                .order_by(events.c.id)).all()
        return [_row(Event, r) for r in rows]

    def unposted_events(self, incident_id: int | None = None) -> list[Event]:
        query = select(events).where(events.c.slack_ts.is_(None)).order_by(events.c.id)
        if incident_id is not None:
            query = query.where(events.c.incident_id == incident_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_row(Event, r) for r in rows]

    # -- steps and audit ---------------------------------------------------------------------------
    def start_step(self, incident_id: int, position: int, executor: str, plan: dict[str, Any]) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(insert(steps).values(incident_id=incident_id, position=position,
                                                       executor=executor, status="running", plan=plan,
                                                       started_at=self.clock()))
        return int(_pk(result))

    def finish_step(self, step_id: int, ok: bool, outcome: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(steps).where(steps.c.id == step_id).values(
                status="done" if ok else "failed", outcome=outcome, finished_at=self.clock()))

    def steps(self, incident_id: int) -> list[Step]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(steps).where(steps.c.incident_id == incident_id)
                                .order_by(steps.c.position, steps.c.id)).all()
        return [_row(Step, r) for r in rows]

    def audit(self, *, actor: str, action: str, result: str, incident_id: int | None = None,
              detail: dict[str, Any] | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(audit_log).values(at=self.clock(), incident_id=incident_id, actor=actor,
                                                  action=action, result=result,
                                                  detail=json.loads(json.dumps(detail or {}, default=str))))

    def audits(self, incident_id: int | None = None) -> list[dict[str, Any]]:
        query = select(audit_log).order_by(audit_log.c.id)
        if incident_id is not None:
            query = query.where(audit_log.c.incident_id == incident_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query).all()]

    # -- SLO and service state ---------------------------------------------------------------------
    def slo_state(self, service: str, slo: str) -> SloState | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(slo_state).where(slo_state.c.service == service,
                                                       slo_state.c.slo == slo)).first()
        return _row(SloState, row) if row else None

    def put_slo_state(self, state: SloState) -> None:
        values = {f.name: getattr(state, f.name) for f in fields(SloState)}
        with self.engine.begin() as conn:
            changed = conn.execute(update(slo_state).where(slo_state.c.service == state.service,
                                                           slo_state.c.slo == state.slo).values(**values))
            if changed.rowcount == 0:
                conn.execute(insert(slo_state).values(**values))

    def slo_states(self) -> dict[tuple[str, str], SloState]:
        """Every stored SLO state by (service, slo) as stored (see `slo_key`): one read for a whole cycle."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(slo_state)).all()
        return {(row.service, row.slo): _row(SloState, row) for row in rows}

    @staticmethod
    def slo_key(service: str, slo: str) -> tuple[str, str]:
        """The key `slo_states` has for this SLO: its names as their columns store them (a name longer than
        its column is stored shortened, and must be looked up shortened too)."""
        return (fit(service, getattr(slo_state.c.service.type, "length", None)),
                fit(slo, getattr(slo_state.c.slo.type, "length", None)))

    def put_slo_states(self, states: Iterable[SloState]) -> None:
        """Insert or update many SLO states in one transaction (bot.slo.evaluation, once per cycle)."""
        rows = [{f.name: getattr(state, f.name) for f in fields(SloState)} for state in states]
        for row in rows:  # compared with the stored keys below, so as stored
            row["service"], row["slo"] = self.slo_key(row["service"], row["slo"])
        if not rows:
            return
        columns = ("status", "value", "breach_since", "updated_at")
        with self.engine.begin() as conn:
            known = {(row.service, row.slo) for row in conn.execute(select(slo_state.c.service, slo_state.c.slo))}
            old = [{**{f"new_{c}": row[c] for c in columns}, "key_service": row["service"], "key_slo": row["slo"]}
                   for row in rows if (row["service"], row["slo"]) in known]
            new = [row for row in rows if (row["service"], row["slo"]) not in known]
            if old:
                conn.execute(update(slo_state)
                             .where(slo_state.c.service == bindparam("key_service"),
                                    slo_state.c.slo == bindparam("key_slo"))
                             .values({c: bindparam(f"new_{c}") for c in columns}), old)
            if new:
                conn.execute(insert(slo_state), new)

    def healthy_since_all(self) -> dict[str, float | None]:
        """healthy_since of every service that has a stored state: one read for a whole evaluation cycle."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(service_state.c.service, service_state.c.healthy_since)).all()
        return {row.service: row.healthy_since for row in rows}

    def healthy_since(self, service: str) -> float | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(service_state.c.healthy_since)
                               .where(service_state.c.service == service)).first()
        return row[0] if row else None

    def set_healthy_since(self, service: str, since: float | None) -> None:
        with self.engine.begin() as conn:
            changed = conn.execute(update(service_state).where(service_state.c.service == service)
                                   .values(healthy_since=since, updated_at=self.clock()))
            if changed.rowcount == 0:
                conn.execute(insert(service_state).values(service=service, healthy_since=since,
                                                          updated_at=self.clock()))

    # -- freezes -----------------------------------------------------------------------------------
    def freeze(self, *, service: str, reason: str, actor: str, incident_id: int | None = None,
               blocked_version: str | None = None) -> Freeze:
        values = dict(frozen_at=self.clock(), reason=reason, incident_id=incident_id,
                      blocked_version=blocked_version, actor=actor)
        with self.engine.begin() as conn:
            changed = conn.execute(update(freezes).where(freezes.c.service == service).values(**values))
            if changed.rowcount == 0:
                conn.execute(insert(freezes).values(service=service, **values))
        frozen = self.frozen(service)
        assert frozen is not None
        return frozen

    def frozen(self, service: str) -> Freeze | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(freezes).where(freezes.c.service == service)).first()
        return _row(Freeze, row) if row else None

    def all_frozen(self) -> list[Freeze]:
        with self.engine.connect() as conn:
            return [_row(Freeze, r) for r in conn.execute(select(freezes).order_by(freezes.c.service)).all()]

    def unfreeze(self, service: str) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(freezes.delete().where(freezes.c.service == service)).rowcount == 1

    # -- Alertmanager alerts -----------------------------------------------------------------------
    def claim_alert(self, fingerprint: str, starts_at: str, *, service: str, alertname: str,
                    resolved_at: float | None = None) -> bool:
        """True the first time an alert (fingerprint + startsAt) is seen; False for a repeat send of it."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(alerts).values(fingerprint=fingerprint, starts_at=starts_at, service=service,
                                                   alertname=alertname, received_at=self.clock(),
                                                   resolved_at=resolved_at))
        except IntegrityError:
            # Primary key taken: this alert was already handled (here or by another process).
            return False
        return True

    def update_alert(self, fingerprint: str, starts_at: str, *, unresolved_only: bool = False,
                     **values: Any) -> dict[str, Any] | None:
        """Set columns of a claimed alert (incident_id, resolved_at), or with `delete=True` drop the claim
        (its handling failed, so Alertmanager's retry must not be deduped). With unresolved_only, only while
        it is not resolved yet, so a resolved notification acts once. The row afterwards, None if unchanged."""
        key = [alerts.c.fingerprint == fingerprint, alerts.c.starts_at == starts_at]
        where = [*key, alerts.c.resolved_at.is_(None)] if unresolved_only else key
        with self.engine.begin() as conn:
            if values.pop("delete", False):
                conn.execute(alerts.delete().where(*where))
                return None
            if conn.execute(update(alerts).where(*where).values(**values)).rowcount != 1:
                return None
            row = conn.execute(select(alerts).where(*key)).one()
        return dict(row._mapping)
