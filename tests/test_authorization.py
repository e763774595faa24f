"""The one authorization rule, at the Slack surface (issue 11, findings 1, 2, 3, 10 and 13): a person's
/rollback never arms the automatic mode, two_person needs two different approvers (a requester who is not an
approver counts for nothing), `--to` pins are checked, a bad pin is answered, and a dismissed manual request
does not silence the bot's own detection. Real HTTP against the real app (tests/handler_env.py), real
MLflow, the fake Slack Web API; the fake helm for the helm pin."""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bot.slo.evaluation import BREACH
from sandbox.servers import MlflowServer
from sandbox.slack_api import FakeSlackAPI
from tests.handler_env import (
    APPROVER,
    BAD_VERSION,
    GOOD_VERSION,
    GROUP,
    GROUP_MEMBER,
    MODEL_CHANNEL,
    MODEL_SVC,
    STRANGER,
    HandlerEnv,
    button,
    has_buttons,
    seed_models,
    wait_until,
)
from tests.helm_env import FakeHelm, standard_history
from tests.stubs import StubProm


@pytest.fixture
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as api:
        yield api


@pytest.fixture
def bench(tmp_path: Path, slack: FakeSlackAPI, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
          unique_model: str) -> Iterator[object]:
    made: list[HandlerEnv] = []

    def make(extra: dict[str, str] | None = None, policy: str | None = None) -> HandlerEnv:
        env = HandlerEnv(tmp_path / str(len(made)), slack, mlflow_client, seed_models(mlflow_client, unique_model),
                         mlflow_url=mlflow_server.url, extra=extra, policy=policy).start()
        made.append(env)
        return env

    (tmp_path / "0").mkdir()
    (tmp_path / "1").mkdir()
    try:
        yield make
    finally:
        for env in made:
            env.stop()


def _told(env: HandlerEnv, text: str, user: str = APPROVER) -> str:
    """Send `/rollback <text>` and return what the bot tells the person afterwards (ephemeral, unescaped)."""
    seen = len([c for c in env.slack.calls("chat.postEphemeral") if c.params.get("user") == user])
    env.command(text, user=user)
    call = wait_until(lambda: (told := [c for c in env.slack.calls("chat.postEphemeral")
                                        if c.params.get("user") == user][seen:]) and told[0], f"the answer to {text}")
    return html.unescape(str(call.params["text"]))


def _refusals(env: HandlerEnv, incident_id: int | None = None) -> list[dict]:
    return [a for a in env.store.audits(incident_id) if a["result"] == "refused"]


def test_finding1_a_strangers_request_never_arms_the_automatic_rollback(bench) -> None:
    env = bench({MODEL_SVC: "auto_rollback: true\nauto_rollback_grace: 1s"})
    incident, warning = env.open_warning(user=STRANGER)
    assert incident.requested_by == STRANGER and incident.auto_at is None and incident.armed_by == "request"
    time.sleep(2.5)  # well past the 1 s grace period an automatic rollback would have had
    assert env.champion() == BAD_VERSION
    assert env.store.incident(incident.id).state == "open"
    assert not any(a["action"] == "approve" for a in env.audits(incident.id))
    assert "auto_armed" not in [e.kind for e in env.store.events(incident.id)]
    assert "automatically" not in str(warning["blocks"])
    # An approver's request does not arm it either: a person's /rollback always waits for the button.
    env.click(warning, "rollback_dismiss", user=APPROVER)
    wait_until(lambda: env.store.incident(incident.id).state == "dismissed", "the dismissal")
    again, _ = env.open_warning(user=APPROVER)
    assert again.auto_at is None
    # The bot's own detection does arm it (the rule's automatic branch), and it runs as rollback-bot.
    env.click(env.slack.message(MODEL_CHANNEL, again.message_ts or ""), "rollback_dismiss", user=APPROVER)
    wait_until(lambda: env.store.incident(again.id).state == "dismissed", "the second dismissal")
    svc = env.runtime.bot.incidents.service(MODEL_SVC)
    assert svc is not None
    detected = env.runtime.bot.incidents.open_incident(svc, None, source="detection")
    assert detected.auto_at is not None
    wait_until(lambda: env.champion() == GOOD_VERSION, "the automatic rollback of a detected breach", timeout=15)
    assert env.store.incident(detected.id).approved_by == "rollback-bot"


def test_finding2_two_person_is_two_approvers_when_a_non_approver_requested_it(bench) -> None:
    env = bench({MODEL_SVC: "two_person: true"})
    incident, warning = env.open_warning(user=STRANGER)
    env.click(warning, "rollback_approve", user=APPROVER)
    time.sleep(1.0)
    assert env.champion() == BAD_VERSION, "one approver rolled back a two_person service a stranger requested"
    assert env.store.incident(incident.id).state == "open"
    assert env.store.incident(incident.id).first_approver == APPROVER
    shown = wait_until(lambda: (m := env.slack.message(MODEL_CHANNEL, incident.message_ts or "")) and
                       "waiting for a second approver" in str(m["blocks"]) and m, "the warning's first approval")
    assert "Approved by <@U0APPROVER>" in str(shown["blocks"])
    assert button(shown, "rollback_approve"), "Roll back stays on the warning until the second approval"
    assert any("waiting for a second approver" in t for t in env.thread_texts(incident))
    env.click(shown, "rollback_approve", user=APPROVER)  # the same approver twice is still one approval
    env.ephemeral_to(APPROVER, "two-person rule")
    assert env.champion() == BAD_VERSION
    env.click(shown, "rollback_approve", user=STRANGER)  # the requester is no approver at all
    env.ephemeral_to(STRANGER, "Not rolled back")
    env.click(shown, "rollback_approve", user=GROUP_MEMBER)
    wait_until(lambda: env.champion() == GOOD_VERSION, "the second approver's rollback")
    done = env.store.incident(incident.id)
    assert done.approved_by == GROUP_MEMBER and done.first_approver == APPROVER
    reasons = [a["detail"].get("reason") for a in _refusals(env, incident.id)]
    assert "two_person" in reasons and any("not an approver" in str(r) for r in reasons)


def test_finding2_an_approvers_own_request_counts_as_the_first_approval(bench) -> None:
    env = bench({MODEL_SVC: "two_person: true"})
    incident, warning = env.open_warning(user=APPROVER)
    assert "waiting for a second approver" in str(warning["blocks"])
    assert incident.first_approver == APPROVER
    env.click(warning, "rollback_approve", user=GROUP_MEMBER)
    wait_until(lambda: env.champion() == GOOD_VERSION, "the second approver's rollback")


def test_finding3_to_refuses_a_blocked_version_the_current_one_and_the_wrong_kind(bench,
                                                                                   mlflow_client: MlflowClient) -> None:
    env = bench()
    model = env.models[MODEL_SVC]
    mlflow_client.set_model_version_tag(model, GOOD_VERSION, "rollback_blocked", "true")
    blocked = _told(env, f"{MODEL_SVC} --to {GOOD_VERSION}")
    assert "rollback_blocked" in blocked and "step 1 `mlflow_alias`" in blocked, blocked
    current = _told(env, f"{MODEL_SVC} --to {BAD_VERSION}")
    assert "the version being rolled back from" in current, current
    wrong = _told(env, f"{MODEL_SVC} --to abc")
    assert "step 1 `mlflow_alias`" in wrong and "MLflow model version number" in wrong, wrong
    dry = _told(env, f"{MODEL_SVC} --dry-run --to {GOOD_VERSION}")
    assert "rollback_blocked" in dry, dry
    assert env.store.active_incident(MODEL_SVC) is None and env.champion() == BAD_VERSION
    assert [a["detail"]["to"] for a in env.store.audits() if a["action"] == "open" and a["result"] == "refused"] \
        == [GOOD_VERSION, BAD_VERSION, "abc"]
    mlflow_client.delete_model_version_tag(model, GOOD_VERSION, "rollback_blocked")
    assert "posted" in _told(env, f"{MODEL_SVC} --to {GOOD_VERSION}")


def test_finding10_to_with_a_helm_step_answers_instead_of_raising(bench, monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    FakeHelm.install(monkeypatch, tmp_path, {"prod/model-svc": standard_history()})
    policy = f"""
services:
  {MODEL_SVC}:
    channel: {MODEL_CHANNEL}
    approvers: [{APPROVER}]
    model: unused-model
    slos:
      - {{name: auc, query: 'min(model_auc)', below: 0.8}}
    rollback:
      - helm: {{release: model-svc, namespace: prod}}
"""
    env = bench(policy=policy)
    answer = _told(env, f"{MODEL_SVC} --to abc")
    assert "step 1 `helm`" in answer and "helm revision number" in answer, answer
    assert "the version being rolled back from" in _told(env, f"{MODEL_SVC} --to 3")
    assert "no revision 9" in _told(env, f"{MODEL_SVC} --to 9")
    assert env.store.active_incident(MODEL_SVC) is None
    assert "posted" in _told(env, f"{MODEL_SVC} --to 1")
    incident = wait_until(lambda: env.store.active_incident(MODEL_SVC), "the pinned request")
    assert incident.baseline["pins"] == ["1"]


def test_finding13_a_dismissed_manual_request_does_not_silence_a_real_breach(bench) -> None:
    env = bench()
    bot = env.runtime.bot
    bot.evaluator.prom = StubProm()  # type: ignore[assignment]  # nothing breaches yet
    query = 'min(model_auc{service="model-svc"})'
    incident, warning = env.open_warning(user=STRANGER)
    bot.evaluator.prom = StubProm({query: (0.71,)})  # type: ignore[assignment]
    bot.detection.evaluate_once()  # the breach begins while the manual request is open
    env.click(warning, "rollback_dismiss", user=APPROVER)
    wait_until(lambda: env.store.incident(incident.id).state == "dismissed", "the dismissal")
    readings = bot.detection.evaluate_once()  # the breach held (for: 0s): the bot's own detection warns about it
    assert [r.status for r in readings[MODEL_SVC]] == [BREACH]
    detected = wait_until(lambda: env.store.active_incident(MODEL_SVC), "the detected incident")
    assert detected.id != incident.id and detected.trigger == "auc" and detected.armed_by == "detection"
    assert has_buttons(env.slack.message(MODEL_CHANNEL, detected.message_ts or ""))
    # A dismissed warning about the breach itself still silences that same breach: its thread handles it.
    env.click(env.slack.message(MODEL_CHANNEL, detected.message_ts or ""), "rollback_dismiss", user=APPROVER)
    wait_until(lambda: env.store.incident(detected.id).state == "dismissed", "the detected one's dismissal")
    bot.detection.evaluate_once()
    assert env.store.active_incident(MODEL_SVC) is None
