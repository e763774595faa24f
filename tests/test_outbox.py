"""The outbox with many replicas on one database (issue 13): each timeline event and each warning is claimed before
it is posted and carries Slack message metadata naming it, so two replicas flushing one incident post every event
once and in order, and a replica that died between Slack taking a message and marking it posted is covered by
reading the thread (or the channel) instead of posting again. Also the budgets and the cache the replicas share:
chat.update spacing per incident and per workspace, and one usergroups.users.list per TTL for all replicas.

Store-level and timeline tests run on SQLite and on a real PostgreSQL (tests/pg_env.py, a fresh database per test);
each "replica" is its own Store (its own engine and pool) and Timeline on that database, against the fake Slack Web
API (sandbox.slack_api), which keeps each message's metadata and answers conversations.replies / .history.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from bot.incidents.approvers import Approvers
from bot.infra.store import Incident, Store, fenced
from bot.slack import slack_out
from bot.slack.slack_out import SlackOut, make_client
from bot.slack.timeline import EVENT_TYPE, WARNING_TYPE, Timeline
from sandbox.slack_api import FakeSlackAPI

CHANNEL = "C0MODELSVC"
MakeStore = Callable[[], Store]


@pytest.fixture
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI(users_by_group={"S0ONCALL": ["U0APPROVER"]}) as fake:
        yield fake


def _out(slack: FakeSlackAPI) -> SlackOut:
    return SlackOut(make_client("xoxb-test-0000", slack.url))


def _timeline(store: Store, slack: FakeSlackAPI, replica: str, **kwargs: Any) -> Timeline:
    return Timeline(store, _out(slack), lambda _: None, replica_id=replica, **kwargs)


def _open(store: Store, service: str = "model-svc") -> Incident:
    incident = store.open_incident(service=service, trigger="p95-latency", detail={"value": 0.4}, baseline={},
                                   breach_started_at=1.0, channel=CHANNEL)
    assert incident is not None
    return incident


def _event_ids(messages: list[dict[str, Any]]) -> list[int]:
    return [int(m["metadata"]["event_payload"]["event_id"]) for m in messages
            if (m.get("metadata") or {}).get("event_type") == EVENT_TYPE]


# -- the store's claims, budgets and cache


def test_an_event_claim_is_one_replicas_until_it_expires_and_then_says_it_was_taken_over(
        make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    event = a.add_event(_open(a).id, "note", "hello")
    first = a.claim_event(event.id, "replica-a", 0.4)
    assert first is not None and not first.taken_over and first.previous_owner is None
    assert b.claim_event(event.id, "replica-b", 15) is None, "held by replica-a"
    assert a.claim_event(event.id, "replica-a", 15) is None, "not even its holder claims it twice while it holds"
    time.sleep(0.5)
    second = b.claim_event(event.id, "replica-b", 15)
    assert second is not None and second.taken_over and second.previous_owner == "replica-a"
    b.release_event(event.id, "replica-b")  # a failed post gives the claim up at once...
    third = a.claim_event(event.id, "replica-a", 15)
    assert third is not None and third.taken_over, "...and the next claimer still reads the thread first"
    a.mark_posted(event.id, "1700000000.000100")
    b.release_event(event.id, "replica-b")  # not b's claim any more: nothing happens
    assert a.claim_event(event.id, "replica-a", 15) is None and b.claim_event(event.id, "replica-b", 15) is None


def test_racing_replicas_claim_an_event_and_a_warning_once(make_store: MakeStore) -> None:
    stores = [make_store() for _ in range(4)]
    incident = _open(stores[0])
    event = stores[0].add_event(incident.id, "note", "hello")
    with ThreadPoolExecutor(8) as pool:
        events = list(pool.map(lambda i: stores[i % 4].claim_event(event.id, f"r{i}", 15), range(8)))
        warnings = list(pool.map(lambda i: stores[i % 4].claim_warning(incident.id, f"r{i}", 15), range(8)))
    assert sum(c is not None for c in events) == 1 and sum(c is not None for c in warnings) == 1


def test_a_warning_claim_expires_unposted_and_ends_once_the_warning_is_stored(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    incident = _open(a)
    assert a.claim_warning(incident.id, "replica-a", 0.4) is not None
    assert b.claim_warning(incident.id, "replica-b", 15) is None
    time.sleep(0.5)
    taken = b.claim_warning(incident.id, "replica-b", 15)
    assert taken is not None and taken.taken_over and taken.previous_owner == "replica-a"
    assert b.mark_warned(incident.id, "1700000000.000200", 1.0) is not None
    assert a.mark_warned(incident.id, "1700000000.000300", 2.0) is None, "the warning's ts is stored once"
    assert a.incident(incident.id).message_ts == "1700000000.000200"
    assert a.claim_warning(incident.id, "replica-a", 15) is None, "posted: nothing to claim"


def test_a_budget_slot_is_taken_once_per_interval_across_replicas(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    assert a.take_slot("edit:1", 0.5) == 0.0
    wait = b.take_slot("edit:1", 0.5)
    assert 0.3 < wait <= 0.5, wait
    time.sleep(wait + 0.05)
    assert b.take_slot("edit:1", 0.5) == 0.0 and a.take_slot("edit:1", 0.5) > 0
    # All or nothing: a refused slot rolls back the ones taken with it.
    assert a.take_slots([("edit:2", 0.5, 1), ("edit:1", 0.5, 1)]) > 0
    assert b.take_slot("edit:2", 0.5) == 0.0, "edit:2 was not taken by the refused pair"
    # A burst of 3 goes back to back, then one per interval.
    assert [a.take_slot("edit:workspace", 0.5, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take_slot("edit:workspace", 0.5, 3) > 0.3


def test_racing_replicas_take_one_slot(make_store: MakeStore) -> None:
    stores = [make_store() for _ in range(4)]
    with ThreadPoolExecutor(8) as pool:
        waits = list(pool.map(lambda i: stores[i % 4].take_slot("edit:9", 5.0), range(8)))
    assert waits.count(0.0) == 1, waits


def test_the_shared_cache_holds_a_value_until_it_expires(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    assert a.cached("usergroup:S0X") is None
    a.cache("usergroup:S0X", ["U1", "U2"], 0.4)
    hit = b.cached("usergroup:S0X")
    assert hit is not None and hit[0] == ["U1", "U2"] and 0 < hit[1] <= 0.4
    b.cache("usergroup:S0X", ["U3"], 15)  # replaced, not a second row
    assert (a.cached("usergroup:S0X") or [None])[0] == ["U3"]
    a.cache("usergroup:S0Y", ["U1"], 0.2)
    time.sleep(0.3)
    assert b.cached("usergroup:S0Y") is None


# -- the timeline on two replicas


def test_two_replicas_flushing_one_incident_post_each_event_once_in_order(make_store: MakeStore,
                                                                          slack: FakeSlackAPI) -> None:
    a, b = make_store(), make_store()
    timelines = [_timeline(a, slack, "replica-a"), _timeline(b, slack, "replica-b")]
    incident = timelines[0].post_warning(_open(a))
    assert incident.message_ts
    ids = [a.add_event(incident.id, "note", f"event {n}").id for n in range(30)]

    start = threading.Barrier(4)

    def flush(timeline: Timeline) -> None:
        start.wait()
        for _ in range(3):
            timeline.flush(incident.id)

    threads = [threading.Thread(target=flush, args=(t,)) for t in timelines * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    timelines[1].flush_all()  # whatever a stop left (another replica held the next event) goes out now

    thread = slack.thread(CHANNEL, incident.message_ts)
    posted = _event_ids(thread)
    warned = [e.id for e in a.events(incident.id) if e.kind == "warned"]
    assert posted == sorted(warned + ids), "every event once, in id order"
    by_id = {int(m["metadata"]["event_payload"]["event_id"]): m["ts"] for m in thread}
    assert all(e.slack_ts == by_id[e.id] for e in b.events(incident.id)), "each marked with its own message's ts"
    assert all(m["metadata"]["event_payload"]["incident_id"] == incident.id for m in thread)


def test_an_event_a_dead_replica_posted_but_never_marked_is_not_posted_again(make_store: MakeStore,
                                                                              slack: FakeSlackAPI) -> None:
    a, b = make_store(), make_store()
    live = _timeline(b, slack, "replica-b")
    incident = live.post_warning(_open(a))
    assert incident.message_ts
    lost = a.add_event(incident.id, "note", "posted, then the replica was SIGKILLed")
    # The dead replica: claimed it, Slack took the post (metadata and all), and it died before mark_posted.
    assert a.claim_event(lost.id, "replica-a", 0.3) is not None
    ts = _out(slack).post(CHANNEL, "posted, then the replica was SIGKILLed", thread_ts=incident.message_ts,
                          metadata={"event_type": EVENT_TYPE,
                                    "event_payload": {"event_id": lost.id, "incident_id": incident.id}})
    after = a.add_event(incident.id, "note", "the next event")
    posts = len(slack.calls("chat.postMessage"))

    live.flush(incident.id)
    assert b.unposted_events(incident.id)[0].id == lost.id, "the dead replica's claim still holds: nothing goes"
    assert len(slack.calls("chat.postMessage")) == posts, "not even the event after it (the order holds)"

    time.sleep(0.4)
    live.flush(incident.id)
    assert {e.id: e.slack_ts for e in b.events(incident.id)}[lost.id] == ts, "marked with the message found"
    assert _event_ids(slack.thread(CHANNEL, incident.message_ts)).count(lost.id) == 1, "not posted twice"
    assert len(slack.calls("chat.postMessage")) == posts + 1, "only the next event was posted"
    assert _event_ids(slack.thread(CHANNEL, incident.message_ts))[-1] == after.id
    replies = slack.calls("conversations.replies")
    assert len(replies) == 1 and replies[0].params["include_all_metadata"] in ("1", "true", True)


def test_an_event_a_dead_replica_claimed_but_never_posted_is_posted_once(make_store: MakeStore,
                                                                          slack: FakeSlackAPI) -> None:
    a, b = make_store(), make_store()
    live = _timeline(b, slack, "replica-b")
    incident = live.post_warning(_open(a))
    assert incident.message_ts
    lost = a.add_event(incident.id, "note", "claimed, then the replica was SIGKILLed before posting")
    assert a.claim_event(lost.id, "replica-a", 0.2) is not None
    time.sleep(0.3)
    live.flush(incident.id)
    assert _event_ids(slack.thread(CHANNEL, incident.message_ts)).count(lost.id) == 1
    assert not b.unposted_events(incident.id)


def test_a_failed_post_is_retried_after_reading_the_thread(make_store: MakeStore, slack: FakeSlackAPI) -> None:
    """A 5xx on chat.postMessage may or may not have posted: the retry reads the thread before posting again."""
    store = make_store()
    timeline = _timeline(store, slack, "replica-a")
    incident = timeline.post_warning(_open(store))
    assert incident.message_ts
    slack.fail_next("chat.postMessage", status=503)
    event = timeline.record(incident.id, "note", "after a 503")
    assert store.unposted_events(incident.id) == [event]
    timeline.flush_all()
    assert _event_ids(slack.thread(CHANNEL, incident.message_ts)).count(event.id) == 1
    assert len(slack.calls("conversations.replies")) == 1 and not store.unposted_events(incident.id)


def test_a_warning_a_dead_replica_posted_but_never_stored_is_not_posted_again(make_store: MakeStore,
                                                                               slack: FakeSlackAPI) -> None:
    a, b = make_store(), make_store()
    incident = _open(a)
    other = _open(a, "other-svc")
    # The dead replica claimed and posted the warning, then died before storing its ts.
    assert a.claim_warning(incident.id, "replica-a", 0.3) is not None
    _out(slack).post(CHANNEL, "someone else's note", metadata={"event_type": WARNING_TYPE,
                                                              "event_payload": {"incident_id": other.id}})
    ts = _out(slack).post(CHANNEL, "the warning", metadata={"event_type": WARNING_TYPE,
                                                            "event_payload": {"incident_id": incident.id}})
    _out(slack).post(CHANNEL, "a later note")
    live = _timeline(b, slack, "replica-b")
    assert live.post_warning(incident).message_ts is None, "its claim still holds: nothing posted"
    time.sleep(0.4)
    warned = live.post_warning(b.incident(incident.id))
    assert warned.message_ts == ts and len(slack.messages(CHANNEL)) == 3, "found in the channel, not re-posted"
    assert [e.kind for e in b.events(incident.id)] == ["warned"]
    assert _event_ids(slack.thread(CHANNEL, ts)) == [b.events(incident.id)[0].id], "its thread goes on"
    history = slack.calls("conversations.history")
    assert len(history) == 1 and float(history[0].params["oldest"]) < incident.opened_at


def test_two_replicas_post_one_warning(make_store: MakeStore, slack: FakeSlackAPI) -> None:
    a, b = make_store(), make_store()
    incident = _open(a)
    timelines = [_timeline(a, slack, "replica-a"), _timeline(b, slack, "replica-b")]
    start = threading.Barrier(2)

    def post(timeline: Timeline) -> None:
        start.wait()
        timeline.post_warning(incident)
        timeline.flush_all()

    threads = [threading.Thread(target=post, args=(t,)) for t in timelines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    top = slack.messages(CHANNEL)
    assert len(top) == 1 and top[0]["metadata"] == {"event_type": WARNING_TYPE,
                                                   "event_payload": {"incident_id": incident.id}}
    assert a.incident(incident.id).message_ts == top[0]["ts"]
    assert [e.kind for e in a.events(incident.id)] == ["warned"]


def test_the_shared_edit_budget_spaces_chat_update_across_replicas(make_store: MakeStore,
                                                                    slack: FakeSlackAPI) -> None:
    a, b = make_store(), make_store()
    ta = _timeline(a, slack, "replica-a", update_every=0.6)
    tb = _timeline(b, slack, "replica-b", update_every=0.6)
    ts = _out(slack).post(CHANNEL, "warning")
    for n in range(3):  # both replicas edit one incident's message, each as soon as it can by its own limit
        ta.edit(1, CHANNEL, ts, f"a{n}", [])
        tb.edit(1, CHANNEL, ts, f"b{n}", [])
        time.sleep(0.1)
    deadline = time.monotonic() + 10
    while slack.message(CHANNEL, ts)["text"] not in ("a2", "b2") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # anything still waiting goes out
    at = [c.at for c in slack.calls("chat.update")]
    assert 2 <= len(at) <= 4, [c.params["text"] for c in slack.calls("chat.update")]
    assert all(later - earlier >= 0.5 for earlier, later in zip(at, at[1:], strict=False)), at


def test_the_workspace_edit_budget_spaces_chat_update_across_incidents_and_replicas(make_store: MakeStore,
                                                                                     slack: FakeSlackAPI) -> None:
    a, b = make_store(), make_store()
    budget = {"update_every": 0.0, "workspace_edit_every": 0.5, "workspace_edit_burst": 1}
    ta, tb = _timeline(a, slack, "replica-a", **budget), _timeline(b, slack, "replica-b", **budget)
    messages = [_out(slack).post(CHANNEL, f"incident {n}") for n in range(4)]
    for n, ts in enumerate(messages):  # four incidents, each edited once, from alternating replicas
        (ta if n % 2 else tb).edit(n + 1, CHANNEL, ts, f"edited {n}", [])
    deadline = time.monotonic() + 10
    while len(slack.calls("chat.update")) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    at = [c.at for c in slack.calls("chat.update")]
    assert len(at) == 4 and all(later - earlier >= 0.4 for earlier, later in zip(at, at[1:], strict=False)), at
    assert [slack.message(CHANNEL, ts)["text"] for ts in messages] == [f"edited {n}" for n in range(4)]


def test_an_edit_made_under_a_lost_lease_is_dropped_and_leaves_the_shared_slot_to_the_new_owner(
        make_store: MakeStore, slack: FakeSlackAPI) -> None:
    a, b = make_store(), make_store()
    ta, tb = _timeline(a, slack, "replica-a", update_every=3.0), _timeline(b, slack, "replica-b", update_every=3.0)
    ts = _out(slack).post(CHANNEL, "progress")
    stale = a.acquire_lease("replica:replica-a", "replica-a", 15)
    assert stale is not None
    again = a.acquire_lease("replica:replica-a", "replica-a", 15)  # it rejoined: the old epoch is over
    assert again is not None and again.epoch == stale.epoch + 1
    owner = b.acquire_lease("replica:replica-b", "replica-b", 15)
    began = time.time()
    with fenced(stale):  # a verification tick of the old epoch, resumed after a pause
        ta.edit(1, CHANNEL, ts, "old text", [])
    with fenced(owner):  # the replica that took the verification over, a moment later
        tb.edit(1, CHANNEL, ts, "new text", [])
    deadline = time.monotonic() + 5
    while not slack.calls("chat.update") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    calls = slack.calls("chat.update")
    assert [c.params["text"] for c in calls] == ["new text"]
    assert calls[0].at - began < 1.5, "at once: the dropped edit did not take the incident's 3 s slot"


# -- the user-group cache


def test_two_replicas_read_a_user_group_once_per_ttl(make_store: MakeStore, slack: FakeSlackAPI) -> None:
    a, b = make_store(), make_store()
    first = Approvers(_out(slack).usergroup_users, ttl=0.5, store=a)
    second = Approvers(_out(slack).usergroup_users, ttl=0.5, store=b)
    assert first.check("U0APPROVER", ["S0ONCALL"])[0] and second.check("U0APPROVER", ["S0ONCALL"])[0]
    assert not second.check("U0SOMEONE", ["S0ONCALL"])[0]
    assert len(slack.calls("usergroups.users.list")) == 1, "one call for both replicas"
    time.sleep(0.6)
    assert second.check("U0APPROVER", ["S0ONCALL"])[0] and first.check("U0APPROVER", ["S0ONCALL"])[0]
    assert len(slack.calls("usergroups.users.list")) == 2, "one more once the TTL ran out"


def test_a_user_group_that_cannot_be_read_fails_closed_and_is_not_cached(make_store: MakeStore,
                                                                         slack: FakeSlackAPI) -> None:
    a, b = make_store(), make_store()
    slack.fail_next("usergroups.users.list", error="missing_scope")
    allowed, reason = Approvers(_out(slack).usergroup_users, store=a).check("U0APPROVER", ["S0ONCALL"])
    assert not allowed and "could not read <!subteam^S0ONCALL>" in reason and "missing_scope" in reason
    assert Approvers(_out(slack).usergroup_users, store=b).check("U0APPROVER", ["S0ONCALL"])[0]
    assert len(slack.calls("usergroups.users.list")) == 2


# -- the fake Slack's reads, shaped like Slack's


def test_replies_and_history_return_metadata_a_page_at_a_time(slack: FakeSlackAPI,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = _out(slack)
    parent = out.post(CHANNEL, "parent", metadata={"event_type": WARNING_TYPE, "event_payload": {"incident_id": 7}})
    replies = [out.post(CHANNEL, f"reply {n}", thread_ts=parent,
                        metadata={"event_type": EVENT_TYPE, "event_payload": {"event_id": n, "incident_id": 7}})
               for n in range(5)]
    later = out.post(CHANNEL, "later")
    monkeypatch.setattr(slack_out, "_PAGE", 2)
    thread = out.replies(CHANNEL, parent)
    assert [m["ts"] for m in thread] == [parent, *replies], "the parent first, then the replies oldest first"
    assert thread[0]["reply_count"] == 5 and thread[0]["metadata"]["event_type"] == WARNING_TYPE
    assert _event_ids(thread) == list(range(5))
    assert len(slack.calls("conversations.replies")) == 3, "6 messages, 2 a page"
    history = out.history(CHANNEL, oldest=float(parent) - 1)
    assert [m["ts"] for m in history] == [later, parent], "top-level only, newest first"
    assert out.history(CHANNEL, oldest=float(parent)) == [history[0]], "oldest is exclusive"

    raw = requests.get(slack.url + "conversations.history", timeout=5,
                       params={"channel": CHANNEL, "limit": 1, "token": "xoxb-test-0000"}).json()
    assert raw["ok"] and raw["has_more"] and raw["response_metadata"]["next_cursor"]
    assert "metadata" not in raw["messages"][0] or raw["messages"][0]["ts"] == later
    raw = requests.get(slack.url + "conversations.history", timeout=5,
                       params={"channel": CHANNEL, "cursor": raw["response_metadata"]["next_cursor"],
                               "token": "xoxb-test-0000"}).json()
    assert [m["ts"] for m in raw["messages"]] == [parent] and "metadata" not in raw["messages"][0]
    assert not raw["has_more"] and raw["response_metadata"]["next_cursor"] == ""
    bad = requests.get(slack.url + "conversations.replies", timeout=5,
                       params={"channel": CHANNEL, "ts": "1.000000", "token": "xoxb-test-0000"}).json()
    assert bad == {"ok": False, "error": "thread_not_found"}
    posted = requests.post(slack.url + "chat.postMessage", timeout=5, data={
        "channel": CHANNEL, "text": "form", "token": "xoxb-test-0000",
        "metadata": '{"event_type": "x", "event_payload": {"a": 1}}'}).json()
    assert posted["message"]["metadata"] == {"event_type": "x", "event_payload": {"a": 1}}
