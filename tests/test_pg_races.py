"""The store's upserts and claims under real concurrency on PostgreSQL (and on SQLite): several writers, each with
its own Store (its own engine and connections, as replicas have), write the same keys at the same instant.

Before the upserts were single `INSERT … ON CONFLICT` statements, a read-then-insert lost the race to another
writer's insert and raised UniqueViolation in 28–30 of 30 rounds (issue 13). Each round here uses new keys, so
every writer's first statement is an insert colliding with the others' (the case that raised), then writes the
same keys again (the update path). A threading.Barrier (a multiprocessing one for processes) releases all the
writers at once. Checked: no writer raises, each key has one row, and each row is one writer's whole write.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bot.infra.store import SloState, Store

THREADS = 8
ROUNDS = 30
KEYS = 40  # SLO states per writer per round, in a different order for each writer
PROCESSES = 3


@pytest.fixture
def stores(url: str) -> Iterator[list[Store]]:
    """One Store per writer, each with its own engine (closed afterwards)."""
    made = [Store(url) for _ in range(THREADS)]
    yield made
    for store in made:
        store.engine.dispose()


def collide(stores: list[Store], write: Callable[..., Any], *args: Any) -> list[Any]:
    """Run write(i, stores[i], *args) in one thread per store, all released at once; their results, in order.
    Fails after every thread has ended if any raised (all of their exceptions in the message)."""
    barrier = threading.Barrier(len(stores))
    results: list[Any] = [None] * len(stores)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = write(i, stores[i], *args)
        except BaseException as exc:  # collected: the assertion below shows every writer's failure at once
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a writer hung (a deadlock?)"
    assert errors == [], f"{len(errors)} writer(s) raised: {errors!r}"
    return results


def _states(round_: int, writer: int, seed: int) -> list[SloState]:
    """The same KEYS states of this round for every writer, with the writer's number in every field it may
    change (so a row mixing two writers shows), in an order of its own."""
    states = [SloState(service=f"svc-{round_}-{k}", slo="latency", status="breach" if writer % 2 else "ok",
                       value=float(writer), breach_since=float(writer), updated_at=1000.0 + writer)
              for k in range(KEYS)]
    random.Random(seed).shuffle(states)
    return states


def _assert_one_writer_each(store: Store, round_: int, writers: int) -> None:
    rows = {key: s for key, s in store.slo_states().items() if key[0].startswith(f"svc-{round_}-")}
    assert sorted(rows) == sorted((f"svc-{round_}-{k}", "latency") for k in range(KEYS))
    for state in rows.values():
        writer = int(state.value or 0)
        assert 0 <= writer < writers
        assert (state.breach_since, state.updated_at, state.status) == (
            float(writer), 1000.0 + writer, "breach" if writer % 2 else "ok"), state


def test_concurrent_put_slo_states_on_the_same_keys(stores: list[Store]) -> None:
    for round_ in range(ROUNDS):
        for again in range(2):  # the insert race on new keys, then the update race on the same keys
            collide(stores, lambda i, store, r, a: store.put_slo_states(_states(r, i, seed=r * 100 + a * 10 + i)),
                    round_, again)
            _assert_one_writer_each(stores[0], round_, THREADS)


def test_concurrent_freezes_of_one_service(stores: list[Store]) -> None:
    for round_ in range(ROUNDS):
        service = f"svc-{round_}"
        for _again in range(2):
            made = collide(stores, lambda i, store, svc: store.freeze(
                service=svc, reason=f"reason {i}", actor=f"U{i}", incident_id=i, blocked_version=str(i)), service)
            for i, freeze in enumerate(made):  # each call returns the row it wrote, not another writer's
                assert (freeze.service, freeze.reason, freeze.actor, freeze.incident_id, freeze.blocked_version) == (
                    service, f"reason {i}", f"U{i}", i, str(i))
            final = stores[0].frozen(service)
            assert final is not None
            last = final.incident_id
            assert (final.reason, final.actor, final.blocked_version) == (f"reason {last}", f"U{last}", str(last)), final
    assert len(stores[0].all_frozen()) == ROUNDS


def test_concurrent_healthy_since_writes_of_one_service(stores: list[Store]) -> None:
    """Half the writers use set_healthy_since (the gate), half put_healthy_since (an evaluation cycle, with
    other services in the same batch); None (not healthy) is one of the values written."""
    others = [f"other-{k}" for k in range(10)]

    def write(i: int, store: Store, round_: int) -> None:
        since = None if i == 0 else float(1000 * round_ + i)
        if i % 2:
            store.set_healthy_since(f"svc-{round_}", since)
        else:
            store.put_healthy_since({name: since for name in [*others, f"svc-{round_}"][::1 if i % 4 else -1]})

    for round_ in range(ROUNDS):
        for _again in range(2):
            collide(stores, write, round_)
            written = {None, *(float(1000 * round_ + i) for i in range(1, THREADS))}
            assert stores[0].healthy_since(f"svc-{round_}") in written
    every = stores[0].healthy_since_all()
    assert sorted(every) == sorted([*others, *(f"svc-{r}" for r in range(ROUNDS))])


def test_concurrent_claims_of_one_request_and_one_alert(stores: list[Store]) -> None:
    """Exactly one writer claims each key; the others are told it was taken (no exception either way)."""
    for round_ in range(ROUNDS):
        claims = collide(stores, lambda i, store, r: (
            store.claim_request(f"action:U1:rollback_approve:{r}"),
            store.claim_alert(f"fp{r}", "2024-01-01T00:00:00Z", service="model-svc", alertname="A")), round_)
        assert sum(request for request, _alert in claims) == 1
        assert sum(alert for _request, alert in claims) == 1


# -- processes ---------------------------------------------------------------------------------------------
def _process_writer(url: str, writer: int, barrier: Any, rounds: int) -> None:
    """One process's part of the round: the same writes as the threads above, released by `barrier`."""
    store = Store(url)
    try:
        for round_ in range(rounds):
            barrier.wait(timeout=60)
            store.put_slo_states(_states(round_, writer, seed=round_ * 100 + writer))
            store.freeze(service=f"svc-{round_}", reason=f"reason {writer}", actor=f"U{writer}", incident_id=writer)
            store.set_healthy_since(f"svc-{round_}", float(writer))
            store.put_healthy_since({f"svc-{round_}": float(writer), "shared": float(writer)})
    finally:
        store.engine.dispose()


@pytest.mark.parametrize("url", ["postgresql"], indirect=True)
def test_concurrent_writes_from_processes(url: str) -> None:
    """PROCESSES processes (as replicas are) run ROUNDS rounds of every upsert on the same keys, each round
    started together: every process exits 0 and every row is one process's write."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    procs = [ctx.Process(target=_process_writer, args=(url, writer, barrier, ROUNDS)) for writer in range(PROCESSES)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    codes = [proc.exitcode for proc in procs]
    for proc in procs:
        if proc.is_alive():  # hung: do not leave it behind
            proc.kill()
    assert codes == [0] * PROCESSES
    store = Store(url)
    try:
        for round_ in range(ROUNDS):
            _assert_one_writer_each(store, round_, PROCESSES)
            frozen = store.frozen(f"svc-{round_}")
            assert frozen is not None and frozen.reason == f"reason {frozen.incident_id}"
            assert store.healthy_since(f"svc-{round_}") in {float(w) for w in range(PROCESSES)}
    finally:
        store.engine.dispose()
