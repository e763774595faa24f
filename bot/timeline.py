"""The incident timeline: every transition is a stored event, and the alert's thread is a view of it.

Called by bot.core, bot.verify and bot.gate. `record` stores first and then posts; a post that fails
leaves the event unposted in the store, and `flush_all` (run every evaluation cycle) posts it later, in
order. The warning message itself is re-rendered from the stored incident on every change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from bot import blocks
from bot.policy import Service
from bot.slack_out import SlackError, SlackOut
from bot.store import ACTIVE_STATES, Event, Incident, Store

log = logging.getLogger(__name__)


class Timeline:
    def __init__(self, store: Store, slack: SlackOut, service: Callable[[str], Service | None]) -> None:
        self.store = store
        self.slack = slack
        self._service = service
        self._locks: defaultdict[int, threading.Lock] = defaultdict(threading.Lock)

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
        if not incident.channel:
            return incident
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
        try:
            self.slack.update(incident.channel, incident.message_ts, text, body)
        except SlackError as exc:
            # The stored state is right; the next transition re-renders the message again.
            log.warning("incident %s: could not update the warning: %s", incident_id, exc)

    def post_in_thread(self, incident: Incident, text: str, body: list[dict[str, Any]]) -> str | None:
        if not incident.message_ts or not incident.channel:
            return None
        try:
            return self.slack.post(incident.channel, text, body, thread_ts=incident.message_ts)
        except SlackError as exc:
            log.warning("incident %s: could not post in thread: %s", incident.id, exc)
            return None

    def update_in_thread(self, incident: Incident, ts: str, text: str, body: list[dict[str, Any]]) -> None:
        if not incident.channel:
            return
        try:
            self.slack.update(incident.channel, ts, text, body)
        except SlackError as exc:
            # Progress is re-rendered from fresh readings on the next tick.
            log.warning("incident %s: could not update progress: %s", incident.id, exc)

    def mention_approvers(self, service: str) -> str:
        svc = self._service(service)
        return ", ".join(blocks.mention(a) for a in (svc.approvers if svc else ()))
