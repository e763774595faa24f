"""The app's Home tab: `app_home_opened` → views.publish with every service's state for the viewer.

Level 1: bot.incidents.home.Home over a real SQLite store and a counting registry (a policy of 30 services is
summarised under Slack's 100 blocks), the fake Web API's views.publish and SlackOut's permalink. Level 2: signed
events through the real app (tests/handler_env.py) against the fake Web API and a real MLflow server: a healthy
service, a breaching one, one with an open incident and its thread link, a frozen one with the reason a person
typed (inert); the Messages tab publishes nothing; the sandbox chat page opens the Home tab and serves the view.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow.tracking import MlflowClient

from bot.incidents.home import Home
from bot.incidents.oncall import STATUS_SHOWN, OnCall
from bot.infra.model_registry import ModelRegistry, Version
from bot.infra.store import ALL, SloState, Store
from bot.slack.home import MAX_BLOCKS
from bot.slack.slack_out import SlackError, SlackOut, make_client
from bot.slo.policy_file import parse_policy
from sandbox.chat import ChatPage
from sandbox.chat.server import app_home_opened_body
from sandbox.model_service import seed_registry
from sandbox.servers import MlflowServer
from sandbox.signing import post_signed
from sandbox.slack_api import FakeSlackAPI
from tests.handler_env import (
    APPROVER,
    MODEL_CHANNEL,
    MODEL_SVC,
    RANKER_SVC,
    SECRET,
    STRANGER,
    HandlerEnv,
    wait_until,
)

HEALTHY_SVC, FROZEN_SVC = "alpha-svc", "search-svc"
OTHER_APPROVER = "U0SOMEONE"
TYPED_REASON = "<!channel> retraining & <@U0STRANGER> says <https://evil.example|click>"
REASON_SHOWN = ("&lt;!channel&gt; retraining &amp; &lt;@U0STRANGER&gt; says "
                "&lt;https://evil.example|click&gt;")


def texts(view: dict[str, Any]) -> list[str]:
    """Each block's mrkdwn / plain text, in order."""
    out = []
    for block in view["blocks"]:
        if "text" in block:
            out.append(block["text"]["text"])
        out.extend(e.get("text", "") for e in block.get("elements") or [])
    return out


def section_of(view: dict[str, Any], service: str) -> str:
    (found,) = [t for t in texts(view) if f"*{service}* —" in t]
    return found


# -- level 1: the domain and the view over a real store ----------------------------------------------------
class CountingRegistry(ModelRegistry):
    """Champion v2 and previous champion v1 for every model, each read counted."""

    def __init__(self) -> None:
        super().__init__(client=None)
        self.reads: list[tuple[str, str]] = []

    def by_alias(self, model: str, alias: str) -> Version | None:
        self.reads.append((model, alias))
        return Version(model, "2" if alias == "champion" else "1", None, {})


def policy_of(count: int) -> str:
    lines = ["evaluate_every: 5s", "services:"]
    for i in range(count):
        name = f"svc-{i:03d}"
        approver = APPROVER if i % 2 == 0 else OTHER_APPROVER
        lines += [f"  {name}:", "    channel: C0SCALE", f"    approvers: [{approver}]", f"    model: {name}-model",
                  f"    rollback: [{{mlflow_alias: {{model: {name}-model}}}}]", "    slos:",
                  f"      - {{name: latency, query: 'max(latency{{service=\"{name}\"}})', above: 0.25}}"]
    return "\n".join(lines) + "\n"


def home_over(store: Store, policy_text: str, registry: CountingRegistry
              ) -> tuple[Home, list[tuple[str, dict[str, Any]]]]:
    policy = parse_policy(policy_text)
    oncall = OnCall(policy=policy, store=store, models=registry, check_approver=lambda *_: None,
                    say=lambda *_: None)
    published: list[tuple[str, dict[str, Any]]] = []
    home = Home(oncall=oncall, is_approver=lambda svc, user: user in svc.approvers,
                publish=lambda user, view: published.append((user, view)),
                permalink=lambda channel, ts: f"https://sandbox.slack.com/archives/{channel}/p{ts.replace('.', '')}")
    return home, published


def open_incident(store: Store, service: str, ts: str) -> int:
    incident = store.open_incident(service=service, trigger="latency", detail={}, baseline={},
                                   breach_started_at=None, channel="C0SCALE")
    assert incident is not None
    store.update_incident(incident.id, message_ts=ts)
    return incident.id


def breach(store: Store, service: str, slo: str, value: float) -> None:
    now = time.time()
    store.put_slo_state(SloState(service, slo, "breach", value, now - 90, now))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    made = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        yield made
    finally:
        made.engine.dispose()


def test_thirty_services_list_the_busy_ones_and_count_the_quiet_ones(store: Store) -> None:
    registry = CountingRegistry()
    home, published = home_over(store, policy_of(30), registry)
    first = open_incident(store, "svc-003", "1700000000.000100")
    open_incident(store, "svc-010", "1700000000.000200")
    breach(store, "svc-007", "latency", 0.91)
    breach(store, "svc-010", "latency", 0.42)  # an incident and a breach: shown as the incident, with the breach
    store.freeze(service="svc-020", reason="retraining", actor=APPROVER)
    store.freeze(service="svc-021", reason="after a rollback", actor="rollback-bot")

    assert home.open(APPROVER)
    ((user, view),) = published
    assert user == APPROVER and view["type"] == "home"
    assert len(view["blocks"]) <= MAX_BLOCKS
    shown = texts(view)
    listed = [t.split("*")[1] for t in shown if t.count("*") >= 2 and " — " in t]
    assert listed == ["svc-003", "svc-010", "svc-007", "svc-020", "svc-021"]  # incidents, breaching, frozen
    assert "*Open incidents* (2)" in " ".join(shown) and "*Breaching now* (1)" in " ".join(shown)
    assert (f"Incident #{first}: :hourglass: Waiting for an approver · "
            "<https://sandbox.slack.com/archives/C0SCALE/p1700000000000100|open the thread>") in section_of(view, "svc-003")
    assert "Breaching: *latency* is 0.42 (target &lt; 0.25)" in section_of(view, "svc-010")
    assert "Frozen since" in section_of(view, "svc-020") and f"by <@{APPROVER}>: retraining" in section_of(view, "svc-020")
    assert "_you approve it_" in section_of(view, "svc-020") and "_you approve it_" not in section_of(view, "svc-003")
    # 25 quiet services, 13 of them the viewer's (even-numbered, minus svc-010 and svc-020)
    assert "25 quiet services (healthy, not frozen), 13 of them yours" in shown[-1]
    assert "you approve 15" in shown[1] and "30 services watched" in shown[1]
    # the registry is read for the listed services only: champion and baseline, two reads each
    assert len(registry.reads) == 2 * 5
    assert "Versions: @champion v2, baseline @previous_champion v1" in section_of(view, "svc-007")


def test_thirty_busy_services_show_a_page_and_say_how_many_more(store: Store) -> None:
    home, published = home_over(store, policy_of(30), CountingRegistry())
    for i in range(30):
        breach(store, f"svc-{i:03d}", "latency", 0.3 + i / 100)
    assert home.open(OTHER_APPROVER)
    ((_, view),) = published
    assert len(view["blocks"]) <= MAX_BLOCKS
    shown = texts(view)
    assert f":red_circle: *Breaching now* ({STATUS_SHOWN})" in shown
    assert f"…and {30 - STATUS_SHOWN} more with an incident, a breach or a freeze" in shown[-1]
    assert "0 quiet services" in shown[-1]


def test_a_small_policy_lists_every_service_with_its_state_and_inert_reason(store: Store) -> None:
    home, published = home_over(store, policy_of(4), CountingRegistry())
    store.freeze(service="svc-002", reason=TYPED_REASON, actor=APPROVER)
    store.freeze(service=ALL, reason="<!here> quarter end", actor=APPROVER)
    home.open(APPROVER)
    ((_, view),) = published
    shown = texts(view)
    assert [t.split("*")[1] for t in shown if " — " in t and t.startswith(":")] == [
        "svc-002", "svc-000", "svc-001", "svc-003"]
    assert section_of(view, "svc-001").startswith(":large_green_circle: *svc-001* — healthy")
    frozen = section_of(view, "svc-002")
    assert REASON_SHOWN in frozen and "<!channel>" not in frozen and "<@U0STRANGER>" not in frozen
    assert "&lt;!here&gt; quarter end" in " ".join(shown) and "<!here>" not in json.dumps(view)
    assert "quiet" not in " ".join(shown)  # all listed: nothing counted


def test_a_failed_thread_link_shows_the_channel_and_a_refused_publish_is_reported(store: Store) -> None:
    home, published = home_over(store, policy_of(2), CountingRegistry())
    open_incident(store, "svc-000", "1700000000.000300")

    def no_link(channel: str, ts: str) -> str:
        raise SlackError("auth.test: invalid_auth", code="invalid_auth")

    home.permalink = no_link
    assert home.open(APPROVER)
    assert "· in <#C0SCALE>" in section_of(published[0][1], "svc-000")

    def refuse(user: str, view: dict[str, Any]) -> None:
        raise SlackError("views.publish: not_enabled", code="not_enabled")

    home.publish = refuse
    assert home.open(APPROVER) is False


# -- the fake Web API's views.publish and SlackOut ---------------------------------------------------------
def test_views_publish_keeps_the_latest_view_per_user_and_checks_it_like_slack() -> None:
    with FakeSlackAPI() as fake:
        slack = SlackOut(make_client("xoxb-home-test", fake.url))
        assert fake.home_view(APPROVER) is None
        slack.publish_home(APPROVER, {"type": "home", "blocks": [{"type": "divider"}]})
        first = fake.home_view(APPROVER)
        assert first is not None and first["type"] == "home" and first["blocks"] == [{"type": "divider"}]
        slack.publish_home(APPROVER, {"type": "home", "blocks": []})
        second = fake.home_view(APPROVER)
        assert second is not None and second["id"] == first["id"] and second["hash"] != first["hash"]
        assert second["blocks"] == [] and fake.home_view(STRANGER) is None
        assert fake.views() == []  # a Home tab is not a modal

        too_many: dict[str, Any] = {"type": "home", "blocks": [{"type": "divider"}] * (MAX_BLOCKS + 1)}
        with pytest.raises(SlackError) as refused:
            slack.publish_home(APPROVER, too_many)
        assert refused.value.code == "invalid_arguments"
        assert "no more than 100 items" in json.dumps(
            requests.post(f"{fake.url}views.publish", json={"user_id": APPROVER, "view": too_many},
                          headers={"Authorization": "Bearer xoxb-home-test"}, timeout=5).json())
        with pytest.raises(SlackError):
            slack.publish_home(APPROVER, {"type": "modal", "blocks": []})
        conflict = requests.post(f"{fake.url}views.publish", timeout=5, headers={"Authorization": "Bearer x"},
                                 json={"user_id": APPROVER, "view": {"type": "home", "blocks": []}, "hash": "1.2"})
        assert conflict.json() == {"ok": False, "error": "hash_conflict"}
        assert fake.home_view(APPROVER) == second  # refused publishes change nothing


def test_permalink_has_slacks_shape_and_reads_auth_test_once() -> None:
    with FakeSlackAPI() as fake:
        slack = SlackOut(make_client("xoxb-home-test", fake.url))
        assert slack.permalink("C0MODELSVC", "1700000000.000100") == \
            "https://sandbox.slack.com/archives/C0MODELSVC/p1700000000000100"
        slack.permalink("C0OTHER", "1700000001.000200")
        assert len(fake.calls("auth.test")) == 1


# -- level 2: signed events through the real app --------------------------------------------------------------
def four_services(client: MlflowClient, prefix: str) -> tuple[str, dict[str, str]]:
    """healthy (another team's), incident, breaching and frozen: each with champion v2, previous v1."""
    approvers = {HEALTHY_SVC: OTHER_APPROVER, MODEL_SVC: APPROVER, RANKER_SVC: APPROVER, FROZEN_SVC: APPROVER}
    models: dict[str, str] = {}
    text = "evaluate_every: 1s\nservices:\n"
    for i, (name, approver) in enumerate(approvers.items()):
        models[name] = model = f"{prefix}-{name}"
        v1, v2 = seed_registry(client, model, versions=2)
        client.set_registered_model_alias(model, "champion", v2)
        client.set_registered_model_alias(model, "previous_champion", v1)
        channel = MODEL_CHANNEL if name == MODEL_SVC else f"C0HOME{i}"
        text += f"""
  {name}:
    channel: {channel}
    approvers: [{approver}]
    model: {model}
    slos:
      - name: auc
        query: 'min(model_auc{{service="{name}"}})'
        below: 0.8
    rollback:
      - mlflow_alias: {{model: {model}, alias: champion, to: previous_champion}}
"""
    return text, models


@pytest.fixture
def env(tmp_path: Path, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str) -> Iterator[HandlerEnv]:
    text, models = four_services(mlflow_client, unique_model)
    with FakeSlackAPI() as slack:
        bench = HandlerEnv(tmp_path, slack, mlflow_client, models, mlflow_url=mlflow_server.url, policy=text)
        bench.start()
        try:
            yield bench
        finally:
            bench.stop()


def open_home(env: HandlerEnv, user: str = APPROVER, tab: str = "home") -> requests.Response:
    body = app_home_opened_body(user_id=user, tab=tab, view=env.slack.home_view(user))
    response = post_signed(env.events_url, SECRET, body, extra_headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    return response


def test_home_tab_shows_each_service_state_for_the_viewer(env: HandlerEnv) -> None:
    incident, _ = env.open_warning(MODEL_SVC)
    env.command(f"freeze {FROZEN_SVC} {TYPED_REASON}")  # the reason as a person typed it
    assert wait_until(lambda: env.store.frozen(FROZEN_SVC), "the freeze").reason == TYPED_REASON
    now = time.time()
    env.store.put_slo_state(SloState(RANKER_SVC, "auc", "breach", 0.61, now - 120, now))

    open_home(env, tab="messages")  # the Messages tab: nothing to publish
    open_home(env)
    call = env.slack.wait_for(lambda c: c.method == "views.publish")
    assert call.params["user_id"] == APPROVER
    assert [c.params["user_id"] for c in env.slack.calls("views.publish")] == [APPROVER]
    view = env.slack.home_view(APPROVER)
    assert view is not None and view["type"] == "home"

    assert section_of(view, HEALTHY_SVC).startswith(f":large_green_circle: *{HEALTHY_SVC}* — healthy\n")
    assert "Versions: @champion v2, baseline @previous_champion v1" in section_of(view, HEALTHY_SVC)
    ranker = section_of(view, RANKER_SVC)
    assert ranker.startswith(f":red_circle: *{RANKER_SVC}* — breaching · _you approve it_")
    assert "Breaching: *auc* is 0.61 (target &gt; 0.8) since " in ranker
    model = section_of(view, MODEL_SVC)
    assert incident.message_ts
    link = f"https://sandbox.slack.com/archives/{MODEL_CHANNEL}/p{incident.message_ts.replace('.', '')}"
    assert model.startswith(f":rotating_light: *{MODEL_SVC}* — incident · _you approve it_")
    assert f"Incident #{incident.id}: :hourglass: Requested by <@{APPROVER}>" in model
    assert f"<{link}|open the thread>" in model
    frozen = section_of(view, FROZEN_SVC)
    assert frozen.startswith(f":ice_cube: *{FROZEN_SVC}* — frozen · _you approve it_")
    assert f"by <@{APPROVER}>: {REASON_SHOWN}" in frozen
    assert "<!channel>" not in json.dumps(view) and "<@U0STRANGER>" not in json.dumps(view)
    assert "4 services watched, you approve 3" in " ".join(texts(view))

    # Opened again after the incident was dismissed: published afresh, the incident gone from it.
    assert env.runtime.bot.incidents.dismiss(incident.id, APPROVER).ok
    open_home(env)
    env.slack.wait_for(lambda c: c.method == "views.publish" and "open the thread" not in json.dumps(c.params["view"]))
    assert section_of(env.slack.home_view(APPROVER) or {}, MODEL_SVC).startswith(
        f":large_green_circle: *{MODEL_SVC}* — healthy")


def test_another_viewer_sees_every_service_marked_as_theirs_or_not(env: HandlerEnv) -> None:
    open_home(env, user=OTHER_APPROVER)
    env.slack.wait_for(lambda c: c.method == "views.publish" and c.params["user_id"] == OTHER_APPROVER)
    view = env.slack.home_view(OTHER_APPROVER)
    assert view is not None
    assert "_you approve it_" in section_of(view, HEALTHY_SVC)
    assert all("_you approve it_" not in section_of(view, s) for s in (MODEL_SVC, RANKER_SVC, FROZEN_SVC))


def test_url_verification_is_answered_with_the_challenge(env: HandlerEnv) -> None:
    body = json.dumps({"token": "t", "challenge": "home-challenge-123", "type": "url_verification"})
    response = post_signed(env.events_url, SECRET, body, extra_headers={"Content-Type": "application/json"})
    assert response.status_code == 200 and "home-challenge-123" in response.text


def test_chat_page_opens_the_home_tab_and_serves_its_view(env: HandlerEnv) -> None:
    page = ChatPage(env.slack, events_url=env.events_url, secret=SECRET, user=APPROVER, user_name="approver",
                    channel=MODEL_CHANNEL, channel_name="model-svc")
    with page:
        assert requests.get(f"{page.url}/sandbox/home", timeout=5).json() == {"ok": True, "view": None}
        opened = requests.post(f"{page.url}/sandbox/home", json={"tab": "home"}, timeout=10)
        assert opened.json() == {"ok": True}
        env.slack.wait_for(lambda c: c.method == "views.publish" and c.params["user_id"] == APPROVER)
        served = requests.get(f"{page.url}/sandbox/home", timeout=5).json()["view"]
        assert served["type"] == "home" and section_of(served, HEALTHY_SVC)
        assert requests.get(f"{page.url}/sandbox/state", timeout=5).json()["home"] == served
        assert requests.post(f"{page.url}/sandbox/home", json={"tab": "about"}, timeout=5).status_code == 400
        html = requests.get(page.url, timeout=5).text
        assert 'id="home-link"' in html and 'id="home-body"' in html
        script = requests.get(f"{page.url}/chat/app.js", timeout=5).text
        assert '"/sandbox/home"' in script and "threadOfLink" in script
