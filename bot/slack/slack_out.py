"""Everything the bot says in Slack goes through here: posts, thread replies, in-place updates, ephemerals,
modals, file uploads (files_upload_v2), user-group lookups and a slash command's answer to its response_url.

Called by bot.slack.timeline, bot.slack.chart, bot.incidents.approvers (user groups), handlers.slack_http (response_url
answers) and handlers/ (ephemeral replies, the typed-confirm modal) with a slack_sdk WebClient whose base_url comes from
SLACK_API_URL (tests and the demo point it at sandbox.slack_api). 429s are retried after Retry-After by
slack_sdk's handler, 5xx only for idempotent calls; Slack calls are counted by method for /metrics. Errors
become SlackError, which the callers record in the incident's timeline instead of losing. Every string of every
call (texts, blocks, views) and of every SlackError goes through bot.infra.redact first: no URL credentials or
configured secrets reach Slack.
"""

from __future__ import annotations

from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.webhook import WebhookClient

from bot.infra import metrics, redact
from bot.slack.blocks import escape


class SlackError(Exception):
    """A Slack Web API call failed after its retries."""


def make_client(token: str, base_url: str | None = None) -> WebClient:
    client = WebClient(token=token, base_url=base_url or WebClient.BASE_URL, timeout=10)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=3))
    return client


def idempotent_copy(client: WebClient) -> WebClient:
    """The same client, also retrying 5xx answers and dropped connections: only for calls that are safe to
    repeat (reads, in-place updates). A repeated chat.postMessage could post a message twice, so posts are not
    retried this way; an unposted timeline event is posted again on the next cycle instead."""
    copy = WebClient(token=client.token, base_url=client.base_url, timeout=client.timeout)
    copy.retry_handlers.extend([RateLimitErrorRetryHandler(max_retry_count=3), ServerErrorRetryHandler(max_retry_count=2),
                                ConnectionErrorRetryHandler(max_retry_count=2)])
    return copy


IDEMPOTENT = frozenset({"chat.update", "usergroups.users.list"})


class SlackOut:
    def __init__(self, client: WebClient) -> None:
        self.client = client
        self.retrying = idempotent_copy(client)

    def _call(self, method: str, **params: Any) -> dict[str, Any]:
        metrics.SLACK_CALLS.labels(method=method).inc()
        client = self.retrying if method in IDEMPOTENT else self.client
        # The one way out to Slack: every text, Block Kit and modal string leaves without credentials.
        params = redact.REDACTOR.deep(params)
        try:
            response = getattr(client, method.replace(".", "_"))(**params)
        except SlackApiError as exc:
            # Slack answered ok=false (or an HTTP error after retries): reported to the caller by name.
            raise SlackError(self._redact(f"{method}: {exc.response.get('error', exc.response.status_code)}")) from exc
        except (SlackClientError, OSError) as exc:
            # Transport failure (connection refused, timeout): the caller records it and carries on.
            raise SlackError(self._redact(f"{method}: {type(exc).__name__}: {exc}")) from exc
        return dict(response.data) if isinstance(response.data, dict) else {}

    def _redact(self, text: str) -> str:
        """An error's text without the bot token or any credential (bot.infra.redact): callers put it in threads,
        refusals and the audit log."""
        token = self.client.token
        return redact.redact(text.replace(token, "***") if token else text)

    def post(self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None,
             thread_ts: str | None = None) -> str:
        params: dict[str, Any] = {"channel": channel, "text": escape(text), "unfurl_links": False}
        if blocks is not None:
            params["blocks"] = blocks
        if thread_ts:
            params["thread_ts"] = thread_ts
        ts = self._call("chat.postMessage", **params).get("ts")
        if not ts:
            raise SlackError("chat.postMessage: the answer carried no ts, so the thread cannot be found")
        return str(ts)

    def update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        params: dict[str, Any] = {"channel": channel, "ts": ts, "text": escape(text)}
        if blocks is not None:
            params["blocks"] = blocks
        self._call("chat.update", **params)

    def ephemeral(self, channel: str, user: str, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        params: dict[str, Any] = {"channel": channel, "user": user, "text": escape(text)}
        if blocks is not None:
            params["blocks"] = blocks
        self._call("chat.postEphemeral", **params)

    def respond(self, response_url: str, message: dict[str, Any]) -> None:
        """Post a message to a command's response_url (what an ack body would have shown), redacted and escaped
        like every other outbound text; SlackError when Slack refuses it or cannot be reached."""
        metrics.SLACK_CALLS.labels(method="response_url").inc()
        message = redact.REDACTOR.deep(message)
        if isinstance(message.get("text"), str):
            message["text"] = escape(message["text"])
        try:
            sent = WebhookClient(response_url, timeout=10).send_dict(message)
        except (SlackClientError, OSError) as exc:
            # Transport failure (connection refused, timeout): the caller logs it; the command already ran.
            raise SlackError(self._redact(f"response_url: {type(exc).__name__}: {exc}")) from exc
        if sent.status_code != 200:
            raise SlackError(f"response_url: HTTP {sent.status_code} {self._redact(str(sent.body))[:200]}")

    def open_view(self, trigger_id: str, view: dict[str, Any]) -> None:
        self._call("views.open", trigger_id=trigger_id, view=view)

    def upload_file(self, channel: str, thread_ts: str | None, content: bytes, filename: str, title: str) -> str:
        """Share a file (e.g. the incident chart) in a channel or thread with files_upload_v2; its file id.

        slack_sdk runs the three steps: files.getUploadURLExternal, POST of the bytes to the returned
        upload_url, files.completeUploadExternal with channel_id and thread_ts.
        """
        if not content:
            raise SlackError(f"files_upload_v2: {filename} is empty, nothing to upload")
        params: dict[str, Any] = {"channel": channel, "content": content, "filename": filename, "title": title}
        if thread_ts:
            params["thread_ts"] = thread_ts
        files = self._call("files_upload_v2", **params).get("files") or [{}]
        return str(files[0].get("id", ""))

    def whoami(self) -> str:
        """`user_id` in `team_id` per auth.test: whether Slack accepts the token."""
        answer = self._call("auth.test")
        return f"{answer.get('user_id', '?')} in {answer.get('team_id', '?')}"

    def usergroup_users(self, usergroup: str) -> list[str]:
        return [str(u) for u in self._call("usergroups.users.list", usergroup=usergroup).get("users", [])]
