"""The incident timeline: every transition is a stored event, and the alert's thread is a view of it.

Called by bot.incidents (service, runs, verify, close, recovery, detection, alerts). `record` stores first and then
posts; a post that fails leaves the event unposted in the store, and `flush_all` (run every evaluation cycle) posts
it later, in order. The warning message itself is re-rendered from the stored incident on every change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from bot.infra.store import ACTIVE_STATES, Event, Incident, Store
from bot.slack import blocks
from bot.slack.slack_out import SlackError, SlackOut
from bot.slo.policy import Service

log = logging.getLogger(__name__)


class Timeline:
    def __init__(self, store: Store, slack: SlackOut, service: Callable[[str], Service | None], *,
                 update_every: float = 3.0) -> None:
        self.store = store
        self.slack = slack
        self._service = service
        # Per incident: its warning is posted once and its events in order (re-entrant: posting the warning
        # records an event, which flushes).
        self._locks: defaultdict[int, threading.RLock] = defaultdict(threading.RLock)
        # In-place edits (warning and progress message) are limited to one chat.update per `update_every`
        # per incident; an edit that comes sooner waits, and only the latest content of each message is sent.
        self.update_every = update_every
        self._edits_lock = threading.Lock()
        self._pending: dict[tuple[int, str], tuple[str, str, list[dict[str, Any]]]] = {}
        self._last_edit: dict[int, float] = {}
        self._timers: dict[int, threading.Timer] = {}
        self._in_flight: set[int] = set()  # incidents with a chat.update being sent (retries included)

    def record(self, incident_id: int, kind: str, text: str, data: dict[str, Any] | None = None) -> Event:
        event = self.store.add_event(incident_id, kind, text, data)
        self.flush(incident_id)
        return event

    def flush(self, incident_id: int) -> None:
        """Post this incident's unposted events into its thread, oldest first."""
        with self._locks[incident_id]:
            incident = self.store.incident(incident_id)
            if not incident.message_ts or not incident.channel:
                return  # the warning is not posted yet: the events wait for their thread
            for event in self.store.unposted_events(incident_id):
                try:
                    ts = self.slack.post(incident.channel, blocks.event_text(event.at, event.text),
                                         thread_ts=incident.message_ts)
                except SlackError as exc:
                    # Kept unposted in the store; flush_all tries again next cycle, so nothing is lost.
                    log.warning("incident %s: could not post event %s: %s", incident_id, event.kind, exc)
                    return
                self.store.mark_posted(event.id, ts)

    def flush_all(self) -> None:
        """Retry what did not reach Slack: warnings never posted, then unposted events."""
        for incident in self.store.incidents_in(ACTIVE_STATES):
            if not incident.message_ts:
                self.post_warning(incident)
        for incident_id in sorted({e.incident_id for e in self.store.unposted_events()}):
            self.flush(incident_id)

    def render_warning(self, incident: Incident) -> tuple[str, list[dict[str, Any]]]:
        svc = self._service(incident.service)
        approvers = svc.approvers if svc else ()
        confirm = svc.confirm if svc else "dialog"
        return blocks.warning(incident, approvers=approvers, confirm=confirm)

    def post_warning(self, incident: Incident) -> Incident:
        """Post the incident's warning once: under the incident's lock, so the opener (still waiting out a 429,
        say) and the evaluation cycle's flush_all never both post it."""
        if not incident.channel:
            return incident
        with self._locks[incident.id]:
            incident = self.store.incident(incident.id)
            if incident.message_ts or not incident.channel:
                return incident  # posted meanwhile by the other of the two
            text, body = self.render_warning(incident)
            try:
                ts = self.slack.post(incident.channel, text, body)
            except SlackError as exc:
                # The incident stays stored without a message; flush_all posts the warning on a later cycle.
                log.warning("incident %s: could not post the warning: %s", incident.id, exc)
                return incident
            incident = self.store.update_incident(incident.id, message_ts=ts, warned_at=time.time())
            self.record(incident.id, "warned", f"Warning posted to <#{incident.channel}>")
        return incident

    def refresh_warning(self, incident_id: int) -> None:
        incident = self.store.incident(incident_id)
        if not incident.message_ts or not incident.channel:
            return
        text, body = self.render_warning(incident)
        self.edit(incident_id, incident.channel, incident.message_ts, text, body)

    def edit(self, incident_id: int, channel: str, ts: str, text: str, body: list[dict[str, Any]]) -> None:
        """chat.update, at most one per `update_every` per incident; a newer edit of a waiting message wins."""
        with self._edits_lock:
            self._pending[(incident_id, ts)] = (channel, text, body)
        self._send_edit(incident_id)

    def _send_edit(self, incident_id: int) -> None:
        with self._edits_lock:
            self._timers.pop(incident_id, None)
            waiting = [key for key in self._pending if key[0] == incident_id]
            if not waiting or incident_id in self._in_flight:
                return  # nothing to send, or an edit is still being sent (its end schedules the next one)
            wait = self._last_edit.get(incident_id, float("-inf")) + self.update_every - time.monotonic()
            if wait > 0:
                if incident_id not in self._timers:
                    timer = threading.Timer(wait, self._send_edit, args=(incident_id,))
                    timer.daemon = True
                    self._timers[incident_id] = timer
                    timer.start()
                return
            key = waiting[0]
            channel, text, body = self._pending.pop(key)
            self._last_edit[incident_id] = time.monotonic()
            self._in_flight.add(incident_id)
        try:
            self.slack.update(channel, key[1], text, body)
        except SlackError as exc:
            # The stored state is right; the next transition or tick renders the message again.
            log.warning("incident %s: could not update message %s: %s", incident_id, key[1], exc)
        finally:
            with self._edits_lock:
                # Counted from when Slack took it: an edit retried after a 429's Retry-After (seconds inside this
                # call) must not let the next edit go out alongside it, nor bunch the one after.
                self._last_edit[incident_id] = time.monotonic()
                self._in_flight.discard(incident_id)
                more = any(k[0] == incident_id for k in self._pending)
        if more:
            self._send_edit(incident_id)  # schedules the next waiting edit one interval later

    def post_in_thread(self, incident: Incident, text: str, body: list[dict[str, Any]]) -> str | None:
        if not incident.message_ts or not incident.channel:
            return None
        try:
            return self.slack.post(incident.channel, text, body, thread_ts=incident.message_ts)
        except SlackError as exc:
            log.warning("incident %s: could not post in thread: %s", incident.id, exc)
            return None

    def update_in_thread(self, incident: Incident, ts: str, text: str, body: list[dict[str, Any]]) -> None:
        if incident.channel:
            self.edit(incident.id, incident.channel, ts, text, body)

    def mention_approvers(self, service: str) -> str:
        svc = self._service(service)
        return ", ".join(blocks.mention(a) for a in (svc.approvers if svc else ()))

    def say(self, channel: str, text: str) -> None:
        """A note in a channel, outside any incident's thread (a promotion, a freeze by hand, a service's plan).
        Never raises: a channel note must never stop the evaluation loop or a command."""
        if not text:
            return
        try:
            self.slack.post(channel, text)
        except Exception as exc:  # noqa: BLE001 - logged; the action it reports has happened either way
            log.warning("could not post to %s: %s", channel, exc)
