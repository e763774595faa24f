"""Signed Slack requests (slash commands, block actions, view submissions), used by the tests and the demo.

Bodies are shaped and form-encoded like the ones Slack posts to the app's request URL, and signed with the
app's signing secret through slack_sdk's `SignatureVerifier`, so the bot's signature check (handlers.slack_http)
accepts them. Feed them to `app.dispatch(BoltRequest(body=..., headers=...))` or post them with `post_signed`.
Defaults only point at 127.0.0.1; pass `FakeSlackAPI.response_url` as `response_url` to record `respond()`.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import requests
from slack_sdk.signature import SignatureVerifier

TEAM_ID = "T0SANDBOX"
TEAM_DOMAIN = "sandbox"
APP_ID = "A0SANDBOX"
VERIFICATION_TOKEN = "sandbox-verification-token"  # deprecated by Slack, still sent; Bolt ignores it
RESPONSE_URL = "http://127.0.0.1:9/response"  # nothing listens: a default that never leaves the machine


def new_trigger_id() -> str:
    """A fresh trigger_id, unique per request like Slack's (the bot uses it to spot retries and replays)."""
    return f"{int(time.time())}.1000000000001.{secrets.token_hex(16)}"


def slash_command_body(
    *, command: str = "/rollback", text: str, user_id: str, channel_id: str, team_id: str = TEAM_ID,
    user_name: str | None = None, trigger_id: str | None = None, response_url: str = RESPONSE_URL,
) -> str:
    """The form-encoded body Slack posts for a slash command."""
    return urlencode({
        "token": VERIFICATION_TOKEN, "team_id": team_id, "team_domain": TEAM_DOMAIN,
        "channel_id": channel_id, "channel_name": _channel_name(channel_id),
        "user_id": user_id, "user_name": user_name or _name(user_id), "command": command, "text": text,
        "api_app_id": APP_ID, "is_enterprise_install": "false", "response_url": response_url,
        "trigger_id": trigger_id or new_trigger_id(),
    })


def block_actions_body(
    *, user_id: str, channel_id: str, message_ts: str, action_id: str, value: str, block_id: str = "actions",
    message: dict[str, Any] | None = None, thread_ts: str | None = None, trigger_id: str | None = None,
    response_url: str = RESPONSE_URL, ephemeral: bool = False,
) -> str:
    """The form-encoded `payload=<json>` Slack posts when a user clicks a button in a channel message.

    `message` is the clicked message as the fake Web API stores it; without one a minimal message is sent.
    The button's label is taken from the message's blocks when the action_id is found there. A click in an
    ephemeral message (`ephemeral=True`) says so in the container and, as in Slack, carries no message.
    """
    msg = dict(message) if message is not None else {"type": "message", "ts": message_ts, "text": ""}
    container: dict[str, Any] = {"type": "message", "message_ts": message_ts, "channel_id": channel_id,
                                 "is_ephemeral": ephemeral}
    if thread_ts:
        container["thread_ts"] = thread_ts
        msg.setdefault("thread_ts", thread_ts)
    payload: dict[str, Any] = {
        "type": "block_actions", "user": _user(user_id), "api_app_id": APP_ID, "token": VERIFICATION_TOKEN,
        "container": container, "trigger_id": trigger_id or new_trigger_id(),
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "enterprise": None, "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": _channel_name(channel_id)}, "message": msg,
        "state": {"values": {}}, "response_url": response_url,
        "actions": [{
            "action_id": action_id, "block_id": block_id, "value": value, "type": "button",
            "text": {"type": "plain_text", "text": _button_label(msg, action_id), "emoji": True},
            "action_ts": f"{time.time():.6f}",
        }],
    }
    if ephemeral:
        del payload["message"]
    return urlencode({"payload": json.dumps(payload)})


def view_submission_body(
    *, user_id: str, callback_id: str, private_metadata: str, values: dict[str, Any],
    view_id: str = "V0SANDBOX", trigger_id: str | None = None, opened: dict[str, Any] | None = None,
) -> str:
    """The form-encoded `payload=<json>` Slack posts when a user submits a modal.

    `values` has Slack's state.values shape:
    `{block_id: {action_id: {"type": "plain_text_input", "value": "..."}}}`. `opened` is the view as the
    fake Web API holds it (from views.open): its title, blocks, buttons and hash are sent back, as Slack does.
    """
    view: dict[str, Any] = {
        "id": view_id, "team_id": TEAM_ID, "type": "modal", "callback_id": callback_id,
        "private_metadata": private_metadata, "state": {"values": values}, "blocks": [], "hash": "1.sandbox",
        "title": {"type": "plain_text", "text": "Rollback"}, "external_id": "", "previous_view_id": None,
        "root_view_id": view_id, "app_id": APP_ID, "app_installed_team_id": TEAM_ID, "bot_id": "B0ROLLBOT",
    }
    for key in ("blocks", "hash", "title", "submit", "close", "external_id", "previous_view_id", "root_view_id"):
        if opened and key in opened:
            view[key] = opened[key]
    payload: dict[str, Any] = {
        "type": "view_submission", "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN}, "user": _user(user_id),
        "api_app_id": APP_ID, "token": VERIFICATION_TOKEN, "trigger_id": trigger_id or new_trigger_id(),
        "view": view,
        "response_urls": [], "enterprise": None, "is_enterprise_install": False,
    }
    return urlencode({"payload": json.dumps(payload)})


def signed_headers(secret: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    """Headers Slack sends with `body`, signed with the app's signing secret (timestamp defaults to now)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    if signature is None:  # only when timestamp is None, which cannot happen here
        raise ValueError("slack_sdk produced no signature")
    return {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": signature}


def post_signed(
    url: str, secret: str, body: str, *, timeout: float = 10, extra_headers: dict[str, str] | None = None
) -> requests.Response:
    """POST `body` to the app's request URL with Slack's headers (plus e.g. X-Slack-Retry-Num)."""
    headers = {**signed_headers(secret, body), **(extra_headers or {})}
    return requests.post(url, data=body.encode("utf-8"), headers=headers, timeout=timeout)


def _user(user_id: str) -> dict[str, str]:
    return {"id": user_id, "username": _name(user_id), "name": _name(user_id), "team_id": TEAM_ID}


def _name(user_id: str) -> str:
    return f"user-{user_id.lower()}"


def _channel_name(channel_id: str) -> str:
    return f"sandbox-{channel_id.lower()}"  # the name FakeSlackAPI's conversations.info answers


def _button_label(message: dict[str, Any], action_id: str) -> str:
    for block in message.get("blocks") or []:
        for element in block.get("elements") or []:
            if element.get("action_id") == action_id and isinstance(element.get("text"), dict):
                return str(element["text"].get("text", action_id))
    return action_id
