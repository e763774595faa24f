"""Freeze windows (bot.slo.windows) and the org-wide stop: windows open, closed and another service's at fixed
clocks (and one longer than its period, overlapping its next occurrence); bad cron and duration as policy errors
with file:line; the gate holding a ready candidate during a window (said once) and promoting after it, against a
real MLflow; `/rollback freeze --all` / `unfreeze --all` over signed requests (admins only, stored, survives a new
process), and `/rollback status` showing both (a large policy's too, which lists only busy services)."""

from __future__ import annotations

import calendar
import html
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bot.infra.model_registry import ModelRegistry
from bot.infra.store import ALL, Store
from bot.slo.gate import Gate
from bot.slo.policy_file import PolicyError, parse_policy
from bot.slo.windows import next_window, open_window
from sandbox.model_service import seed_registry
from sandbox.slack_api import FakeSlackAPI
from tests.handler_env import (
    APPROVER,
    GROUP,
    GROUP_MEMBER,
    MODEL_CHANNEL,
    OTHER_CHANNEL,
    RANKER_CHANNEL,
    HandlerEnv,
    policy_yaml,
    seed_models,
    wait_until,
)
from tests.stubs import Clock

ADMIN = "U0ADMIN01"


def answer(env: HandlerEnv, text: str, user: str = APPROVER) -> str:
    """The ephemeral answer to `/rollback <text>` (sent after the ack, or the ack itself), as Slack shows it."""
    before = len(env.slack.calls("chat.postEphemeral"))
    response = env.command(text, user=user, channel=OTHER_CHANNEL)
    if response.text:
        return html.unescape(response.text)
    call = wait_until(lambda: next((c for c in env.slack.calls("chat.postEphemeral")[before:]
                                    if c.params.get("user") == user), None), f"the answer to /rollback {text}")
    return html.unescape(str(call.params["text"]))
FRIDAY_17 = calendar.timegm((2026, 12, 4, 17, 0, 0))  # a Friday, 17:00 UTC
HOUR = 3600.0


def two_services(top: str = "", svc_a: str = "", svc_b: str = "") -> str:
    return f"""{top}
services:
  svc-a:
    channel: C0A
    approvers: [U0APPROVER]
    model: model-a
    slos: [{{name: auc, kind: quality, query: 'min(model_auc)', below: 0.8}}]
    rollback: [{{mlflow_alias: {{model: model-a}}}}]
    promote: {{healthy_for: 10s}}
{svc_a}
  svc-b:
    channel: C0B
    approvers: [U0APPROVER]
    model: model-b
    slos: [{{name: auc, kind: quality, query: 'min(model_auc)', below: 0.8}}]
    rollback: [{{mlflow_alias: {{model: model-b}}}}]
{svc_b}"""


WEEKEND = '  - {cron: "0 17 * * FRI", duration: 64h, reason: weekend}'


def test_a_top_level_window_is_open_for_every_service_from_its_match_for_its_duration() -> None:
    policy = parse_policy(two_services(f"freeze_windows:\n{WEEKEND}"))
    a, b = policy.services["svc-a"], policy.services["svc-b"]
    assert open_window(a, policy, FRIDAY_17 - 1) is None
    opened = open_window(a, policy, FRIDAY_17)
    assert opened is not None and (opened.start, opened.end) == (FRIDAY_17, FRIDAY_17 + 64 * HOUR)
    assert (opened.reason, opened.scope, opened.cron) == ("weekend", "all", "0 17 * * FRI")
    assert open_window(b, policy, FRIDAY_17 + 63 * HOUR) == opened  # every service, until Monday 09:00
    assert open_window(a, policy, FRIDAY_17 + 64 * HOUR) is None  # it closed
    upcoming = next_window(a, policy, FRIDAY_17 + 64 * HOUR)
    assert upcoming is not None and upcoming.start == FRIDAY_17 + 7 * 24 * HOUR


def test_a_service_window_holds_only_that_service_and_the_longest_open_one_wins() -> None:
    own = '    freeze_windows:\n      - {cron: "0 * * * *", duration: 90m, reason: "release train"}\n'
    policy = parse_policy(two_services(svc_a=own))
    a, b = policy.services["svc-a"], policy.services["svc-b"]
    at = FRIDAY_17 + 0.5 * HOUR  # 17:30: the 16:00 occurrence (until 17:30) just closed, the 17:00 one is open
    window = open_window(a, policy, at)
    assert window is not None and window.scope == "svc-a" and window.start == FRIDAY_17
    assert window.end == FRIDAY_17 + 1.5 * HOUR
    assert open_window(b, policy, at) is None  # another service's window
    both = parse_policy(two_services(f"freeze_windows:\n{WEEKEND}", svc_a=own))
    longest = open_window(both.services["svc-a"], both, FRIDAY_17 + 0.5 * HOUR)
    assert longest is not None and longest.reason == "weekend"  # ends Monday, after the release train's 18:30


def test_a_window_longer_than_its_period_overlaps_its_next_occurrence_and_the_later_one_is_open() -> None:
    daily = '    freeze_windows:\n      - {cron: "0 9 * * *", duration: 36h, reason: "soak"}\n'
    policy = parse_policy(two_services(svc_a=daily))
    a = policy.services["svc-a"]
    friday_9 = FRIDAY_17 - 8 * HOUR
    saturday_10 = friday_9 + 25 * HOUR  # Friday's occurrence is open until Saturday 21:00, Saturday's since 09:00
    window = open_window(a, policy, saturday_10)
    assert window is not None and (window.start, window.end) == (friday_9 + 24 * HOUR, friday_9 + 60 * HOUR)
    assert open_window(a, policy, friday_9 + 24 * HOUR) == window  # opened exactly at its match
    at_8 = open_window(a, policy, friday_9 + 23 * HOUR)  # Saturday 08:00: only Friday's occurrence
    assert at_8 is not None and at_8.start == friday_9
    upcoming = next_window(a, policy, saturday_10)
    assert upcoming is not None and upcoming.start == friday_9 + 48 * HOUR  # Sunday 09:00, though one is open


def test_a_large_status_lists_quiet_services_but_still_shows_a_window_over_every_service(
        tmp_path: Path, mlflow_client: MlflowClient) -> None:
    from bot.incidents.oncall import STATUS_ALL, OnCall

    services = "".join(f"""
  svc-{i:02d}:
    channel: C0SCALE
    approvers: [U0APPROVER]
    model: model-{i:02d}
    slos: [{{name: auc, kind: quality, query: 'min(model_auc)', below: 0.8}}]
    rollback: [{{mlflow_alias: {{model: model-{i:02d}}}}}]""" for i in range(STATUS_ALL + 1))
    policy = parse_policy(f"freeze_windows:\n{WEEKEND}\nservices:{services}\n")
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    clock = Clock(FRIDAY_17 + HOUR)
    oncall = OnCall(policy=policy, store=store, models=ModelRegistry(mlflow_client),
                    check_approver=lambda *_: None, say=lambda *_: None, clock=clock)
    text = oncall.status(None).text
    assert text.splitlines()[0] == ":snowflake: freeze window: weekend, until Mon 2026-12-07 09:00 UTC " \
        "(cron `0 17 * * FRI`, every service)"
    assert f"{STATUS_ALL + 1} services watched: 0 with an open incident, 0 more frozen" in text
    assert "*svc-00*" not in text  # the quiet services are counted, not listed
    clock.tick(64 * HOUR)
    assert "freeze window" not in oncall.status(None).text  # it closed


@pytest.mark.parametrize(("window", "expected"), [
    ('{cron: "0 17 * * FRIDAY", duration: 1h}', "expected a cron expression of five fields"),
    ('{cron: "0 17 * *", duration: 1h}', "expected a cron expression of five fields"),
    ('{cron: "0 17 * * FRI", duration: 0s}', "greater than 0"),
    ('{cron: "0 17 * * FRI", duration: soon}', "duration"),
])
def test_a_bad_cron_or_duration_is_a_policy_error_naming_its_line(window: str, expected: str) -> None:
    text = two_services(f"freeze_windows:\n  - {window}")
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    message = str(caught.value)
    assert message.startswith("policy.yaml:2: freeze_windows[0]"), message
    assert expected in message


def test_the_gate_holds_a_ready_candidate_during_a_window_says_so_once_then_promotes(
        tmp_path: Path, mlflow_client: MlflowClient, unique_model: str) -> None:
    v1, v2 = seed_registry(mlflow_client, unique_model, versions=2)
    mlflow_client.set_registered_model_alias(unique_model, "champion", v1)
    mlflow_client.set_registered_model_alias(unique_model, "candidate", v2)
    policy = parse_policy(two_services(f"freeze_windows:\n{WEEKEND}").replace("model-a", unique_model))
    svc = policy.services["svc-a"]
    clock = Clock(FRIDAY_17 + HOUR)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    gate = Gate(store, ModelRegistry(mlflow_client), clock=clock, policy=policy, alias_ttl=0)
    store.set_healthy_since(svc.name, clock.now - 60)

    first, second = gate.consider(svc), gate.consider(svc)
    assert not first.promoted and first.held == "window" and first.version == v2 and first.notify
    assert "freeze window (weekend) until Mon 2026-12-07 09:00 UTC" in first.reason
    assert second.held == "window" and not second.notify  # said once per candidate and window
    assert Gate(store, ModelRegistry(mlflow_client), clock=clock, policy=policy).consider(svc).notify is False

    clock.tick(64 * HOUR)  # Monday 10:00: the window closed
    store.set_healthy_since(svc.name, clock.now - 60)
    after = gate.consider(svc)
    assert after.promoted and (after.version, after.previous) == (v2, v1)
    assert mlflow_client.get_model_version_by_alias(unique_model, "champion").version == v2


def test_the_org_wide_stop_holds_every_service_in_the_gate(tmp_path: Path, mlflow_client: MlflowClient,
                                                           unique_model: str) -> None:
    v1, v2 = seed_registry(mlflow_client, unique_model, versions=2)
    mlflow_client.set_registered_model_alias(unique_model, "champion", v1)
    mlflow_client.set_registered_model_alias(unique_model, "candidate", v2)
    policy = parse_policy(two_services().replace("model-a", unique_model))
    svc = policy.services["svc-a"]
    clock = Clock()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.set_healthy_since(svc.name, clock.now - 60)
    store.freeze(service=ALL, reason="incident review", actor=ADMIN)
    gate = Gate(store, ModelRegistry(mlflow_client), clock=clock, policy=policy)

    (decision,) = [d for s, d in gate.consider_all(policy.services.values()) if s.name == "svc-a"]
    assert not decision.promoted and "every service frozen since" in decision.reason
    assert "incident review" in gate.consider(svc).reason
    store.unfreeze(ALL)
    assert gate.consider(svc).promoted


@pytest.fixture
def admin_env(tmp_path: Path, mlflow_server: object, mlflow_client: MlflowClient,
              unique_model: str) -> Iterator[HandlerEnv]:
    models = seed_models(mlflow_client, unique_model)
    text = f"admins: [{ADMIN}]\nfreeze_windows:\n  - {{cron: '* * * * *', duration: 2m, reason: 'quiet hours'}}\n" \
        + policy_yaml(models)
    with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as slack:
        env = HandlerEnv(tmp_path, slack, mlflow_client, models, mlflow_url=mlflow_server.url,  # type: ignore[attr-defined]
                         policy=text).start()
        try:
            yield env
        finally:
            env.stop()


def test_freeze_all_is_for_admins_is_stored_and_shown_in_status(admin_env: HandlerEnv) -> None:
    env = admin_env
    refused = answer(env, "freeze --all release review", user=APPROVER)
    assert "Not done (freeze_all)" in refused and f"<@{ADMIN}>" in refused
    assert env.store.frozen(ALL) is None

    done = answer(env, "freeze --all release review <!channel>", user=ADMIN)
    assert "Froze auto-promotion of every service; said in 2 channel(s)" in done
    frozen = env.store.frozen(ALL)
    assert frozen is not None and frozen.actor == ADMIN and frozen.reason == "release review <!channel>"
    for channel in (MODEL_CHANNEL, RANKER_CHANNEL):
        (note,) = [m["text"] for m in env.slack.messages(channel) if "every service" in m.get("text", "")]
        assert "<!channel>" not in note  # the reason is shown inert

    # Stored: a new store on the same database (a restarted process) still sees it.
    assert Store(env.settings.database_url).frozen(ALL) is not None
    status = answer(env, "status")
    assert status.splitlines()[1].startswith(":octagonal_sign: *Every service frozen* since")
    assert "freeze window: quiet hours, until" in status and "cron `* * * * *`, every service" in status
    one = answer(env, "status model-svc")
    assert "*Every service frozen*" in one and "freeze window: quiet hours" in one

    assert "Not done (unfreeze_all)" in answer(env, "unfreeze --all", user=APPROVER)
    env.store.freeze(service="model-svc", reason="after incident #3", actor=APPROVER)
    assert "services frozen on their own stay frozen" in answer(env, "unfreeze --all", user=ADMIN)
    assert env.store.frozen(ALL) is None and env.store.frozen("model-svc") is not None
    assert "nothing to lift" in answer(env, "unfreeze --all", user=ADMIN)
    assert "takes nothing after it" in env.answer("unfreeze --all now", user=ADMIN)  # refused in the ack


def test_without_admins_nobody_may_freeze_everything_and_the_answer_says_why(
        tmp_path: Path, mlflow_server: object, mlflow_client: MlflowClient, unique_model: str) -> None:
    models = seed_models(mlflow_client, unique_model)
    with FakeSlackAPI() as slack:
        env = HandlerEnv(tmp_path, slack, mlflow_client, models, mlflow_url=mlflow_server.url).start()  # type: ignore[attr-defined]
        try:
            refused = answer(env, "freeze --all", user=APPROVER)
            assert "the policy names no admins (top-level `admins:`)" in refused
            assert env.store.frozen(ALL) is None
            (refusal,) = [r for r in env.store.audits() if r["action"] == "freeze_all"]
            assert refusal["result"] == "refused" and refusal["actor"] == APPROVER
            assert "names no admins" in refusal["detail"]["reason"]
        finally:
            env.stop()
