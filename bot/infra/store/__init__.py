"""Durable state: incidents, their timeline events and plan steps, the audit log, SLO state, freezes, and the
Slack requests and Alertmanager alerts already handled.

Everything the bot knows lives in one database (SQLAlchemy Core; SQLite by default, any SQLAlchemy URL works),
so a restart loses nothing. `Store` is what the bot holds: bot.app builds one from DATABASE_URL and hands it to
bot.incidents, bot.slack.timeline, bot.slo and handlers. It is composed of one small part per aggregate, all on
one shared `Database` (engine + clock; bot.infra.store.database), and exposes their methods as its own, so
callers write `store.method(...)`:

- incidents.py: the Incident record and its states (`open_incident`, `transition`, `set_if`, ...)
- events.py: timeline events, the outbox of each incident's Slack thread
- steps.py: the steps of a rollback plan's runs
- audit.py: the audit log
- slo_states.py: each SLO's status and breach clock, each service's healthy_since
- freezes.py: services whose automatic promotion is off
- requests.py / alerts.py: the Slack requests and Alertmanager alerts already handled
- leases.py / work.py: replicas' leases (with fencing epochs) and the durable work they share (bot.infra.replica)
- budgets.py: rate budgets and a cache shared by every replica (chat.update slots, user-group members)
- inbox.py: Slack requests stored before their ack, for another replica to handle if the acking one died
- drills.py: rollback drills (after promotions, on /rollback drill), for history, report and metrics
- baselines.py: relative SLOs' baselines, recorded at each promotion (bot.slo.baselines)

What must happen once is decided by the database (conditional UPDATEs, a UNIQUE column, primary-key claims), so
it holds across threads and across processes sharing the database. Tested on SQLite and PostgreSQL 15: every
String, Text and JSON column is guarded (bot.infra.store.fitting, applied by bot.infra.store.tables), so text is
cut to its column, NUL characters and lone surrogates are dropped, non-finite floats in JSON become null, and
Text and JSON values are stored without credentials (bot.infra.redact). Rows leave the store as the typed
records below (Incident, Event, Step, Freeze, SloState); only `audits` and `update_alert` return plain dicts.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.engine import Engine

from bot.infra.store.alerts import Alerts
from bot.infra.store.audit import AuditLog
from bot.infra.store.baselines import Baselines, NewBaseline, RecordedBaseline
from bot.infra.store.budgets import Budgets, SharedCache
from bot.infra.store.database import Database, Fence, Fenced, current_fence, fenced
from bot.infra.store.drills import Drill, Drills
from bot.infra.store.events import Event, Events
from bot.infra.store.fitting import _FiniteJSON, _FittedString, _FittedText, finite_json, fit, guard_columns
from bot.infra.store.freezes import ALL, Freeze, Freezes
from bot.infra.store.inbox import Inbox
from bot.infra.store.incidents import ACTIVE_STATES, FINAL_STATES, Incident, Incidents
from bot.infra.store.leases import Leases
from bot.infra.store.requests import SeenRequests
from bot.infra.store.slo_states import SloState, SloStates
from bot.infra.store.steps import Step, Steps
from bot.infra.store.tables import TRIGGER_LENGTH, metadata, seen_requests
from bot.infra.store.work import Work, WorkItem, work_key

__all__ = [
    "ACTIVE_STATES", "ALL", "FINAL_STATES", "TRIGGER_LENGTH", "Drill", "Event", "Fence", "Fenced", "Freeze",
    "Incident", "SloState", "Step", "Store", "WorkItem", "current_fence", "fenced", "work_key",
    "_FiniteJSON", "_FittedString", "_FittedText", "_guard_columns", "finite_json", "fit", "metadata",
    "seen_requests", "NewBaseline", "RecordedBaseline",
]

_guard_columns = guard_columns  # the name it had before the split


class Store:
    """The store: one method per read or write, each delegated to the part that owns its table."""

    def __init__(self, url: str = "sqlite:///rollback-bot.db", clock: Callable[[], float] = time.time) -> None:
        self.db = Database(url, clock)
        incidents, events, steps = Incidents(self.db), Events(self.db), Steps(self.db)
        audit, slo, freezes = AuditLog(self.db), SloStates(self.db), Freezes(self.db)
        seen, alerts = SeenRequests(self.db), Alerts(self.db)
        leases, work = Leases(self.db), Work(self.db)
        # -- incidents (incidents.py)
        self.open_incident = incidents.open_incident
        self.incident = incidents.incident
        self.find_incident = incidents.find_incident
        self.active_incident = incidents.active_incident
        self.active_services = incidents.active_services
        self.incidents_in = incidents.incidents_in
        self.last_warned_finished_at = incidents.last_warned_finished_at
        self.recent_incidents = incidents.recent_incidents
        self.incidents_since = incidents.incidents_since
        self.transition = incidents.transition
        self.set_if = incidents.set_if
        self.update_incident = incidents.update_incident
        # -- timeline (events.py)
        self.add_event = events.add_event
        self.mark_posted = events.mark_posted
        self.events = events.events
        self.unposted_events = events.unposted_events
        # -- plan steps (steps.py) and the audit log (audit.py)
        self.start_step = steps.start_step
        self.finish_step = steps.finish_step
        self.steps = steps.steps
        self.audit = audit.audit
        self.audits = audit.audits
        self.last_promotion = audit.last_promotion
        # -- SLO and service state (slo_states.py)
        self.slo_state = slo.slo_state
        self.put_slo_state = slo.put_slo_state
        self.slo_states = slo.slo_states
        self.slo_key = slo.slo_key
        self.put_slo_states = slo.put_slo_states
        self.healthy_since_all = slo.healthy_since_all
        self.healthy_since = slo.healthy_since
        self.set_healthy_since = slo.set_healthy_since
        self.put_healthy_since = slo.put_healthy_since
        # -- freezes (freezes.py)
        self.freeze = freezes.freeze
        self.frozen = freezes.frozen
        self.all_frozen = freezes.all_frozen
        self.frozen_by_service = freezes.frozen_by_service
        self.unfreeze = freezes.unfreeze
        # -- Slack requests and Alertmanager alerts already handled (requests.py, alerts.py)
        self.claim_request = seen.claim_request
        self.forget_requests = seen.forget_requests
        self.release_request = seen.release_request
        self.claim_alert = alerts.claim_alert
        self.update_alert = alerts.update_alert
        # -- leases and durable work, for many replicas on one database (leases.py, work.py)
        self.acquire_lease = leases.acquire
        self.renew_lease = leases.renew
        self.release_lease = leases.release
        self.renew_leases = leases.renew_many
        self.expire_leases = leases.expire_others
        self.holds_lease = leases.holds
        self.live_leases = leases.live
        self.schedule_work = work.schedule
        self.cancel_work = work.cancel
        self.pending_work = work.pending
        self.due_work = work.due
        self.take_work = work.take
        self.work_again = work.again
        self.work_done = work.done
        # -- the outbox's claims, shared budgets and cache, for many replicas on one database (events.py,
        #    incidents.py, budgets.py)
        self.claim_event = events.claim_event
        self.release_event = events.release_event
        self.claim_warning = incidents.claim_warning
        self.release_warning = incidents.release_warning
        self.mark_warned = incidents.mark_warned
        budget, shared = Budgets(self.db), SharedCache(self.db)
        self.take_slot = budget.take_slot
        self.take_slots = budget.take_slots
        self.extend_slot = budget.extend_slot
        self.cached = shared.cached
        self.cache = shared.cache
        # -- Slack requests stored before their ack, taken over when their replica died (inbox.py)
        inbox = Inbox(self.db)
        self.inbox_receive = inbox.receive
        self.inbox_owns = inbox.owns
        self.inbox_done = inbox.done
        self.inbox_orphans = inbox.orphans
        self.inbox_take = inbox.take
        self.forget_inbox = inbox.forget
        # -- rollback drills (drills.py)
        drills = Drills(self.db)
        self.record_drill = drills.record_drill
        self.recent_drills = drills.recent_drills
        self.last_drills = drills.last_drills
        # -- recorded SLO baselines (baselines.py)
        baselines = Baselines(self.db)
        self.record_baselines = baselines.record_baselines
        self.baselines = baselines.baselines

    @property
    def engine(self) -> Engine:
        return self.db.engine

    @property
    def clock(self) -> Callable[[], float]:
        return self.db.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.db.clock = clock
