"""The store's guarantees: one active incident per service, transitions that happen once, freezes that
survive a reopen of the database (a restart).

Every test runs twice: on SQLite (the default) and on a real PostgreSQL server (tests/pg_env.py, a fresh
database per test), the two databases the README promises.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from bot.infra.store import Store
from tests.stubs import Clock

MakeStore = Callable[..., Store]


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store()


def _open(store: Store, service: str = "model-svc"):  # type: ignore[no-untyped-def]
    return store.open_incident(service=service, trigger="p95-latency", detail={"value": 0.4}, baseline={},
                               breach_started_at=1.0, channel="C0MODELSVC")


def test_one_active_incident_per_service(store: Store) -> None:
    first = _open(store)
    assert first is not None and first.state == "open" and first.active
    assert _open(store) is None
    assert _open(store, "other-svc") is not None
    assert store.transition(first.id, ("open",), "dismissed")
    again = _open(store)
    assert again is not None and again.id != first.id


def test_transition_happens_once_under_concurrency(store: Store) -> None:
    incident = _open(store)
    assert incident is not None
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda u: store.transition(incident.id, ("open",), "executing", approved_by=u),
                                [f"U{i}" for i in range(10)]))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert store.incident(incident.id).approved_by == winners[0].approved_by


def test_final_state_frees_the_service_and_stamps_finished(store: Store) -> None:
    incident = _open(store)
    assert incident is not None
    store.transition(incident.id, ("open",), "executing")
    store.transition(incident.id, ("executing",), "verifying")
    done = store.transition(incident.id, ("verifying",), "recovered", recovered_at=5.0)
    assert done is not None and done.active_service is None and done.finished_at and not done.active
    assert store.active_incident("model-svc") is None


def test_timeline_events_and_freeze_survive_reopening(make_store: MakeStore) -> None:
    store = make_store()
    incident = _open(store)
    assert incident is not None
    first = store.add_event(incident.id, "detected", "Detected")
    store.add_event(incident.id, "warned", "Warning posted")
    store.mark_posted(first.id, "1.000100")
    store.freeze(service="model-svc", reason="rollback incident #1", actor="rollback-bot", incident_id=incident.id,
                 blocked_version="5")
    store.audit(actor="U1", action="approve", result="ok", incident_id=incident.id)

    reopened = make_store()
    assert [e.kind for e in reopened.events(incident.id)] == ["detected", "warned"]
    assert [e.kind for e in reopened.unposted_events()] == ["warned"]
    frozen = reopened.frozen("model-svc")
    assert frozen is not None and frozen.blocked_version == "5"
    assert reopened.audits(incident.id)[0]["action"] == "approve"
    assert reopened.unfreeze("model-svc") and reopened.frozen("model-svc") is None


def test_request_keys_are_claimed_once_and_forgotten_when_old(make_store: MakeStore) -> None:
    clock = Clock()
    store = make_store(clock=clock)
    assert store.claim_request("action:U1:rollback_approve:1.0") is True
    assert store.claim_request("action:U1:rollback_approve:1.0") is False, "a retry or replay"
    clock.tick(30)
    assert store.claim_request("command:trigger-2") is True
    assert store.forget_requests(older_than=clock() - 10) == 1
    assert store.claim_request("command:trigger-2") is False, "recent keys are kept"
