"""The store's tables: every SQLAlchemy Table on one MetaData, as the Alembic revisions create them.

The per-aggregate parts of the store (bot.infra.store.incidents, events, steps, audit, slo_states, freezes,
requests, alerts) query these tables; tests/test_migrations.py compares `metadata` with the schema that
bot/infra/migrations/versions makes, so a new column or table here needs a new revision there too. Every String,
Text and JSON column gets its fitted type (bot.infra.store.fitting) once, after the last Table.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Float, Index, Integer, LargeBinary, MetaData, String, Table, Text

from bot.infra.store.fitting import guard_columns

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
    # The replica posting the warning right now, and until when its claim holds (the database's clock): the warning
    # is posted by one replica at a time, and one that finds an expired claim reads the channel before posting.
    Column("warn_claimed_by", String(128), nullable=True),
    Column("warn_claim_until", Float, nullable=True),
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
    # The outbox claim: the replica posting this event now and until when (the database's clock). A claim that
    # expired unposted means its poster may have died after Slack took the message: the thread is read first.
    Column("claimed_by", String(128), nullable=True),
    Column("claim_until", Float, nullable=True),
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

# Leases (bot.infra.store.leases): a replica's membership ("replica:<id>") and each evaluation shard
# ("shard:<n>"). `epoch` grows by one at every acquisition, so a holder that lost its lease (paused past
# expires_at, then resumed) and the one that took it over never share a fencing token. Times: the database's clock.
leases = Table(
    "leases", metadata,
    Column("name", String(128), primary_key=True),
    Column("owner", String(128), nullable=True),
    Column("epoch", Integer, nullable=False),
    Column("expires_at", Float, nullable=False),
)

# Durable work (bot.infra.store.work): plan runs, verification ticks, automatic-rollback timers and closes, one
# row each, due at `due_at`, owned by the replica (owner, owner_epoch) that took it. A row whose owner's replica
# lease has expired or moved to a new epoch is taken over by any live replica.
work = Table(
    "work", metadata,
    Column("key", String(128), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("incident_id", Integer, nullable=True, index=True),
    Column("due_at", Float, nullable=False, index=True),
    Column("every", Float, nullable=True),
    Column("owner", String(128), nullable=True),
    Column("owner_epoch", Integer, nullable=True),
    Column("taken_at", Float, nullable=True),
)

# Slack requests stored before their 200 ack (handlers.slack_http): the raw body and the headers Bolt reads, so
# a request acked by a replica that died before handling it is handled by another one.
inbox = Table(
    "inbox", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(255), nullable=False, unique=True),
    Column("received_at", Float, nullable=False),
    Column("headers", JSON, nullable=False, default=dict),
    Column("body", LargeBinary, nullable=False),
    Column("owner", String(128), nullable=True),
    Column("owner_epoch", Integer, nullable=True),
    Column("done_at", Float, nullable=True, index=True),
)

# Budgets shared by every replica (bot.infra.store.budgets): the next time a named action may happen
# (an incident's next chat.update, the workspace's chat.update slots).
budgets = Table(
    "budgets", metadata,
    Column("name", String(128), primary_key=True),
    Column("next_at", Float, nullable=False),
)

# Values every replica may reuse until they expire (the members of a Slack user group).
shared_cache = Table(
    "shared_cache", metadata,
    Column("key", String(255), primary_key=True),
    Column("value", JSON, nullable=False, default=dict),
    Column("expires_at", Float, nullable=False),
)

# Rollback drills (bot.infra.store.drills, bot.incidents.drills): a dry run of the rollback plan after a promotion
# or on /rollback drill (mode dry_run), or a staging plan run for real, verified and maybe restored (staging).
drills = Table(
    "drills", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(128), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("version", String(64), nullable=True),
    Column("baseline", String(64), nullable=True),
    Column("ok", Boolean, nullable=False),
    Column("steps_planned", Integer, nullable=False),
    Column("steps_total", Integer, nullable=False),
    Column("planning_seconds", Float, nullable=False),
    Column("recover_seconds", Float, nullable=True),
    Column("restored", Boolean, nullable=True),
    Column("summary", Text, nullable=False),
    Column("detail", JSON, nullable=False, default=dict),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=False),
    Index("ix_drills_service_started_at", "service", "started_at"),
)

# Recorded SLO baselines (bot.infra.store.baselines, bot.slo.baselines): at each promotion, the outgoing champion's
# median value of each relative SLO over the soak window. Inserted once, never updated.
slo_baselines = Table(
    "slo_baselines", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(128), nullable=False),
    Column("slo", String(255), nullable=False),
    Column("version", String(64), nullable=False),  # the version measured: the outgoing champion
    Column("promoted", String(64), nullable=False),  # the version whose promotion recorded it
    Column("value", Float, nullable=False),
    Column("samples", Integer, nullable=False),
    Column("window_seconds", Float, nullable=False),
    Column("recorded_at", Float, nullable=False),
    Index("ix_slo_baselines_service_slo", "service", "slo"),
)


guard_columns(metadata)  # after the last Table (tests/test_store_edges.py checks that every column is guarded)
