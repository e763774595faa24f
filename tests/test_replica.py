"""bot.infra.replica on a real PostgreSQL 15 (and SQLite for the one-replica case): membership leases and their
epochs, fair shards, work taken once, taken over from a dead replica (told so), never from a live one, and a
paused replica's writes refused by the store (fencing).

Replicas here are objects in one process on one database, each with its own Store (its own connection pool, as
separate processes would have) and a ticker the test drives: "dead" means its heartbeat no longer runs, "paused"
means the same and then running again. tests/test_replicas.py runs three real `serve` processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.infra import metrics
from bot.infra.replica import SHARDS, Replica, shard_of
from bot.infra.store import Fenced, Store, WorkItem, fenced

TTL = 1.0  # seconds: short, so a lease expires within a test


class Ticker:
    """The local ticker a Replica registers its heartbeat and poll on; the test calls them."""

    def __init__(self) -> None:
        self.jobs: dict[str, Callable[..., Any]] = {}

    def every(self, job_id: str, seconds: float, fn: Callable[..., Any], *args: Any) -> None:
        self.jobs[job_id] = lambda: fn(*args)

    def cancel(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    def beat(self) -> None:
        for job_id, job in list(self.jobs.items()):
            if job_id.startswith("heartbeat-"):
                job()


@pytest.fixture
def pg(fresh_postgres_url: str) -> Iterator[Callable[[], Store]]:
    made: list[Store] = []

    def make() -> Store:
        made.append(Store(fresh_postgres_url))
        return made[-1]

    yield make
    for store in made:
        store.engine.dispose()


def _replica(store: Store, name: str, **kwargs: Any) -> tuple[Replica, Ticker]:
    ticker = Ticker()
    replica = Replica(store, ticker, replica_id=name, ttl=TTL, **kwargs)  # type: ignore[arg-type]
    return replica, ticker


def _record(log: list[tuple[str, str, bool]], name: str) -> Callable[[WorkItem, bool], None]:
    def handle(item: WorkItem, taken_over: bool) -> None:
        log.append((name, item.key, taken_over))
    return handle


def test_three_replicas_share_the_shards_and_a_dead_ones_move_within_a_ttl(pg: Callable[[], Store]) -> None:
    replicas = [_replica(pg(), f"r{i}") for i in range(3)]
    for replica, _ in replicas:
        replica.start()
    for _ in range(2):  # the first to join took everything; the next heartbeats hand extras back and take them
        for _, ticker in replicas:
            ticker.beat()
    held = [set(r.leases()) - {f"replica:{r.id}"} for r, _ in replicas]
    assert sum(len(h) for h in held) == SHARDS and set().union(*held) == {f"shard:{n}" for n in range(SHARDS)}
    assert all(len(h) <= -(-SHARDS // 3) for h in held), held
    services = [f"svc-{n:04d}" for n in range(200)]
    assert all(sum(r.owns(s) for r, _ in replicas) == 1 for s in services), "each service: one replica"

    time.sleep(TTL + 0.2)  # r0 dies: no more heartbeats; r1 and r2 keep theirs
    for _ in range(2):
        for _, ticker in replicas[1:]:
            ticker.beat()
    alive = [set(r.leases()) for r, _ in replicas[1:]]
    assert len(alive[0] | alive[1]) == SHARDS + 2, "the dead replica's shards moved to the live ones"
    assert all(replicas[1][0].owns(s) or replicas[2][0].owns(s) for s in services)
    assert shard_of("svc-0001") == shard_of("svc-0001") and 0 <= shard_of("x") < SHARDS


def test_work_is_taken_once_taken_over_from_a_dead_replica_and_never_from_a_live_one(
        pg: Callable[[], Store]) -> None:
    log: list[tuple[str, str, bool]] = []
    a, a_ticker = _replica(pg(), "a")
    b, b_ticker = _replica(pg(), "b")
    for replica in (a, b):
        replica.handlers["plan"] = _record(log, replica.id)
        replica.handlers["verify"] = lambda item, over: 60.0  # due again in a minute: a's, while a lives
        replica.start()
    a.schedule("plan", 1)
    both = threading.Barrier(2)

    def race(replica: Replica) -> None:
        both.wait()
        replica.run_due(wait=True)

    threads = [threading.Thread(target=race, args=(r,)) for r in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [entry[1:] for entry in log] == [("plan:1", False)], "one replica ran it, once"

    a.schedule("verify", 2, every=60.0, keep_here=True)
    assert a.run_due(wait=True) and not b.run_due(wait=True), "a live replica's row is never taken"
    assert [w.owner for w in a.store.pending_work(2)] == ["a"]

    before = metrics.WORK_TAKEN_OVER.labels(kind="verify")._value.get()
    a.store.schedule_work("verify", 2, every=60.0, owner=a.fence)  # due now again, still a's
    time.sleep(TTL + 0.2)  # a dies
    b_ticker.beat()
    taken = b.run_due(wait=True)
    assert [(t.item.key, t.taken_over) for t in taken] == [("verify:2", True)]
    assert metrics.WORK_TAKEN_OVER.labels(kind="verify")._value.get() == before + 1
    assert [w.owner for w in b.store.pending_work(2)] == ["b"]


def test_a_paused_replica_that_resumes_writes_nothing(pg: Callable[[], Store]) -> None:
    a, a_ticker = _replica(pg(), "a")
    b, b_ticker = _replica(pg(), "b")
    a.start()
    b.start()
    old = a.fence
    time.sleep(TTL + 0.2)  # a is paused (SIGSTOP, a GC pause) past its lease; b lives on
    b_ticker.beat()
    rejected = metrics.FENCING_REJECTIONS._value.get()
    with fenced(old), pytest.raises(Fenced):
        a.store.audit(actor="a", action="execute", result="ok")
    assert metrics.FENCING_REJECTIONS._value.get() == rejected + 1
    a_ticker.beat()  # a resumes: its renewal fails, it joins again under a new epoch
    assert a.fence.epoch == old.epoch + 1
    with fenced(old), pytest.raises(Fenced):  # what it was doing under the old epoch stays refused
        a.store.audit(actor="a", action="execute", result="ok")
    with fenced(a.fence):
        a.store.audit(actor="a", action="execute", result="ok")
    assert [r["actor"] for r in a.store.audits()].count("a") == 1


def test_a_restarted_replica_with_the_same_id_takes_its_old_work_over_at_once(pg: Callable[[], Store]) -> None:
    log: list[tuple[str, str, bool]] = []
    first, _ = _replica(pg(), "r1")
    first.handlers["plan"] = lambda item, over: None
    first.start()
    first.store.schedule_work("plan", 7, owner=first.fence)  # in flight when r1 is killed
    again, _ = _replica(pg(), "r1")  # same ROLLBACK_REPLICA_ID, new process: new epoch
    again.handlers["plan"] = _record(log, "again")
    again.start()
    assert again.fence.epoch == first.fence.epoch + 1
    again.run_due(wait=True)
    assert log == [("again", "plan:7", True)], "no ttl to wait: the old epoch is over"


def test_the_only_replica_of_a_sqlite_database_evaluates_everything_and_ends_dead_processes_leases(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bot.db'}"
    dead = Store(url)
    gone = dead.acquire_lease("replica:old-pid", "old-pid", 600)
    assert gone is not None
    dead.schedule_work("verify", 3, every=1.0, owner=gone)
    replica, _ = _replica(Store(url), "new-pid", exclusive=True)
    seen: list[bool] = []
    replica.handlers["verify"] = lambda item, over: seen.append(over)  # type: ignore[func-returns-value]
    replica.start()
    assert replica.owns("any-service") and replica.may_act("any-service")
    assert replica.leases() == ["replica:new-pid"]
    replica.run_due(wait=True)
    assert seen == [True], "the earlier process of a one-replica database is dead: its work is taken over now"
