"""bot.infra.pagerduty (PagerDuty's own Events API v2 client, one attempt per call, our retries) against
sandbox.pagerduty_api.FakePagerDuty, the HTTPS fake of the Events API v2 (the `pagerduty_fake` session fixture).

Level 1 of the README's three: functions with a fake that speaks the real wire format over real TLS.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bot.infra.pagerduty import DEFAULT_URL, PagerDuty, ca_bundle
from sandbox.pagerduty_api import FakePagerDuty

KEY = "R0LLBACKB0T0ROUTING0KEY000000017"  # 32 characters, like an integration key


@pytest.fixture
def fake(pagerduty_fake: FakePagerDuty) -> Iterator[FakePagerDuty]:
    pagerduty_fake.reset()
    yield pagerduty_fake
    pagerduty_fake.reset()


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(fake: FakePagerDuty, sleeps: Sleeps) -> Iterator[PagerDuty]:
    pd = PagerDuty(KEY, fake.url, sleep=sleeps, environ={"REQUESTS_CA_BUNDLE": fake.ca_file})
    yield pd
    pd.close()


def trigger(pd: PagerDuty, key: str = "rollback-bot:inc-17", **kw: Any) -> Any:
    args: dict[str, Any] = {"summary": "fraud-scorer: p99 latency 912 ms > 300 ms, no approver acted in 10m",
                            "source": "rollback-bot/fraud-scorer", "severity": "critical",
                            "links": [{"href": "https://example.slack.com/archives/C1/p1", "text": "Slack thread"}],
                            "custom_details": {"p99_latency_ms": {"value": 912.0, "objective": 300.0}}}
    args.update(kw)
    return pd.trigger(key, **args)


def test_trigger_acknowledge_resolve_arrive_in_order_with_the_right_bodies(fake: FakePagerDuty,
                                                                           client: PagerDuty) -> None:
    results = [trigger(client), client.acknowledge("rollback-bot:inc-17"), client.resolve("rollback-bot:inc-17")]

    assert [(r.ok, r.action, r.status, r.message, r.dedup_key, r.attempts) for r in results] == [
        (True, "trigger", 202, "Event processed", "rollback-bot:inc-17", 1),
        (True, "acknowledge", 202, "Event processed", "rollback-bot:inc-17", 1),
        (True, "resolve", 202, "Event processed", "rollback-bot:inc-17", 1)]
    bodies = [e.body for e in fake.events]
    assert bodies[0] == {
        "routing_key": KEY, "event_action": "trigger", "dedup_key": "rollback-bot:inc-17",
        "payload": {"summary": "fraud-scorer: p99 latency 912 ms > 300 ms, no approver acted in 10m",
                    "source": "rollback-bot/fraud-scorer", "severity": "critical",
                    "custom_details": {"p99_latency_ms": {"value": 912.0, "objective": 300.0}}},
        "links": [{"href": "https://example.slack.com/archives/C1/p1", "text": "Slack thread"}]}
    assert bodies[1:] == [{"routing_key": KEY, "event_action": "acknowledge", "dedup_key": "rollback-bot:inc-17"},
                          {"routing_key": KEY, "event_action": "resolve", "dedup_key": "rollback-bot:inc-17"}]
    assert [e.at for e in fake.events] == sorted(e.at for e in fake.events)
    alert = fake.alerts["rollback-bot:inc-17"]
    assert (alert.state, alert.triggers) == ("resolved", 1)


def test_a_retried_trigger_after_500_is_received_twice_and_pages_once(fake: FakePagerDuty, client: PagerDuty,
                                                                      sleeps: Sleeps) -> None:
    fake.fail_next(500)

    result = trigger(client)

    assert (result.ok, result.status, result.attempts, result.error) == (True, 202, 2, None)
    assert [(e.action, e.dedup_key, e.status) for e in fake.events] == [
        ("trigger", "rollback-bot:inc-17", 500), ("trigger", "rollback-bot:inc-17", 202)]
    assert fake.events[0].body == fake.events[1].body  # the same event again: the dedup_key makes it idempotent
    assert len(fake.accepted(KEY)) == 1 and fake.alerts["rollback-bot:inc-17"].triggers == 1
    assert sleeps == [0.5]


def test_429_is_retried_with_backoff(fake: FakePagerDuty, client: PagerDuty, sleeps: Sleeps) -> None:
    fake.fail_next(429, times=2)

    result = client.acknowledge("rollback-bot:inc-17")

    assert (result.ok, result.status, result.attempts) == (True, 202, 3)
    assert [e.status for e in fake.events] == [429, 429, 202]
    assert sleeps == [0.5, 1.0]


def test_retries_give_up_after_the_last_backoff_with_the_status_in_the_error(fake: FakePagerDuty, client: PagerDuty,
                                                                             sleeps: Sleeps) -> None:
    fake.fail_next(503, times=4)

    result = client.resolve("rollback-bot:inc-17")

    assert (result.ok, result.status, result.attempts) == (False, 503, 4)
    assert result.error is not None and "HTTP 503" in result.error and "resolve" in result.error
    assert len(fake.events) == 4 and sleeps == [0.5, 1.0, 2.0]


def test_400_is_returned_with_pagerdutys_message_and_not_retried(fake: FakePagerDuty, client: PagerDuty,
                                                                 sleeps: Sleeps) -> None:
    result = trigger(client, summary="   ")  # the fake validates as PagerDuty does: a blank summary is invalid

    assert (result.ok, result.status, result.attempts) == (False, 400, 1)
    assert result.error == ("PagerDuty refused the trigger (HTTP 400): Event object is invalid: "
                            "'payload.summary' is missing or blank")
    assert result.message == result.error  # the escalation shows `message` in the thread
    assert [e.status for e in fake.events] == [400] and sleeps == []
    assert fake.alerts == {}


def test_an_untrusted_certificate_fails_clearly_without_retrying(fake: FakePagerDuty, sleeps: Sleeps) -> None:
    pd = PagerDuty(KEY, fake.url, sleep=sleeps, environ={})  # no CA configured: the system store only
    try:
        result = trigger(pd)
    finally:
        pd.close()

    assert (result.ok, result.status, result.attempts) == (False, None, 1)
    assert result.error is not None and "TLS certificate" in result.error and "not trusted" in result.error
    assert "REQUESTS_CA_BUNDLE" in result.error
    assert fake.events == [] and sleeps == []
    deadline = time.monotonic() + 5  # the fake records the refused handshake from its own thread
    while not fake.handshake_failures and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.handshake_failures


def test_ssl_cert_file_is_honoured_when_requests_ca_bundle_is_not_set(fake: FakePagerDuty, sleeps: Sleeps,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", fake.ca_file)
    pd = PagerDuty(KEY, fake.url, sleep=sleeps)  # reads os.environ
    try:
        assert client_ok(pd)
    finally:
        pd.close()
    assert ca_bundle({"REQUESTS_CA_BUNDLE": "/a.pem", "SSL_CERT_FILE": "/b.pem"}) == "/a.pem"
    assert ca_bundle({"SSL_CERT_FILE": "/b.pem"}) == "/b.pem" and ca_bundle({}) is None


def client_ok(pd: PagerDuty) -> bool:
    return bool(pd.acknowledge("rollback-bot:inc-17").ok)


def test_connection_errors_are_retried_then_reported(sleeps: Sleeps) -> None:
    with FakePagerDuty() as gone:
        url, ca = gone.url, gone.ca_file
        pd = PagerDuty(KEY, url, sleep=sleeps, environ={"REQUESTS_CA_BUNDLE": ca}, retries=2)
    try:  # the fake has stopped: nothing listens on its port any more
        result = pd.resolve("rollback-bot:inc-17")
    finally:
        pd.close()

    assert (result.ok, result.status, result.attempts) == (False, None, 3)
    assert result.error is not None and "could not reach PagerDuty at 127.0.0.1:" in result.error
    assert sleeps == [0.5, 1.0]


def test_a_server_that_never_answers_times_out(fake: FakePagerDuty, sleeps: Sleeps) -> None:
    # A listening socket nobody accepts from: the kernel completes the TCP handshake, the TLS one never comes.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        pd = PagerDuty(KEY, f"https://127.0.0.1:{port}/v2/enqueue", timeout=0.2, retries=1, sleep=sleeps,
                       environ={"REQUESTS_CA_BUNDLE": fake.ca_file})
        try:
            result = pd.trigger("rollback-bot:inc-17", "s", "src")
        finally:
            pd.close()

    assert (result.ok, result.attempts) == (False, 2)
    assert result.error is not None and "Timeout" in result.error
    assert sleeps == [0.5]


def test_the_routing_key_never_appears_in_results_or_logs(fake: FakePagerDuty, client: PagerDuty,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx2's and the library's included
    echo = {"status": "invalid event", "message": f"Event object is invalid for {KEY}",
            "errors": [f"Routing key {KEY} not found"]}
    fake.fail_next(400, body=echo)
    fake.fail_next(500, body={"status": "error", "message": f"{KEY} overloaded"})
    fake.fail_next(500, body={"status": "error", "message": f"{KEY} overloaded"})
    fake.fail_next(500, body={"status": "error", "message": f"{KEY} overloaded"})
    fake.fail_next(500, body={"status": "error", "message": f"{KEY} overloaded"})

    results = [trigger(client), client.acknowledge("rollback-bot:inc-17"), client.resolve("rollback-bot:inc-17")]

    assert [r.ok for r in results] == [False, False, True]
    assert results[0].error is not None and "Routing key *** not found" in results[0].error
    for result in results:
        assert KEY not in repr(result) and KEY[-8:] not in result.message
    assert caplog.records and KEY not in caplog.text and KEY[-4:] not in caplog.text
    assert fake.events[0].body is not None and fake.events[0].body["routing_key"] == KEY  # it was sent, in the body


def test_bad_arguments_and_configuration(fake: FakePagerDuty, client: PagerDuty) -> None:
    result = client.trigger("rollback-bot:inc-17", "s", "src", severity="sev1")
    assert (result.ok, result.status, result.attempts) == (False, None, 0)
    assert result.error is not None and "critical, error, warning, info" in result.error and fake.events == []

    long = client.trigger("rollback-bot:inc-17", "x" * 2000, "src")
    assert long.ok and fake.events[-1].body is not None and len(fake.events[-1].body["payload"]["summary"]) == 1024

    with pytest.raises(ValueError, match="https://"):
        PagerDuty(KEY, "http://127.0.0.1:1/v2/enqueue")
    with pytest.raises(ValueError, match="/v2/enqueue"):
        PagerDuty(KEY, "https://127.0.0.1:1/v2/change")
    with pytest.raises(ValueError, match="CA bundle"):
        PagerDuty(KEY, fake.url, environ={"REQUESTS_CA_BUNDLE": "/nonexistent/ca.pem"})
    with pytest.raises(ValueError, match="empty"):
        PagerDuty("", fake.url)


def test_from_env(fake: FakePagerDuty) -> None:
    assert PagerDuty.from_env({}) is None
    default = PagerDuty.from_env({"PAGERDUTY_ROUTING_KEY": KEY})
    assert default is not None and default.events_url == DEFAULT_URL
    default.close()
    pd = PagerDuty.from_env({"PAGERDUTY_ROUTING_KEY": KEY, "PAGERDUTY_EVENTS_URL": fake.url,
                             "REQUESTS_CA_BUNDLE": fake.ca_file})
    assert pd is not None
    try:
        assert pd.resolve("rollback-bot:inc-17").ok
    finally:
        pd.close()


def test_the_fake_validates_like_pagerduty_and_follows_alerts(fake: FakePagerDuty) -> None:
    assert fake.handle({"event_action": "trigger", "payload": {"summary": "s", "source": "x", "severity": "bad"}}) == (
        400, {"status": "invalid event", "message": "Event object is invalid",
              "errors": ["'routing_key' is missing or blank",
                         "'payload.severity' is invalid (must be one of: critical, error, warning, info)"]})
    status, answer = fake.handle({"routing_key": KEY, "event_action": "resolve"})
    assert (status, answer["errors"]) == (400, ["'dedup_key' is missing or blank"])
    status, answer = fake.handle({"routing_key": KEY, "event_action": "trigger",
                                  "payload": {"summary": "s", "source": "x", "severity": "info"}})
    assert status == 202 and answer["status"] == "success" and len(answer["dedup_key"]) == 32  # generated
    generated = answer["dedup_key"]
    assert fake.handle({"routing_key": KEY, "event_action": "resolve", "dedup_key": generated})[0] == 202
    assert fake.alerts[generated].state == "resolved"
    assert fake.handle({"routing_key": KEY, "event_action": "acknowledge", "dedup_key": generated})[0] == 202
    assert fake.alerts[generated].state == "resolved"  # dropped: the alert is resolved
    assert fake.handle({"routing_key": KEY, "event_action": "trigger", "dedup_key": generated,
                        "payload": {"summary": "s", "source": "x", "severity": "info"}})[0] == 202
    assert (fake.alerts[generated].state, fake.alerts[generated].triggers) == ("triggered", 1)  # a new alert


def test_wait_for_sees_events_from_another_thread(fake: FakePagerDuty, client: PagerDuty) -> None:
    sender = threading.Thread(target=lambda: trigger(client))
    sender.start()
    events = fake.wait_for(lambda events: any(e.status == 202 for e in events), timeout=10)
    sender.join(timeout=10)
    assert [e.action for e in events] == ["trigger"]
    with pytest.raises(TimeoutError, match="trigger"):
        fake.wait_for(lambda events: len(events) > 1, timeout=0.05)
