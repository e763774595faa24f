"""The incident timeline: every transition is a stored event, and the alert's thread is a view of it.

Called by bot.incidents (service, runs, verify, close, recovery, detection, alerts). `record` stores first and then
posts; a post that fails leaves the event unposted in the store, and `flush_all` (run every evaluation cycle) posts
it later, in order. The warning message itself is re-rendered from the stored incident on every change.

Several replicas may share the store (bot.infra.store on PostgreSQL), so what must happen once holds cluster-wide:
- each event is claimed before it is posted (`claim_event`, by the database's clock, for `claim_ttl` seconds) and
  carries Slack message metadata naming it (event_type "rollback_event", event_payload {event_id, incident_id}). A
  claim that had expired unposted means its poster may have died after Slack took the message: the thread is read
  first (conversations.replies) and, when the event is there, it is marked posted with that message's ts instead
  of being posted twice. An incident's events go out in id order: a replica that cannot claim the oldest unposted
  one (another is posting it) stops flushing that incident.
- the warning likewise (`claim_warning`; metadata "rollback_warning" {incident_id}; on an expired claim the
  channel's history since the incident opened is searched first).
- in-place edits take shared budget slots (`take_slots`): one chat.update per incident per `update_every`, and a
  workspace-wide chat.update budget (Slack's Tier 3, ~50 a minute), besides the per-process limiter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from bot.infra import metrics
from bot.infra.store import ACTIVE_STATES, Event, Fence, Incident, Store, current_fence
from bot.slack import blocks
from bot.slack.slack_out import SlackError, SlackOut
from bot.slo.policy import Service

log = logging.getLogger(__name__)

EVENT_TYPE, WARNING_TYPE = "rollback_event", "rollback_warning"  # the metadata event_type of each kind of post
# Answers saying the bot can never read this channel (not a member of a public one it posts to with
# chat:write.public, no history scope): then a message whose poster died is posted again rather than never.
# conversations.history / replies document channel_not_found, thread_not_found, missing_scope and no_permission
# ("make sure your app is a member of the conversation"); not_in_channel is what a non-member bot gets in practice.
UNREADABLE = frozenset({"not_in_channel", "no_permission", "missing_scope", "channel_not_found", "thread_not_found"})
WARNING_LOOKBACK = 120.0  # how far before an incident opened its channel's history is searched (clock skew)


class Timeline:
    def __init__(self, store: Store, slack: SlackOut, service: Callable[[str], Service | None], *,
                 update_every: float = 3.0, replica_id: str = "local", claim_ttl: float = 15.0,
                 workspace_edit_every: float = 1.2, workspace_edit_burst: int = 5) -> None:
        self.store = store
        self.slack = slack
        self._service = service
        # This replica's name on its outbox claims, and how long a claim holds (ROLLBACK_LEASE_TTL): longer than a
        # post takes, so a live poster's claim never expires under it.
        self.replica_id = replica_id
        self.claim_ttl = claim_ttl
        # The workspace's chat.update budget, shared by every replica: one per `workspace_edit_every` in the long
        # run (1.2 s: 50 a minute, Slack's Tier 3), up to `workspace_edit_burst` back to back after a quiet spell.
        self.workspace_edit_every = workspace_edit_every
        self.workspace_edit_burst = workspace_edit_burst
        # Per incident: its warning is posted once and its events in order (re-entrant: posting the warning
        # records an event, which flushes).
        self._locks: defaultdict[int, threading.RLock] = defaultdict(threading.RLock)
        # In-place edits (warning and progress message) are limited to one chat.update per `update_every`
        # per incident; an edit that comes sooner waits, and only the latest content of each message is sent.
        self.update_every = update_every
        self._edits_lock = threading.Lock()
        self._pending: dict[tuple[int, str], tuple[str, str, list[dict[str, Any]], Fence | None]] = {}
        self._last_edit: dict[int, float] = {}
        self._timers: dict[int, threading.Timer] = {}
        self._in_flight: set[int] = set()  # incidents with a chat.update being sent (retries included)

    def record(self, incident_id: int, kind: str, text: str, data: dict[str, Any] | None = None) -> Event:
        event = self.store.add_event(incident_id, kind, text, data)
        self.flush(incident_id)
        return event

    def flush(self, incident_id: int) -> None:
        """Post this incident's unposted events into its thread, oldest first, each under this replica's claim.
        Stops at the first event another replica is posting (it goes on in order from there) or that fails."""
        with self._locks[incident_id]:
            incident = self.store.incident(incident_id)
            if not incident.message_ts or not incident.channel:
                return  # the warning is not posted yet: the events wait for their thread
            blocked: int | None = None  # the event whose claim failed: the same one twice means someone holds it
            while (unposted := self.store.unposted_events(incident_id)) and unposted[0].id != blocked:
                blocked = None
                for event in unposted:
                    claim = self.store.claim_event(event.id, self.replica_id, self.claim_ttl)
                    if claim is None:
                        blocked = event.id  # posted meanwhile (read again and go on) or being posted (stop)
                        break
                    if not self._post_event(incident, event, taken_over=claim.taken_over):
                        return  # kept unposted and unclaimed; flush_all tries again next cycle: nothing is lost

    def _post_event(self, incident: Incident, event: Event, *, taken_over: bool) -> bool:
        """Post one claimed event (or find it already in the thread) and mark it posted; False if it is not."""
        assert incident.channel and incident.message_ts
        try:
            ts = self._find_in_thread(incident, event) if taken_over else None
            if ts is None:
                ts = self.slack.post(incident.channel, blocks.event_text(event.at, event.text),
                                     thread_ts=incident.message_ts,
                                     metadata={"event_type": EVENT_TYPE,
                                               "event_payload": {"event_id": event.id, "incident_id": incident.id}})
        except SlackError as exc:
            # Kept unposted in the store, its claim given up (a post that timed out may still have reached Slack:
            # the next claim reads the thread first); flush_all tries again next cycle, so nothing is lost.
            log.warning("incident %s: could not post event %s: %s", incident.id, event.kind, exc)
            self.store.release_event(event.id, self.replica_id)
            return False
        self.store.mark_posted(event.id, ts)
        return True

    def _find_in_thread(self, incident: Incident, event: Event) -> str | None:
        """The ts of the thread message that carries `event` in its metadata (a poster that died before marking
        it), or None. SlackError when the thread cannot be read now (then nothing is posted); None when it never can."""
        assert incident.channel and incident.message_ts
        try:
            messages = self.slack.replies(incident.channel, incident.message_ts)
        except SlackError as exc:
            if exc.code not in UNREADABLE:
                raise
            log.warning("incident %s: cannot read its thread (%s): posting event %s again, it may show twice",
                        incident.id, exc.code, event.id)
            return None
        for message in messages:
            if _names(message, EVENT_TYPE, event_id=event.id, incident_id=incident.id):
                log.info("incident %s: event %s was already in the thread (%s)", incident.id, event.id, message["ts"])
                return str(message["ts"])
        return None

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
        return blocks.warning(incident, approvers=approvers, confirm=confirm,
                              changed=(incident.detail or {}).get("changed"))

    def post_warning(self, incident: Incident) -> Incident:
        """Post the incident's warning once: under the incident's lock, so the opener (still waiting out a 429,
        say) and the evaluation cycle's flush_all never both post it, and under this replica's claim on it, so
        neither do two replicas. A claim taken over from one that expired searches the channel first."""
        if not incident.channel:
            return incident
        with self._locks[incident.id]:
            incident = self.store.incident(incident.id)
            if incident.message_ts or not incident.channel:
                return incident  # posted meanwhile by the other of the two
            claim = self.store.claim_warning(incident.id, self.replica_id, self.claim_ttl)
            if claim is None:
                return self.store.incident(incident.id)  # posted, or being posted by another replica
            try:
                ts = self._find_warning(incident) if claim.taken_over else None
                if ts is None:
                    text, body = self.render_warning(incident)
                    ts = self.slack.post(incident.channel, text, body,
                                         metadata={"event_type": WARNING_TYPE,
                                                   "event_payload": {"incident_id": incident.id}})
            except SlackError as exc:
                # The incident stays stored without a message, its claim given up; flush_all posts the warning on
                # a later cycle (searching the channel first: a post that timed out may have reached Slack).
                log.warning("incident %s: could not post the warning: %s", incident.id, exc)
                self.store.release_warning(incident.id, self.replica_id)
                return incident
            warned = self.store.mark_warned(incident.id, ts, self.store.clock())
            if warned is None:  # another replica stored its warning first (only after this one's claim expired)
                log.warning("incident %s: a second warning %s was posted after a claim expired", incident.id, ts)
                return self.store.incident(incident.id)
            incident = warned
            self.record(incident.id, "warned", f"Warning posted to <#{incident.channel}>")
        return incident

    def _find_warning(self, incident: Incident) -> str | None:
        """The ts of this incident's warning in its channel (posted by a replica that died before storing it), or
        None. SlackError when the channel cannot be read now (then nothing is posted); None when it never can."""
        assert incident.channel
        try:
            messages = self.slack.history(incident.channel, incident.opened_at - WARNING_LOOKBACK)
        except SlackError as exc:
            if exc.code not in UNREADABLE:
                raise
            log.warning("incident %s: cannot read its channel (%s): posting the warning again, it may show twice",
                        incident.id, exc.code)
            return None
        for message in messages:
            if _names(message, WARNING_TYPE, incident_id=incident.id):
                log.info("incident %s: its warning was already in the channel (%s)", incident.id, message["ts"])
                return str(message["ts"])
        return None

    def refresh_warning(self, incident_id: int) -> None:
        incident = self.store.incident(incident_id)
        if not incident.message_ts or not incident.channel:
            return
        text, body = self.render_warning(incident)
        self.edit(incident_id, incident.channel, incident.message_ts, text, body)

    def edit(self, incident_id: int, channel: str, ts: str, text: str, body: list[dict[str, Any]]) -> None:
        """chat.update, at most one per `update_every` per incident; a newer edit of a waiting message wins. An edit
        made under a lease (a verification tick) is sent only while that lease is held: a replica paused while
        its edit waited, then resumed after another took the work over, must not write old text over new."""
        with self._edits_lock:
            self._pending[(incident_id, ts)] = (channel, text, body, current_fence())
        self._send_edit(incident_id)

    def _send_edit(self, incident_id: int) -> None:
        with self._edits_lock:
            self._timers.pop(incident_id, None)
            waiting = [key for key in self._pending if key[0] == incident_id]
            if not waiting or incident_id in self._in_flight:
                return  # nothing to send, or an edit is still being sent (its end schedules the next one)
            wait = self._last_edit.get(incident_id, float("-inf")) + self.update_every - time.monotonic()
            if wait > 0:
                self._schedule_edit(incident_id, wait)
                return
            self._in_flight.add(incident_id)  # held while the shared budget is asked, outside this lock
            checked = self._pending[waiting[0]][3]
        # An edit made under a lease this replica lost (it was paused, then resumed after a take-over) is dropped
        # before it takes the incident's shared slot, which the replica now ticking needs.
        if checked is not None and not self._still_held(checked):
            with self._edits_lock:
                for key in [k for k, v in self._pending.items() if k[0] == incident_id and v[3] == checked]:
                    del self._pending[key]
                self._in_flight.discard(incident_id)
                more = any(k[0] == incident_id for k in self._pending)
            log.warning("incident %s: edits made under %s epoch %s dropped: the lease is not known to be held",
                        incident_id, checked.name, checked.epoch)
            if more:
                self._send_edit(incident_id)
            return
        wait = self._shared_wait(incident_id)
        with self._edits_lock:
            if wait > 0:  # another replica edited this incident, or the workspace's budget is spent: later
                self._in_flight.discard(incident_id)
                self._schedule_edit(incident_id, wait)
                return
            # Read after the budget answered: an edit that came meanwhile is the one sent (latest content wins).
            key = next(k for k in self._pending if k[0] == incident_id)
            channel, text, body, fence = self._pending.pop(key)
            self._last_edit[incident_id] = started = time.monotonic()
        try:
            if fence is not None and fence != checked and not self._still_held(fence):
                log.warning("incident %s: edit of %s dropped: %s epoch %s is not known to be held", incident_id,
                            key[1], fence.name, fence.epoch)
            else:
                self.slack.update(channel, key[1], text, body)
        except SlackError as exc:
            # The stored state is right; the next transition or tick renders the message again.
            log.warning("incident %s: could not update message %s: %s", incident_id, key[1], exc)
        finally:
            with self._edits_lock:
                # Counted from when Slack took it: an edit retried after a 429's Retry-After (seconds inside this
                # call) must not let the next edit go out alongside it, nor bunch the one after.
                self._last_edit[incident_id] = ended = time.monotonic()
                self._in_flight.discard(incident_id)
                more = any(k[0] == incident_id for k in self._pending)
        if ended - started > 0.5:
            self._extend_shared(incident_id)  # the same for the other replicas: their next edit counts from now
        if more:
            self._send_edit(incident_id)  # schedules the next waiting edit one interval later

    def _still_held(self, fence: Fence) -> bool:
        """Whether the lease an edit was made under is still held; False too when the database cannot say (the
        next verification tick renders the message again)."""
        if self.store is None:
            return True
        try:
            held = self.store.holds_lease(fence)
        except SQLAlchemyError as exc:
            log.warning("could not check lease %s before an edit: %s", fence.name, exc)
            return False
        if not held:
            metrics.FENCING_REJECTIONS.inc()
        return held

    def _schedule_edit(self, incident_id: int, wait: float) -> None:
        """Send the incident's waiting edit in `wait` seconds (once: a timer already set will)."""
        if incident_id not in self._timers:
            timer = threading.Timer(wait, self._send_edit, args=(incident_id,))
            timer.daemon = True
            self._timers[incident_id] = timer
            timer.start()

    def _shared_wait(self, incident_id: int) -> float:
        """Take the incident's and the workspace's chat.update slots (both or neither); seconds to wait, 0: go."""
        if self.store is None:  # a Timeline for edits alone (tests): the per-process limiter is all there is
            return 0.0
        slots = [(f"edit:{incident_id}", self.update_every, 1)] if self.update_every > 0 else []
        if self.workspace_edit_every > 0:
            slots.append(("edit:workspace", self.workspace_edit_every, self.workspace_edit_burst))
        if not slots:
            return 0.0
        try:
            return self.store.take_slots(slots)
        except SQLAlchemyError as exc:
            # The database is unreachable: the edit still goes, held to this process's limit only, rather than
            # leaving the thread stale while verification goes on.
            log.warning("incident %s: shared edit budget unavailable, editing on the local limit: %s",
                        incident_id, exc)
            return 0.0

    def _extend_shared(self, incident_id: int) -> None:
        if self.store is None or self.update_every <= 0:
            return
        try:
            self.store.extend_slot(f"edit:{incident_id}", self.update_every)
        except SQLAlchemyError as exc:  # only spacing is lost: the edit went out
            log.warning("incident %s: could not extend the shared edit slot: %s", incident_id, exc)

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


def _names(message: dict[str, Any], event_type: str, **payload: int) -> bool:
    """Whether a Slack message's metadata is `event_type` with these payload values (Slack returns them as JSON
    numbers; compared as text so a string id matches too)."""
    metadata = message.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("event_type") != event_type or not message.get("ts"):
        return False
    found = metadata.get("event_payload")
    return isinstance(found, dict) and all(str(found.get(k)) == str(v) for k, v in payload.items())
