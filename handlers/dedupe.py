"""Exactly once per Slack request: a global middleware that answers a retry (X-Slack-Retry-Num) or a replayed
signed request with a plain 200 and does nothing else.

Runs after Bolt's signature verification, so only genuine requests claim a key. The key (trigger_id, or the
clicked action's action_ts) is claimed in the store, so the guarantee holds across threads and processes;
the domain's conditional transitions hold it once more for approvals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slack_bolt import App, BoltRequest, BoltResponse

from bot.infra.store import Store

log = logging.getLogger(__name__)


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
        key = request_key(body)
        if key is None or store.claim_request(key):
            next_()
            return None
        retry = next(iter(request.headers.get("x-slack-retry-num") or ()), "none")
        log.info("ignored a repeated Slack request (%s, retry %s)", key.split(":")[0], retry)
        return BoltResponse(status=200, body="", headers={"x-slack-no-retry": "1"})
