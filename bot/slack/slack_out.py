"""Everything the bot says in Slack goes through here: posts (with message metadata), thread replies, in-place
updates, ephemerals, modals, the App Home tab (views.publish), file uploads (files_upload_v2), user-group lookups,
a slash command's answer to its response_url, a message's permalink, and the reads that find what another
replica already posted (conversations.replies / .history with include_all_metadata, every page).

Called by bot.slack.timeline, bot.slack.chart, bot.incidents.approvers (user groups), bot.incidents.home (the Home
tab and its thread links), handlers.slack_http (response_url answers) and handlers/ (ephemeral replies, the
typed-confirm modal) with a slack_sdk WebClient whose base_url comes from
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
    """A Slack Web API call failed after its retries; `code` is Slack's error name when it answered one."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


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


# views.publish replaces the user's whole Home view, so sending it twice leaves the same view.
IDEMPOTENT = frozenset({"chat.update", "usergroups.users.list", "conversations.replies", "conversations.history",
                        "views.publish"})
_PAGE = 200  # messages per page of conversations.replies / .history (Slack: 1000 and 999 at most)
_MAX_PAGES = 50  # a bound on one read: 10,000 messages, far more than an incident's thread or a channel's day


class SlackOut:
    def __init__(self, client: WebClient) -> None:
        self.client = client
        self._workspace_url: str | None = None
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
            error = exc.response.get("error", exc.response.status_code)
            raise SlackError(self._redact(f"{method}: {error}"), code=str(error)) from exc
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
             thread_ts: str | None = None, metadata: dict[str, Any] | None = None) -> str:
        """chat.postMessage; `metadata` is Slack message metadata, {"event_type": ..., "event_payload": {...}}
        (the timeline names each event's id in it, so a thread read with `replies` shows what was posted)."""
        params: dict[str, Any] = {"channel": channel, "text": escape(text), "unfurl_links": False}
        if blocks is not None:
            params["blocks"] = blocks
        if thread_ts:
            params["thread_ts"] = thread_ts
        if metadata is not None:
            params["metadata"] = metadata
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

    def publish_home(self, user_id: str, view: dict[str, Any]) -> None:
        """views.publish: `view` (type "home") becomes `user_id`'s Home tab of the app, replacing the last one.
        Needs no scope beyond the bot token; the app must have the Home tab enabled (manifest.yml)."""
        self._call("views.publish", user_id=user_id, view=view)

    def permalink(self, channel: str, ts: str) -> str:
        """The link to message `ts` in `channel` (an incident's warning: the top of its thread), in the shape
        chat.getPermalink answers, `<workspace url>archives/<channel>/p<ts without its dot>`. The workspace's
        url comes from auth.test (`workspace_url`, read once per process), so a page of links costs no call per
        message; SlackError while Slack cannot say it (the caller shows the channel without a link)."""
        url = self.workspace_url()
        if not url:
            raise SlackError("auth.test: no workspace url, so no link to the message")
        return f"{url.rstrip('/')}/archives/{channel}/p{ts.replace('.', '')}"

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

    def workspace_url(self) -> str | None:
        """The workspace's address per auth.test ("https://acme.slack.com/"), read once; None while Slack cannot say.
        A thread's link is `<url>archives/<channel>/p<ts without the dot>`."""
        if self._workspace_url is None:
            try:
                url = self._call("auth.test").get("url")
            except Exception:  # noqa: BLE001 - a link is a nicety: without it the page has no link
                return None
            self._workspace_url = str(url) if url else None
        return self._workspace_url

    def whoami(self) -> str:
        """`user_id` in `team_id` per auth.test: whether Slack accepts the token."""
        answer = self._call("auth.test")
        return f"{answer.get('user_id', '?')} in {answer.get('team_id', '?')}"

    def replies(self, channel: str, ts: str) -> list[dict[str, Any]]:
        """The thread of message `ts` (the parent first, then its replies, oldest first), each message with its
        `metadata`: conversations.replies with include_all_metadata, every page (response_metadata.next_cursor)."""
        return self._pages("conversations.replies", channel=channel, ts=ts)

    def history(self, channel: str, oldest: float) -> list[dict[str, Any]]:
        """The channel's top-level messages since `oldest` (unix seconds), newest first, each with its `metadata`:
        conversations.history with include_all_metadata, every page."""
        return self._pages("conversations.history", channel=channel, oldest=f"{oldest:.6f}")

    def _pages(self, method: str, **params: Any) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        seen: set[str] = set()
        cursor = ""
        for _ in range(_MAX_PAGES):
            page = self._call(method, include_all_metadata=True, limit=_PAGE, **params,
                              **({"cursor": cursor} if cursor else {}))
            for message in page.get("messages") or []:
                if isinstance(message, dict) and str(message.get("ts")) not in seen:  # a parent repeated per page
                    seen.add(str(message.get("ts")))
                    messages.append(message)
            cursor = str((page.get("response_metadata") or {}).get("next_cursor") or "")
            if not cursor:
                return messages
        raise SlackError(f"{method}: more than {_MAX_PAGES} pages of {_PAGE} messages")

    def usergroup_users(self, usergroup: str) -> list[str]:
        return [str(u) for u in self._call("usergroups.users.list", usergroup=usergroup).get("users", [])]
