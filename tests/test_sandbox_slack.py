"""Tests for the sandbox Slack pieces: the HTTP fake Web API driven by a real slack_sdk WebClient, the
signed request builders checked with slack_sdk's SignatureVerifier, and the chat page's server (Slack's side
of `rollback-bot demo`) sending a real bot signed commands, clicks and modal submissions."""

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
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier

from sandbox import signing
from sandbox.chat import ChatPage
from sandbox.servers import MlflowServer
from sandbox.slack_api import FakeSlackAPI
from tests import handler_env
from tests.handler_env import HandlerEnv, seed_models

CHANNEL = "C0ROLLBACK"
SECRET = "sandbox-signing-secret"
BLOCKS: list[dict[str, Any]] = [
    {"type": "section", "text": {"type": "mrkdwn", "text": "*fraud-model* breaches its SLO"}},
    {"type": "actions", "block_id": "actions", "elements": [
        {"type": "button", "action_id": "rollback_approve", "value": "req-1",
         "text": {"type": "plain_text", "text": "Approve rollback"}},
    ]},
]


@pytest.fixture
def fake() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI(users_by_group={"S0ONCALL": ["U0ALICE", "U0BOB"]}) as api:
        yield api


@pytest.fixture
def client(fake: FakeSlackAPI) -> WebClient:
    return WebClient(base_url=fake.url, token="xoxb-test")


def test_url_points_at_localhost_api(fake: FakeSlackAPI) -> None:
    assert fake.url.startswith("http://127.0.0.1:") and fake.url.endswith("/api/")


def test_auth_test_answers_like_bolt_needs(client: WebClient) -> None:
    resp = client.auth_test()
    assert (resp["user_id"], resp["bot_id"], resp["team_id"]) == ("U0ROLLBOT", "B0ROLLBOT", "T0SANDBOX")


def test_post_message_with_blocks_thread_reply_and_update(client: WebClient, fake: FakeSlackAPI) -> None:
    parent = client.chat_postMessage(channel=CHANNEL, text="fraud-model breaches its SLO", blocks=BLOCKS)
    reply = client.chat_postMessage(channel=CHANNEL, thread_ts=parent["ts"], text="rolling back")
    assert parent["ok"] and parent["channel"] == CHANNEL and float(reply["ts"]) > float(parent["ts"])

    call = fake.calls("chat.postMessage")[0]
    assert call.params["blocks"] == BLOCKS and call.headers["Authorization"] == "Bearer ***"
    assert "xoxb-test" not in json.dumps([c.headers for c in fake.calls()] + [c.params for c in fake.calls()])

    assert [m["ts"] for m in fake.messages(CHANNEL)] == [parent["ts"]]
    assert [m["text"] for m in fake.thread(CHANNEL, parent["ts"])] == ["rolling back"]
    assert fake.message(CHANNEL, parent["ts"])["blocks"] == BLOCKS

    updated = client.chat_update(channel=CHANNEL, ts=parent["ts"], text="rolled back", blocks=BLOCKS[:1])
    assert (updated["ts"], updated["text"]) == (parent["ts"], "rolled back")
    assert fake.message(CHANNEL, parent["ts"])["blocks"] == BLOCKS[:1]

    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel=CHANNEL, ts="1.000001", text="nope")
    assert err.value.response["error"] == "message_not_found"


def test_form_query_string_and_response_url_requests_are_decoded(fake: FakeSlackAPI) -> None:
    headers = {"Authorization": "Bearer xoxb-test"}
    data = {"channel": CHANNEL, "text": "hi", "blocks": json.dumps(BLOCKS)}
    body = requests.post(fake.url + "chat.postMessage", data=data, headers=headers, timeout=5).json()
    assert body["ok"] and fake.message(CHANNEL, body["ts"])["blocks"] == BLOCKS
    requests.post(fake.url + "conversations.info?channel=" + CHANNEL, headers=headers, timeout=5)
    assert fake.calls("conversations.info")[0].params == {"channel": CHANNEL}
    assert requests.post(fake.url + "auth.test", timeout=5).json() == {"ok": False, "error": "not_authed"}
    assert requests.post(fake.response_url, json={"text": "done"}, timeout=5).text == "ok"
    assert fake.calls("response_url")[0].params == {"text": "done"}


def test_ephemeral_usergroups_and_views(client: WebClient, fake: FakeSlackAPI) -> None:
    eph = client.chat_postEphemeral(channel=CHANNEL, user="U0ALICE", text="only you can see this")
    assert eph["message_ts"]
    assert [e["text"] for e in fake.ephemerals(user="U0ALICE")] == ["only you can see this"]
    assert fake.ephemerals(channel=CHANNEL, user="U0BOB") == [] and fake.messages(CHANNEL) == []

    assert client.usergroups_users_list(usergroup="S0ONCALL")["users"] == ["U0ALICE", "U0BOB"]
    with pytest.raises(SlackApiError) as err:
        client.usergroups_users_list(usergroup="S0NOPE")
    assert err.value.response["error"] == "no_such_subteam"

    view = {"type": "modal", "callback_id": "rollback_reason", "private_metadata": "req-1",
            "title": {"type": "plain_text", "text": "Rollback"}, "blocks": []}
    opened = client.views_open(trigger_id="1.2.abc", view=view)["view"]
    assert opened["id"].startswith("V") and opened["callback_id"] == "rollback_reason"
    client.views_update(view_id=opened["id"], view={**view, "private_metadata": "req-2"})
    assert [v["private_metadata"] for v in fake.views()] == ["req-2"]


def test_files_upload_v2_round_trip(client: WebClient, fake: FakeSlackAPI) -> None:
    parent = client.chat_postMessage(channel=CHANNEL, text="rollback report")
    resp = client.files_upload_v2(channel=CHANNEL, thread_ts=parent["ts"], content="step 1: ok\n",
                                  filename="rollback.log", title="Rollback log")
    assert resp["file"]["title"] == "Rollback log"
    [upload] = fake.uploads()
    assert upload["content"] == b"step 1: ok\n"
    assert (upload["channel_id"], upload["thread_ts"]) == (CHANNEL, parent["ts"])
    assert fake.thread(CHANNEL, parent["ts"])[0]["files"][0]["id"] == upload["id"]
    methods = [c.method for c in fake.calls()]
    assert methods[-2:] == ["files.getUploadURLExternal", "files.completeUploadExternal"]


def test_rate_limit_retry_after_is_honoured(client: WebClient, fake: FakeSlackAPI) -> None:
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=1))
    fake.fail_next("chat.postMessage", status=429, retry_after=1)
    assert client.chat_postMessage(channel=CHANNEL, text="after the limit")["ok"]
    first, second = fake.calls("chat.postMessage")
    assert second.at - first.at >= 1.0
    assert [m["text"] for m in fake.messages(CHANNEL)] == ["after the limit"]


def test_fail_next_server_error_and_ok_false(client: WebClient, fake: FakeSlackAPI) -> None:
    fake.fail_next("chat.update", status=500)
    fake.fail_next("chat.postMessage", error="channel_not_found", times=2)
    for _ in range(2):
        with pytest.raises(SlackApiError) as err:
            client.chat_postMessage(channel=CHANNEL, text="x")
        assert err.value.response.status_code == 200 and err.value.response["error"] == "channel_not_found"
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel=CHANNEL, ts="1.0", text="x")
    assert err.value.response.status_code == 500
    assert client.chat_postMessage(channel=CHANNEL, text="third time")["ok"]


def test_wait_for_blocks_until_a_matching_call_and_times_out_readably(
    client: WebClient, fake: FakeSlackAPI
) -> None:
    later = threading.Timer(0.2, lambda: client.chat_postMessage(channel=CHANNEL, text="done"))
    later.start()
    call = fake.wait_for(lambda c: c.method == "chat.postMessage" and c.params["text"] == "done", timeout=5)
    later.join()
    assert call.params["channel"] == CHANNEL
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"chat\.postMessage .*done"):
        fake.wait_for(lambda c: c.method == "views.open", timeout=0.2)
    assert time.monotonic() - started < 2


def test_signed_requests_are_accepted_and_tampering_is_rejected() -> None:
    verifier = SignatureVerifier(SECRET)
    bodies = [
        signing.slash_command_body(text="fraud-model", user_id="U0ALICE", channel_id=CHANNEL),
        signing.block_actions_body(user_id="U0ALICE", channel_id=CHANNEL, message_ts="1.000100",
                                   action_id="rollback_approve", value="req-1", message={"blocks": BLOCKS}),
        signing.view_submission_body(user_id="U0ALICE", callback_id="rollback_reason", private_metadata="r",
                                     values={"reason": {"text": {"type": "plain_text_input", "value": "x"}}}),
    ]
    for body in bodies:
        headers = signing.signed_headers(SECRET, body)
        assert verifier.is_valid_request(body, headers)
        assert not verifier.is_valid_request(body.replace("U0ALICE", "U0MALLORY"), headers)
    stale = signing.signed_headers(SECRET, bodies[0], timestamp=int(time.time()) - 600)
    assert not verifier.is_valid_request(bodies[0], stale)


def test_signed_bodies_have_slacks_shape() -> None:
    form = parse_qs(signing.slash_command_body(text="fraud-model v12", user_id="U0ALICE", channel_id=CHANNEL))
    assert form["command"] == ["/rollback"] and form["text"] == ["fraud-model v12"]
    assert {"token", "team_domain", "api_app_id", "response_url", "trigger_id"} <= form.keys()

    body = signing.block_actions_body(user_id="U0ALICE", channel_id=CHANNEL, message_ts="1.000100",
                                      action_id="rollback_approve", value="req-1", thread_ts="1.000050",
                                      message={"ts": "1.000100", "blocks": BLOCKS})
    payload = json.loads(parse_qs(body)["payload"][0])
    assert payload["type"] == "block_actions" and payload["container"]["channel_id"] == CHANNEL
    assert payload["message"]["thread_ts"] == "1.000050"
    assert payload["actions"][0]["text"]["text"] == "Approve rollback"

    values = {"reason": {"text": {"type": "plain_text_input", "value": "bad"}}}
    body = signing.view_submission_body(user_id="U0ALICE", callback_id="cb", private_metadata="m",
                                        values=values)
    view = json.loads(parse_qs(body)["payload"][0])["view"]
    assert (view["type"], view["callback_id"], view["state"]["values"]) == ("modal", "cb", values)


# -- response_url and ack bodies, shown as Slack shows them ----------------------------------------------

def test_response_url_posts_show_ephemeral_in_channel_and_replacing(client: WebClient, fake: FakeSlackAPI) -> None:
    parent = client.chat_postMessage(channel=CHANNEL, text="warning", blocks=BLOCKS)
    url = fake.response_url_for(CHANNEL, "U0ALICE", message_ts=parent["ts"])
    assert url.startswith(fake.response_url + "?")
    assert requests.post(url, json={"text": "only for alice"}, timeout=5).text == "ok"
    assert [e["text"] for e in fake.ephemerals(channel=CHANNEL, user="U0ALICE")] == ["only for alice"]
    requests.post(url, json={"text": "everyone sees this", "response_type": "in_channel"}, timeout=5)
    assert [m["text"] for m in fake.messages(CHANNEL)] == ["warning", "everyone sees this"]
    requests.post(url, json={"text": "handled", "replace_original": True}, timeout=5)
    assert fake.message(CHANNEL, parent["ts"])["text"] == "handled"
    requests.post(url, json={"delete_original": "true"}, timeout=5)
    assert [m["text"] for m in fake.messages(CHANNEL)] == ["everyone sees this"]
    fake.respond(CHANNEL, "U0BOB", {"text": "an ack body"})  # what a slash command's ack shows
    assert [e["text"] for e in fake.ephemerals(user="U0BOB")] == ["an ack body"]


def test_signed_click_from_an_ephemeral_message_carries_no_message() -> None:
    body = signing.block_actions_body(user_id="U0ALICE", channel_id=CHANNEL, message_ts="1.000100",
                                      action_id="rollback_approve", value="req-1", ephemeral=True)
    payload = json.loads(parse_qs(body)["payload"][0])
    assert payload["container"]["is_ephemeral"] is True and "message" not in payload


# -- the chat page (Slack's side of the sandbox) against the real bot --------------------------------------

@pytest.fixture
def bench(tmp_path: Path, fake: FakeSlackAPI, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
          unique_model: str) -> Iterator[HandlerEnv]:
    env = HandlerEnv(tmp_path, fake, mlflow_client, seed_models(mlflow_client, unique_model),
                     mlflow_url=mlflow_server.url)
    env.start()
    try:
        yield env
    finally:
        env.stop()


def _page(fake: FakeSlackAPI, bench: HandlerEnv, channel: str) -> ChatPage:
    return ChatPage(fake, events_url=bench.events_url, secret=handler_env.SECRET, user=handler_env.APPROVER,
                    user_name="approver", channel=channel, channel_name="ranker-svc",
                    status=lambda: [("auto-promotion", "on", "")])


def test_chat_page_plays_slack_for_command_click_and_typed_confirm_modal(
    fake: FakeSlackAPI, bench: HandlerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    sent: list[str] = []  # the signed bodies the page forwards to the bot

    def post_signed(url: str, secret: str, body: str, **kwargs: Any) -> requests.Response:
        sent.append(body)
        return real_post_signed(url, secret, body, **kwargs)

    real_post_signed = signing.post_signed
    monkeypatch.setattr(signing, "post_signed", post_signed)
    page = _page(fake, bench, handler_env.RANKER_CHANNEL)
    page.observe = lambda who, what: seen.append(what)
    with page:
        post = _poster(page.url)
        assert post("command", {"text": "/rollback ranker-svc"}).json() == {"ok": True}
        # The command's answer reaches its response_url when the listener ends, just after the warning is posted.
        state = handler_env.wait_until(lambda: (s := _state(page.url))["messages"] and any(
            _buttons(m) for m in s["messages"]) and any(
            "Opening a rollback request" in m["text"] for m in s["messages"] if m.get("ephemeral")) and s,
            "the warning and the command's answer on the page")
        acks = [m["text"] for m in state["messages"] if m.get("ephemeral")]
        assert any("Opening a rollback request for *ranker-svc*" in t for t in acks)  # via response_url, ephemeral
        assert state["status"] == [["auto-promotion", "on", ""]] and state["me"]["id"] == handler_env.APPROVER
        warning = next(m for m in state["messages"] if _buttons(m))
        assert "rollback_approve" in _buttons(warning)

        # confirm: typed, so the click opens the bot's modal through views.open with the click's trigger_id
        assert post("action", {"channel": handler_env.RANKER_CHANNEL, "ts": warning["ts"],
                               "action_id": "rollback_approve"}).json() == {"ok": True}
        view = handler_env.wait_until(lambda: _state(page.url)["view"], "the typed-confirm modal")
        assert view["callback_id"] == "rollback_confirm"
        command = parse_qs(sent[0])
        assert (command["command"], command["text"], command["user_id"]) == (["/rollback"], ["ranker-svc"],
                                                                              [handler_env.APPROVER])
        assert {"token", "team_id", "channel_id", "response_url", "trigger_id"} <= command.keys()
        payload = json.loads(parse_qs(sent[1])["payload"][0])
        assert payload["trigger_id"] == fake.calls("views.open")[0].params["trigger_id"]
        assert payload["container"]["message_ts"] == warning["ts"] and payload["message"]["ts"] == warning["ts"]
        assert payload["response_url"].startswith(fake.response_url)

        wrong = post("submit", {"view_id": view["id"], "values": {"confirm_service": {"typed_service": "nope"}}})
        assert wrong.json() == {"ok": False, "errors": {"confirm_service": "Type ranker-svc exactly to confirm."}}
        assert _state(page.url)["view"]["id"] == view["id"]  # still open, like Slack after response_action errors
        submitted = json.loads(parse_qs(sent[-1])["payload"][0])
        assert submitted["type"] == "view_submission" and submitted["view"]["blocks"] == view["blocks"]
        right = post("submit", {"view_id": view["id"], "values": {"confirm_service": {"typed_service": "ranker-svc"}}})
        assert right.json() == {"ok": True} and _state(page.url)["view"] is None
        handler_env.wait_until(lambda: bench.champion(handler_env.RANKER_SVC) == handler_env.GOOD_VERSION,
                               "the alias flip after the typed confirmation")
        _plan_done(fake, handler_env.RANKER_CHANNEL, warning["ts"])
    assert seen[0] == "types `/rollback ranker-svc`"  # acked at once; the answer came through the response_url
    assert 'clicks "Roll back"' in seen and 'submits the "Confirm rollback" modal' in seen


def test_chat_page_refuses_what_slack_never_sends(fake: FakeSlackAPI, bench: HandlerEnv) -> None:
    with _page(fake, bench, handler_env.MODEL_CHANNEL) as page:
        post = _poster(page.url)
        _, warning = bench.open_warning(handler_env.MODEL_SVC)
        click = {"channel": handler_env.MODEL_CHANNEL, "ts": warning["ts"], "action_id": "rollback_approve"}
        refused = post("action", click)  # Block Kit confirm dialog: Slack sends the click only once confirmed
        assert refused.status_code == 400 and "confirm" in refused.json()["error"]
        assert post("action", {**click, "action_id": "no_such_button"}).status_code == 400
        assert requests.post(f"{page.url}/sandbox/action", data=json.dumps(click), timeout=5,
                             headers={"Content-Type": "text/plain"}).status_code == 415
        assert requests.get(f"{page.url}/sandbox/state", headers={"Host": "evil.example:80"}, timeout=5).status_code == 403
        missing = post("action", {"channel": handler_env.MODEL_CHANNEL, "ts": warning["ts"]})
        assert missing.status_code == 400 and "'action_id'" in missing.json()["error"]
        assert post("submit", {"view_id": "V1", "values": {"block": "not a dict"}}).status_code == 400
        assert post("command", {"text": "hello bot"}).json() == {"ok": False, "error": "not_a_command"}
        assert post("command", {"text": "/deploy now"}).json() == {"ok": False, "error": "invalid_command"}
        texts = [e["text"] for e in fake.ephemerals(user=handler_env.APPROVER)]
        assert any("type a slash command" in t for t in texts) and any("`/deploy` is not a valid" in t for t in texts)
        assert post("action", {**click, "confirmed": True}).json() == {"ok": True}
        handler_env.wait_until(lambda: bench.champion() == handler_env.GOOD_VERSION, "the confirmed rollback")
        _plan_done(fake, handler_env.MODEL_CHANNEL, warning["ts"])
        page_html = requests.get(page.url + "/", timeout=5)
        assert page_html.ok and "/chat/app.js" in page_html.text
        assert requests.get(page.url + "/chat/app.js", timeout=5).headers["Content-Type"].startswith("text/javascript")


def _poster(url: str) -> Any:
    return lambda path, body: requests.post(f"{url}/sandbox/{path}", json=body, timeout=15)


def _state(url: str) -> dict[str, Any]:
    return dict(requests.get(f"{url}/sandbox/state", timeout=5).json())


def _buttons(message: dict[str, Any]) -> list[str]:
    return [e.get("action_id") for b in message.get("blocks") or [] for e in b.get("elements") or []
            if e.get("type") == "button"]


def _plan_done(fake: FakeSlackAPI, channel: str, ts: str) -> None:
    """Wait until the warning says the plan ran (verifying), so no step is still posting when the test ends."""
    handler_env.wait_until(lambda: "verifying" in json.dumps(fake.message(channel, ts).get("blocks")),
                           "the warning's verifying status", timeout=30)
