"""One inbound Slack pipeline (handlers.slack_http's docstring): the HTTP front verifies every request once and
Bolt never verifies it again; a request with a bad signature reaches neither Bolt nor a listener, on the acked
path (clicks, commands) or the synchronous one (modal submissions); handlers.dedupe alone decides what a retry
is and drops repeats, over HTTP and over Socket Mode alike.

Real app (`bot.app.build`) over real HTTP (tests/handler_env.py), with SignatureVerifier.is_valid and the Bolt
app's dispatch counted through monkeypatch.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from mlflow.tracking import MlflowClient
from slack_bolt import BoltRequest
from slack_sdk.signature import SignatureVerifier

import handlers
from handlers import dedupe
from sandbox.servers import MlflowServer
from sandbox.signing import block_actions_body, signed_headers, view_submission_body
from sandbox.slack_api import FakeSlackAPI
from tests.handler_env import (
    APPROVER,
    BAD_VERSION,
    MODEL_CHANNEL,
    RANKER_CHANNEL,
    RANKER_SVC,
    SECRET,
    STRANGER,
    HandlerEnv,
    seed_models,
    wait_until,
)

SETTLE = 0.5  # seconds to let background listeners finish before asserting that nothing happened


class Counts:
    """How often SignatureVerifier.is_valid ran (and what it said) and how often the Bolt app was dispatched."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.verified: list[bool] = []
        self.dispatched: list[BoltRequest] = []

    def reset(self) -> None:
        with self.lock:
            self.verified.clear()
            self.dispatched.clear()


@pytest.fixture
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI() as api:
        yield api


@pytest.fixture
def env(tmp_path: Path, slack: FakeSlackAPI, mlflow_server: MlflowServer,
        mlflow_client: MlflowClient, unique_model: str) -> Iterator[HandlerEnv]:
    bench = HandlerEnv(tmp_path, slack, mlflow_client, seed_models(mlflow_client, unique_model),
                       mlflow_url=mlflow_server.url)
    bench.start()
    try:
        yield bench
    finally:
        bench.stop()


@pytest.fixture
def counts(env: HandlerEnv, monkeypatch: pytest.MonkeyPatch) -> Counts:
    seen = Counts()
    is_valid = SignatureVerifier.is_valid

    def counting_is_valid(self: SignatureVerifier, *args: Any, **kwargs: Any) -> bool:
        result = is_valid(self, *args, **kwargs)
        with seen.lock:
            seen.verified.append(result)
        return result

    # The class, so any verifier counts: handlers.slack_http's and Bolt's RequestVerification (were it on) alike.
    monkeypatch.setattr(SignatureVerifier, "is_valid", counting_is_valid)
    bolt = env.runtime.bolt
    dispatch = bolt.dispatch

    def counting_dispatch(request: BoltRequest) -> Any:
        with seen.lock:
            seen.dispatched.append(request)
        return dispatch(request)

    monkeypatch.setattr(bolt, "dispatch", counting_dispatch)
    return seen


def _post(env: HandlerEnv, body: str, secret: str = SECRET, **extra: str) -> requests.Response:
    headers = {**signed_headers(secret, body), **extra}
    return requests.post(env.events_url, data=body.encode(), headers=headers, timeout=10)


def _dry_run_body(warning: dict[str, Any], incident_id: int) -> str:
    return block_actions_body(user_id=STRANGER, channel_id=MODEL_CHANNEL, message_ts=warning["ts"],
                              action_id="rollback_dry_run", value=str(incident_id), message=warning)


def _dry_runs(env: HandlerEnv, incident: Any) -> list[str]:
    return [t for t in env.thread_texts(incident) if "Dry run" in t]


def test_a_click_with_a_bad_signature_never_reaches_bolt_and_a_good_one_is_verified_once(
        env: HandlerEnv, counts: Counts) -> None:
    incident, warning = env.open_warning()
    wait_until(lambda: counts.dispatched, "the command to reach Bolt")
    assert counts.verified == [True], "the command was verified exactly once"
    time.sleep(SETTLE)
    counts.reset()

    forged = _post(env, _dry_run_body(warning, incident.id), secret="not-the-signing-secret")
    tampered_body = _dry_run_body(warning, incident.id)
    tampered = requests.post(env.events_url, data=tampered_body.replace("rollback_dry_run", "rollback_approve"),
                             headers=signed_headers(SECRET, tampered_body), timeout=10)
    assert (forged.status_code, tampered.status_code) == (401, 401)
    time.sleep(SETTLE)
    assert counts.dispatched == [], "a bad signature never reaches Bolt, so no listener"
    assert counts.verified == [False, False], "each checked once, by the HTTP front"
    assert _dry_runs(env, incident) == [] and env.audits(incident.id, "dry_run") == []
    assert env.audits(incident.id, "approve") == [] and env.champion() == BAD_VERSION

    counts.reset()
    good = _post(env, _dry_run_body(warning, incident.id))
    assert (good.status_code, good.text) == (200, ""), "acked at once, empty"
    wait_until(lambda: _dry_runs(env, incident), "the dry run")
    time.sleep(SETTLE)
    assert counts.verified == [True], "verified exactly once: Bolt does not verify again"
    assert len(counts.dispatched) == 1
    assert [a["result"] for a in env.audits(incident.id, "dry_run")] == ["ok"]


def test_a_modal_submission_is_verified_once_before_its_synchronous_run(
        env: HandlerEnv, slack: FakeSlackAPI, counts: Counts) -> None:
    incident, warning = env.open_warning(RANKER_SVC)
    env.click(warning, "rollback_approve", user=APPROVER, channel=RANKER_CHANNEL)
    slack.wait_for(lambda c: c.method == "views.open")
    [stored] = slack.views()
    time.sleep(SETTLE)
    counts.reset()

    block = next(b for b in stored["blocks"] if b.get("type") == "input")
    values = {block["block_id"]: {block["element"]["action_id"]: {"type": "plain_text_input", "value": RANKER_SVC}}}
    body = view_submission_body(user_id=APPROVER, callback_id=stored["callback_id"],
                                private_metadata=stored["private_metadata"], values=values, view_id=stored["id"])

    forged = _post(env, body, secret="not-the-signing-secret")
    assert forged.status_code == 401, forged.text
    time.sleep(SETTLE)
    assert counts.dispatched == [] and counts.verified == [False]
    assert env.champion(RANKER_SVC) == BAD_VERSION and env.audits(incident.id, "approve") == []

    counts.reset()
    wrong = view_submission_body(user_id=APPROVER, callback_id=stored["callback_id"],
                                 private_metadata=stored["private_metadata"], view_id=stored["id"],
                                 values={block["block_id"]: {block["element"]["action_id"]:
                                                             {"type": "plain_text_input", "value": "nope"}}})
    answer = _post(env, wrong)
    assert answer.status_code == 200 and answer.json()["response_action"] == "errors", "Bolt's ack is the answer"
    assert counts.verified == [True] and len(counts.dispatched) == 1, "verified once, then run synchronously"
    assert env.champion(RANKER_SVC) == BAD_VERSION


def test_socket_mode_skips_signatures_and_its_redeliveries_hit_the_same_dedupe(
        env: HandlerEnv, counts: Counts) -> None:
    incident, warning = env.open_warning()
    wait_until(lambda: counts.dispatched, "the command to reach Bolt")
    time.sleep(SETTLE)
    counts.reset()

    # What slack_bolt's SocketModeHandler dispatches: the payload as a dict, mode socket_mode, no signature, and
    # a redelivery's retry_attempt mirrored as X-Slack-Retry-Num.
    payload = json.loads(parse_qs(_dry_run_body(warning, incident.id))["payload"][0])
    first = env.runtime.bolt.dispatch(BoltRequest(mode="socket_mode", body=payload))
    again = env.runtime.bolt.dispatch(BoltRequest(mode="socket_mode", body=payload,
                                                  headers={dedupe.RETRY_HEADER: "1"}))
    assert first.status == 200 and "x-slack-no-retry" not in first.headers
    assert again.status == 200 and again.headers.get("x-slack-no-retry") == ["1"], "answered as a repeat"
    wait_until(lambda: _dry_runs(env, incident), "the dry run")
    time.sleep(SETTLE)
    assert len(_dry_runs(env, incident)) == 1, "the redelivery ran nothing"
    assert [a["result"] for a in env.audits(incident.id, "dry_run")] == ["ok"]
    assert counts.verified == [], "no signatures in Socket Mode, and Bolt does not look for one"


def test_an_http_retry_is_acked_with_no_retry_and_dropped_by_dedupe(env: HandlerEnv, counts: Counts) -> None:
    incident, warning = env.open_warning()
    body = _dry_run_body(warning, incident.id)
    assert "X-Slack-No-Retry" not in _post(env, body).headers
    wait_until(lambda: _dry_runs(env, incident), "the dry run")
    retry = _post(env, body, **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    assert retry.status_code == 200 and retry.headers.get("X-Slack-No-Retry") == "1"
    time.sleep(SETTLE)
    assert len(_dry_runs(env, incident)) == 1
    assert [a["result"] for a in env.audits(incident.id, "dry_run")] == ["ok"]


def test_only_handlers_dedupe_knows_what_a_retry_is() -> None:
    assert dedupe.is_retry({"x-slack-retry-num": "2"}) and dedupe.is_retry({"x-slack-retry-num": ["1"]})
    assert not dedupe.is_retry({"x-slack-retry-reason": "http_timeout"}) and not dedupe.is_retry({})
    assert dedupe.NO_RETRY == ("X-Slack-No-Retry", "1")
    package = Path(handlers.__file__).parent
    mentions = sorted(p.name for p in package.glob("*.py")
                      if "retry-num" in (text := p.read_text().lower()) or "claim_request" in text)
    assert mentions == ["dedupe.py"], "the retry header and the claim live in handlers.dedupe only"
