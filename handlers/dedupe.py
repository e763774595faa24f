"""Exactly once per Slack request: the one place that decides "a retry or a replay does nothing".

It owns the three things about repeats, and nothing else in handlers/ restates them:

- `request_key(body)`: the same for a retry or a replay of one request, different between two requests
  (trigger_id, and for a click the clicked action's action_ts);
- the claim: `register(app, store)` adds a Bolt global middleware that claims the key in the store
  (`Store.claim_request`, so the guarantee holds across threads and processes) and answers a request whose key
  is already claimed with a plain 200 and X-Slack-No-Retry, running nothing; the domain's conditional
  transitions hold it once more for approvals;
- what a retry is: Slack's X-Slack-Retry-Num header (`is_retry`, `NO_RETRY`). handlers.slack_http, which acks
  clicks and commands before Bolt sees them, asks `is_retry` to add X-Slack-No-Retry to its early ack;
- the inbox's claim: a click or command over HTTP that handlers.slack_http stored in the store's inbox before
  acking it (bot.infra.store.inbox) was claimed there, by the inbox row's UNIQUE key, and reaches Bolt with
  the internal `INBOX_HEADER` naming its row. The middleware lets it through without `claim_request`, so
  a request re-delivered from the inbox by another replica (its first replica died after the ack) still runs.
  Only handlers.slack_http sets that header, after the signature check, and it removes any copy of it a
  request arrived with, so nothing from outside can skip the claim.

The middleware runs inside Bolt, so it covers both ways a request arrives exactly once: over HTTP (after
handlers.slack_http has verified the signature, so only genuine requests claim a key) and over Socket Mode's
WebSocket (slack_bolt's SocketModeHandler mirrors a redelivery's retry_attempt as X-Slack-Retry-Num).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from slack_bolt import App, BoltRequest, BoltResponse

from bot.infra.store import Store

log = logging.getLogger(__name__)

RETRY_HEADER = "x-slack-retry-num"  # lower-case, as both Bolt and handlers.slack_http key their headers
NO_RETRY = ("X-Slack-No-Retry", "1")  # "got it, do not send this one again"
INBOX_HEADER = "x-rollback-inbox"  # set by handlers.slack_http only: "claimed by inbox row <id>"


def is_retry(headers: Mapping[str, str | Sequence[str]]) -> bool:
    """Whether Slack marked this request as a retry of one it already sent (headers keyed lower-case)."""
    return RETRY_HEADER in headers


def request_key(body: dict[str, Any]) -> str | None:
    """A key that is the same for a retry or replay of one request and differs between two requests."""
    kind = body.get("type")
    if kind == "block_actions":
        actions = body.get("actions") or [{}]
        user = (body.get("user") or {}).get("id", "")
        return f"action:{user}:{actions[0].get('action_id')}:{actions[0].get('action_ts')}:{body.get('trigger_id')}"
    if body.get("command"):
        return f"command:{body.get('trigger_id')}" if body.get("trigger_id") else None
    if kind == "view_submission":
        return f"view:{(body.get('view') or {}).get('id')}:{body.get('trigger_id')}"
    return None


def register(app: App, store: Store) -> None:
    @app.middleware
    def once(body: dict[str, Any], request: BoltRequest, next_: Callable[[], None]) -> BoltResponse | None:
        if INBOX_HEADER in request.headers:  # claimed by its inbox row (handlers.slack_http), here or elsewhere
            next_()
            return None
        key = request_key(body)
        if key is None or store.claim_request(key):
            next_()
            return None
        retry = next(iter(request.headers.get(RETRY_HEADER) or ()), "none")
        log.info("ignored a repeated Slack request (%s, retry %s)", key.split(":")[0], retry)
        name, value = NO_RETRY
        return BoltResponse(status=200, body="", headers={name.lower(): value})
