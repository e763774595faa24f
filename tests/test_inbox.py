"""The inbox (bot.infra.store.inbox, handlers.slack_http): a click or a slash command over HTTP is stored before its
200 ack, so when the replica that acked it dies right after answering, another replica takes it over and its
listener runs exactly once. On SQLite and PostgreSQL.

Two levels: the store's part on its own (receive, the retry's None, orphans by lease liveness and epoch, take,
the 5-minute window, clean-up, no legacy token stored), and signed requests through the real app served by
waitress (tests/handler_env) with two `SlackRoute`s on one database standing for two replicas: replica A acks
and "dies" (its workers never run the request, its lease expires), replica B's `take_over` runs it once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import waitress
from mlflow.tracking import MlflowClient
from slack_bolt.request.internals import parse_body
from sqlalchemy import select, update

from bot.infra import metrics
from bot.infra.store import Fence, Store
from bot.infra.store.inbox import WINDOW, without_token
from bot.infra.store.tables import inbox, leases
from handlers import dedupe
from handlers.slack_http import SlackRoute
from sandbox.servers import MlflowServer
from sandbox.signing import VERIFICATION_TOKEN, block_actions_body, post_signed, slash_command_body
from sandbox.slack_api import FakeSlackAPI
from tests.handler_env import (
    APPROVER,
    GOOD_VERSION,
    GROUP,
    GROUP_MEMBER,
    MODEL_CHANNEL,
    SECRET,
    STRANGER,
    HandlerEnv,
    close_waitress,
    seed_models,
    wait_until,
)

FORM = "application/x-www-form-urlencoded"
TTL = 60.0
SETTLE = 0.5  # seconds for a listener that must not run to have had its chance


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    store = Store(url)
    yield store
    store.engine.dispose()


def join(store: Store, replica: str) -> Fence:
    """`replica`'s membership lease, as bot.infra.replica takes it."""
    fence = store.acquire_lease(f"replica:{replica}", replica, TTL)
    assert fence is not None
    return fence


def die(store: Store, fence: Fence) -> None:
    """The replica holding `fence` stopped renewing its lease long enough ago for it to have expired."""
    with store.engine.begin() as conn:
        conn.execute(update(leases).where(leases.c.name == fence.name).values(expires_at=leases.c.expires_at - 3600))


def rows(store: Store) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(inbox).order_by(inbox.c.id)).all())


def click_body(action_id: str = "rollback_dry_run", user: str = STRANGER) -> str:
    return block_actions_body(user_id=user, channel_id=MODEL_CHANNEL, message_ts="1.000", action_id=action_id,
                              value="1")


# -- the store's part ----------------------------------------------------------------------------------------
def test_a_request_is_stored_once_by_its_key(store: Store) -> None:
    a = join(store, "a")
    first = store.inbox_receive("action:k1", {"content-type": FORM}, click_body(), a)
    assert isinstance(first, int)
    assert store.inbox_receive("action:k1", {"content-type": FORM}, click_body(), a) is None  # retry / replay
    assert store.inbox_receive("action:k1", {}, b"other", join(store, "b")) is None  # from any replica
    [row] = rows(store)
    assert (row.id, row.key, row.owner, row.owner_epoch, row.done_at) == (first, "action:k1", "a", a.epoch, None)
    assert row.headers == {"content-type": FORM}
    assert abs(row.received_at - store.db.clock_now()) < 5  # the database's clock


def test_requests_arriving_together_share_a_commit_and_a_key_twice_is_stored_once(store: Store) -> None:
    a = join(store, "a")
    keys = [f"action:burst{n}" for n in range(40)] + ["action:burst7"] * 10  # ten repeats of one key among them
    start = threading.Barrier(len(keys))
    got: dict[int, int | None] = {}

    def send(n: int) -> None:
        start.wait()
        got[n] = store.inbox_receive(keys[n], {"content-type": FORM}, click_body(), a)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(keys))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = {r.key: r.id for r in rows(store)}
    assert len(stored) == 40
    for n, key in enumerate(keys):
        if key != "action:burst7":
            assert got[n] == stored[key]
    assert [got[n] for n, key in enumerate(keys) if key == "action:burst7"].count(stored["action:burst7"]) == 1, \
        "of eleven sends of one key, one is stored and handled; the rest are repeats"


def test_the_legacy_token_is_never_stored_and_the_body_parses_the_same(store: Store) -> None:
    a = join(store, "a")
    command = slash_command_body(text="model-svc --to 3", user_id=APPROVER, channel_id=MODEL_CHANNEL)
    click = block_actions_body(user_id=APPROVER, channel_id=MODEL_CHANNEL, message_ts="1.000",
                               action_id="rollback_approve", value="7",
                               message={"ts": "1.000", "text": "é ✓ \"token\": x & y=z"})
    for key, body in (("command:1", command), ("action:1", click)):
        assert VERIFICATION_TOKEN in body
        store.inbox_receive(key, {"content-type": FORM}, body, a)
    stored = {row.key: bytes(row.body).decode() for row in rows(store)}
    for key, original in (("command:1", command), ("action:1", click)):
        assert VERIFICATION_TOKEN not in stored[key]
        expected = parse_body(original, FORM)
        expected.pop("token")
        assert parse_body(stored[key], FORM) == expected  # what Bolt reads, the token aside
    # The command's other fields are kept byte for byte, in order.
    assert stored["command:1"] == "&".join(p for p in command.split("&") if not p.startswith("token="))
    assert "token" not in parse_qs(stored["command:1"])
    # A body without a token is left exactly as it is.
    plain = b"payload=%7B%22type%22%3A%22block_actions%22%7D"
    assert without_token(plain) == plain


def test_only_a_dead_replicas_requests_are_taken_over(store: Store) -> None:
    a, b, c = join(store, "a"), join(store, "b"), join(store, "c")
    first = store.inbox_receive("action:1", {}, b"x=1", a)
    done = store.inbox_receive("action:2", {}, b"x=2", a)
    assert first is not None and done is not None
    store.inbox_done(done)
    assert store.inbox_orphans(b) == []  # a is alive: its rows are its own
    assert store.inbox_owns(first, a) and not store.inbox_owns(first, b)

    die(store, a)
    assert not store.inbox_owns(first, a)  # a resumed after its lease expired: it must not run it
    [orphan] = store.inbox_orphans(b)  # the done row is not taken over
    assert (orphan.id, orphan.owner, orphan.owner_epoch, orphan.body) == (first, "a", a.epoch, b"x=1")
    assert store.inbox_take(orphan, b)
    assert not store.inbox_take(orphan, c)  # as read by c too: b took it first
    assert store.inbox_owns(first, b)
    assert store.inbox_orphans(c) == []  # b is alive: it is b's now


def test_a_restarted_replica_with_the_same_id_takes_over_its_old_epoch(store: Store) -> None:
    old = join(store, "a")
    row_id = store.inbox_receive("command:1", {}, b"command=%2Frollback", old)
    new = join(store, "a")  # the same id, started again: a new epoch
    assert new.epoch == old.epoch + 1
    [orphan] = store.inbox_orphans(new)
    assert orphan.id == row_id and store.inbox_take(orphan, new)
    assert store.inbox_orphans(new) == []
    store.inbox_done(orphan.id)
    assert not store.inbox_owns(orphan.id, new)


def test_requests_older_than_slacks_window_are_dropped_and_cleaned_up(store: Store) -> None:
    a = join(store, "a")
    old = store.inbox_receive("action:old", {}, b"x=1", a)
    fresh = store.inbox_receive("action:fresh", {}, b"x=2", a)
    with store.engine.begin() as conn:
        conn.execute(update(inbox).where(inbox.c.id == old).values(received_at=inbox.c.received_at - WINDOW - 5))
    die(store, a)
    assert [r.id for r in store.inbox_orphans(join(store, "b"))] == [fresh]
    # A caller's clock far ahead never drops a request still inside the window.
    assert store.forget_inbox(older_than=store.db.clock_now() + 3600) == 1
    assert [r.key for r in rows(store)] == ["action:fresh"]
    # Its key was dropped with it: only a request past the signature window could carry it again.
    assert store.inbox_receive("action:old", {}, b"x=1", a) is not None


# -- through HTTP: two routes on one database stand for two replicas -----------------------------------------
class Replica:
    """A SlackRoute served by waitress, as one replica's /slack/events, on `env`'s Bolt app and store."""

    def __init__(self, env: HandlerEnv, name: str) -> None:
        self.fence = join(env.store, name)
        self.route = SlackRoute(env.runtime.bolt, SECRET, env.runtime.bot.slack, store=env.store,
                                fence=lambda: self.fence)
        self.server: Any = waitress.create_server(self.route, host="127.0.0.1", port=0, threads=4)
        self.url = f"http://127.0.0.1:{self.server.effective_port}/slack/events"
        self.thread = threading.Thread(target=self.server.run, name=f"waitress-{name}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        close_waitress(self.server, self.thread)
        self.route.workers.shutdown(wait=True)
        self.route.decisions.shutdown(wait=True)


class Held:
    """A worker lane whose tasks are held (`release` runs them; `drop` never does: the process died)."""

    def __init__(self) -> None:
        self.tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[None]:
        self.tasks.append((fn, args))
        return Future()

    def shutdown(self, wait: bool = True) -> None:
        self.tasks.clear()

    def release(self) -> None:
        for fn, args in self.tasks:
            fn(*args)
        self.tasks.clear()


@pytest.fixture
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as api:
        yield api


@pytest.fixture
def env(tmp_path: Path, url: str, slack: FakeSlackAPI, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str) -> Iterator[HandlerEnv]:
    models = seed_models(mlflow_client, unique_model)
    bench = HandlerEnv(tmp_path, slack, mlflow_client, models, mlflow_url=mlflow_server.url, database_url=url)
    bench.start()
    try:
        yield bench
    finally:
        bench.stop()


@pytest.fixture
def replicas(env: HandlerEnv) -> Iterator[tuple[Replica, Replica]]:
    a, b = Replica(env, "a"), Replica(env, "b")
    env.events_url = a.url  # the env's own requests (opening the warning) reach replica A
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def taken_over() -> float:
    return metrics.WORK_TAKEN_OVER.labels(kind="inbox")._value.get()


def test_a_click_is_in_the_inbox_before_its_ack_and_done_after(env: HandlerEnv,
                                                              replicas: tuple[Replica, Replica]) -> None:
    a, _ = replicas
    incident, warning = env.open_warning()
    held = Held()
    a.route.decisions = held  # type: ignore[assignment]

    response = env.click(warning, "rollback_approve", user=STRANGER)

    assert response.status_code == 200 and response.text == ""
    [row] = [r for r in rows(env.store) if r.key.startswith("action:")]
    assert (row.owner, row.owner_epoch, row.done_at) == ("a", a.fence.epoch, None)
    assert VERIFICATION_TOKEN.encode() not in bytes(row.body)
    assert set(row.headers) <= {"content-type", "x-slack-request-timestamp"}
    assert env.audits(incident.id, "approve") == []  # acked, not yet run
    held.release()
    [refused] = env.audits(incident.id, "approve")
    assert (refused["actor"], refused["result"]) == (STRANGER, "refused")
    [row] = [r for r in rows(env.store) if r.key.startswith("action:")]
    assert row.done_at is not None


def test_a_retry_or_replay_of_a_stored_request_runs_nothing(env: HandlerEnv,
                                                             replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    incident, warning = env.open_warning()
    env.click(warning, "rollback_approve", user=STRANGER)
    wait_until(lambda: env.audits(incident.id, "approve"), "the refusal")

    retry = post_signed(a.url, SECRET, env.last_body, extra_headers={"X-Slack-Retry-Num": "1"})
    replay = post_signed(b.url, SECRET, env.last_body)  # the same signed request, to the other replica
    for response in (retry, replay):
        assert response.status_code == 200 and response.headers.get("X-Slack-No-Retry") == "1"
    wait_until(lambda: all(r.done_at is not None for r in rows(env.store)), "every request handled")
    assert len(env.audits(incident.id, "approve")) == 1
    assert len([r for r in rows(env.store) if r.key.startswith("action:")]) == 1


def test_a_click_acked_by_a_replica_that_died_is_run_once_by_another(env: HandlerEnv,
                                                                    replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    incident, warning = env.open_warning()
    wait_until(lambda: all(r.done_at is not None for r in rows(env.store)), "the /rollback command handled")
    held = Held()
    a.route.decisions = held  # type: ignore[assignment]

    assert env.click(warning, "rollback_approve", user=APPROVER).status_code == 200
    assert b.route.take_over(b.fence) == 0  # a is alive: its request is its own
    die(env.store, a.fence)
    before = taken_over()

    held.release()  # a resumes (it was paused past its lease): it leaves the request to its new owner
    assert env.audits(incident.id, "approve") == []
    assert b.route.take_over(b.fence) == 1
    wait_until(lambda: env.champion() == GOOD_VERSION, "the champion back on v1")
    wait_until(lambda: all(r.done_at is not None for r in rows(env.store)), "the request marked done")
    assert b.route.take_over(b.fence) == 0
    assert taken_over() == before + 1
    [approved] = env.audits(incident.id, "approve")
    assert (approved["actor"], approved["result"]) == (APPROVER, "ok")
    wait_until(lambda: env.audits(incident.id, "execute:mlflow_alias"), "the step's audit row")
    time.sleep(SETTLE)
    assert len(env.audits(incident.id, "execute:mlflow_alias")) == 1


def test_a_command_taken_over_answers_its_response_url(env: HandlerEnv, replicas: tuple[Replica, Replica],
                                                       slack: FakeSlackAPI) -> None:
    a, b = replicas
    a.route.workers = Held()  # type: ignore[assignment]  # a dies with the command queued, never run
    assert env.command("help").status_code == 200
    die(env.store, a.fence)

    assert b.route.take_over(b.fence) == 1
    call = wait_until(lambda: next((c for c in slack.calls("response_url") if c.params.get("text")), None),
                      "the answer to /rollback help")
    assert "/rollback help" in call.params["text"]
    assert len(slack.calls("response_url")) == 1


def test_a_forged_inbox_header_does_not_skip_the_claim(env: HandlerEnv) -> None:
    """Without the inbox (the old call site), handlers.dedupe claims every request; a request claiming to come
    from the inbox is stripped of that header at the door, so its replay is still dropped."""
    incident, warning = env.open_warning()
    forged = {dedupe.INBOX_HEADER: "1"}
    body = block_actions_body(user_id=STRANGER, channel_id=MODEL_CHANNEL, message_ts=warning["ts"],
                              action_id="rollback_approve", value=str(incident.id), message=warning)
    for _ in range(2):
        assert post_signed(env.events_url, SECRET, body, extra_headers=forged).status_code == 200
    wait_until(lambda: env.audits(incident.id, "approve"), "the refusal")
    time.sleep(SETTLE)  # the replay, had it been let through, would have run by now
    assert len(env.audits(incident.id, "approve")) == 1
