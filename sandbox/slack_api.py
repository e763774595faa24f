"""Fake Slack Web API over real HTTP, used by the tests and by `rollback-bot demo`.

`FakeSlackAPI` answers `/api/<method>` (form, JSON or query-string params, as slack_sdk and curl send them)
like slack.com does for the methods the bot uses. It records every call with the token masked, keeps channel
messages, threads, ephemerals, views and uploaded files so tests and the demo can read the channel as a
person would, and can be told to fail the next calls (429 with Retry-After, 5xx, or `ok: false`).
Messages keep their message metadata (`{"event_type", "event_payload"}`); conversations.replies (the parent first,
then its replies) and conversations.history (top-level messages, newest first) return it with
`include_all_metadata`, a page at a time (`limit`, `cursor`, `has_more`, `response_metadata.next_cursor`).
Point a client at it with `WebClient(base_url=fake.url)` or the env var `SLACK_API_URL=<fake.url>`.
views.publish keeps the latest Home tab view per user (`home_view(user)`), checked as Slack checks it (type
"home", at most 100 blocks, a `hash` that must match the last one when given).
Bolt's `respond()` can be pointed at `fake.response_url`; those posts are recorded as method "response_url".
A `response_url_for(channel, user)` URL also shows them as Slack does (ephemeral, in channel, or replacing
the original); `respond()` does the same for a slash command's ack body. The chat page reads all of this.
`hold_responses(method, seconds=…, count=…, channel=…)` handles the next calls of a method at once (a posted message
is stored and readable) but answers them late, with the caller's address kept (`held()`): a client that dies while
it waits never learns its post was taken (tests/test_replicas.py).
`apps.connections.open` (Socket Mode) wants the app-level `xapp-` token in the Authorization header, as Slack does,
and answers `{"ok": true, "url": …}` with a one-time WebSocket URL of the Socket Mode fake attached by
`use_socket_mode` (sandbox/socket_mode.py); without one it answers `internal_error`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import mimetypes
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from sandbox.http import LoopbackServer

log = logging.getLogger(__name__)

TEAM_ID, BOT_USER_ID, BOT_ID, APP_ID = "T0SANDBOX", "U0ROLLBOT", "B0ROLLBOT", "A0SANDBOX"
AUTH_TEST = {"ok": True, "url": "https://sandbox.slack.com/", "team": "Sandbox", "user": "rollback-bot",
             "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID}
_JSON_FIELDS = ("blocks", "attachments", "view", "files", "metadata")  # form fields whose values are JSON text
_PAGE_LIMITS = {"conversations.replies": (1000, 1000), "conversations.history": (100, 999)}  # (default, max)
_MESSAGE_FIELDS = ("text", "blocks", "attachments", "metadata")
MAX_VIEW_BLOCKS = 100  # Slack's limit for a modal's or a home view's blocks
MAX_VIEW_BYTES = 250_000  # views.publish answers view_too_large beyond this

Params = dict[str, Any]
_Headers = dict[str, str]
_Failure = tuple[int, str, "int | None"]  # HTTP status, Slack error, Retry-After seconds


@dataclass
class Hold:
    """Answer the next `count` calls of `method` (in `channel`, whose text contains `text`, when given) `seconds`
    after they were handled, or when `FakeSlackAPI.release_holds` is called; `held` lists those it held."""

    method: str
    seconds: float
    count: int
    channel: str | None = None
    text: str | None = None
    held: list[HeldCall] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)

    def matches(self, method: str, params: Params) -> bool:
        return (len(self.held) < self.count and method == self.method
                and self.channel in (None, str(params.get("channel") or ""))
                and (self.text is None or self.text in str(params.get("text") or "")))


@dataclass
class HeldCall:
    """A call whose answer was held: the call as recorded, what it was answered, the caller's (host, port) (the
    test finds the process by it) and when the answer went (None while it waits)."""

    call: Call
    answer: Params
    peer: tuple[str, int] | None
    answered_at: float | None = None


@dataclass(frozen=True)
class Call:
    """One request the fake received: Web API method, decoded params, headers (token masked), time.time()."""

    method: str
    params: Params
    headers: dict[str, str]
    at: float


class FakeSlackAPI(LoopbackServer):
    """In-process HTTP server speaking the Slack Web API wire format, with thread-safe readers."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, users_by_group: dict[str, list[str]] | None = None
    ) -> None:
        super().__init__(host, port)
        self.users_by_group = {group: list(users) for group, users in (users_by_group or {}).items()}
        self._cond = threading.Condition(threading.RLock())
        self._last_us = self._seq = 0
        self._methods: dict[str, Callable[[Params], Params]] = {
            "auth.test": lambda p: dict(AUTH_TEST), "chat.postMessage": self._post_message,
            "chat.update": self._update, "chat.postEphemeral": self._post_ephemeral,
            "views.open": self._open_view, "views.push": self._open_view, "views.update": self._update_view,
            "views.publish": self._publish_view,
            "usergroups.users.list": self._usergroup_users, "conversations.info": self._conversation,
            "conversations.replies": self._replies, "conversations.history": self._history,
            "files.getUploadURLExternal": self._upload_url,
            "files.completeUploadExternal": self._complete_upload,
            "response_url": self._response,
        }
        self._open_socket: Callable[[], str] | None = None  # use_socket_mode: hands out Socket Mode URLs
        self.reset()

    @property
    def url(self) -> str:
        """Base URL for `WebClient(base_url=...)` and `SLACK_API_URL`, ending with `/api/`."""
        return f"{self.base}/api/"

    @property
    def response_url(self) -> str:
        """A response_url for signed payloads; posts to it are recorded as method "response_url"."""
        return f"{self.base}/response"

    def use_socket_mode(self, open_url: Callable[[], str]) -> None:
        """Answer apps.connections.open with `open_url()` (sandbox.socket_mode.FakeSocketMode.open_url)."""
        self._open_socket = open_url

    def reset(self) -> None:
        """Forget calls, messages, ephemerals, views (Home tabs too), files, pending failures and holds
        (users_by_group is kept)."""
        with self._cond:
            self._calls: list[Call] = []
            self._messages: dict[str, list[Params]] = {}
            self._ephemerals: list[Params] = []
            self._views: dict[str, Params] = {}
            self._homes: dict[str, Params] = {}  # user -> the Home tab view last published for them
            self._files: dict[str, Params] = {}
            self._failures: dict[str, deque[_Failure]] = {}
            self._holds: list[Hold] = []
            self._held: list[HeldCall] = []

    def calls(self, method: str | None = None) -> list[Call]:
        """Calls received so far, oldest first, optionally only those of one method."""
        with self._cond:
            return [c for c in self._calls if method in (None, c.method)]

    def wait_for(self, predicate: Callable[[Call], bool], timeout: float = 10) -> Call:
        """Block until a recorded call (past or future) satisfies predicate; TimeoutError lists those seen."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next((c for c in self._calls if predicate(c)), None)
                if found is not None:
                    return found
                if (remaining := deadline - time.monotonic()) <= 0:
                    seen = "\n".join(f"  {c.method} {json.dumps(c.params, default=str)[:200]}"
                                     for c in self._calls) or "  (none)"
                    raise TimeoutError(f"no matching Slack call within {timeout}s; calls seen:\n{seen}")
                self._cond.wait(remaining)

    def fail_next(self, method: str, *, status: int = 200, error: str | None = None,
                  retry_after: int | None = None, times: int = 1) -> None:
        """Make the next `times` calls of method answer with HTTP `status` (a 429 sends Retry-After, 1 s
        unless given) or, with status 200, with `{"ok": false, "error": error}`."""
        if status == 200 and error is None:
            raise ValueError("fail_next with status 200 needs error=, e.g. 'channel_not_found'")
        if status == 429 and retry_after is None:
            retry_after = 1  # Slack always sends Retry-After with a 429
        failure = (status, error or ("ratelimited" if status == 429 else "internal_error"), retry_after)
        with self._cond:
            self._failures.setdefault(method, deque()).extend([failure] * times)

    def hold_responses(self, method: str, *, seconds: float, count: int = 1, channel: str | None = None,
                       text: str | None = None) -> Hold:
        """Handle the next `count` calls of `method` (only those in `channel` / whose text contains `text`, when
        given) at once, a posted message stored and visible to conversations.replies and history, but send the
        answer only `seconds` later (or at `release_holds()`), as when Slack took a post and the reply is slow."""
        hold = Hold(method, seconds, count, channel, text)
        with self._cond:
            self._holds.append(hold)
        return hold

    def release_holds(self) -> None:
        """Answer every held call now and drop the holds still waiting for calls."""
        with self._cond:
            holds, self._holds = self._holds, []
        for hold in holds:
            hold.released.set()

    def held(self, method: str | None = None) -> list[HeldCall]:
        """The calls held so far (answered or not), oldest first."""
        with self._cond:
            return [h for h in self._held if method in (None, h.call.method)]

    def messages(self, channel: str) -> list[Params]:
        """Top-level messages of a channel in order (thread replies only when broadcast)."""
        with self._cond:
            msgs = self._messages.get(channel, [])
            return copy.deepcopy([m for m in msgs if m.get("thread_ts") in (None, m["ts"])
                                  or m.get("subtype") == "thread_broadcast"])

    def thread(self, channel: str, ts: str) -> list[Params]:
        """Replies to the message `ts` in order, without the parent."""
        with self._cond:
            msgs = self._messages.get(channel, [])
            return copy.deepcopy([m for m in msgs if m.get("thread_ts") == ts and m["ts"] != ts])

    def message(self, channel: str, ts: str) -> Params:
        """One message by channel and ts; KeyError when there is none."""
        with self._cond:
            if (found := self._find(channel, ts)) is None:
                raise KeyError(f"no message {ts} in {channel}")
            return copy.deepcopy(found)

    def ephemerals(self, channel: str | None = None, user: str | None = None) -> list[Params]:
        """Ephemeral messages in order, optionally for one channel and/or user."""
        with self._cond:
            return copy.deepcopy([e for e in self._ephemerals
                                  if channel in (None, e["channel"]) and user in (None, e["user"])])

    def views(self) -> list[Params]:
        """Views opened or pushed, in their latest state."""
        with self._cond:
            return copy.deepcopy(list(self._views.values()))

    def home_view(self, user: str) -> Params | None:
        """The Home tab view last published for `user` (views.publish), as Slack stores it; None before any."""
        with self._cond:
            found = self._homes.get(user)
            return copy.deepcopy(found) if found is not None else None

    def uploads(self) -> list[Params]:
        """Completed uploads: id, name, title, content (bytes), channel_id, thread_ts, initial_comment."""
        with self._cond:
            return copy.deepcopy([f for f in self._files.values() if f["completed"]])

    def _handle(self, method: str, params: Params, headers: _Headers) -> tuple[int, _Headers, Params]:
        """Answer one call (a pending failure first), record it with secrets masked, wake wait_for()."""
        status, extra, body, _ = self._handle_call(method, params, headers)
        return status, extra, body

    def _handle_call(self, method: str, params: Params, headers: _Headers, peer: tuple[str, int] | None = None
                     ) -> tuple[int, _Headers, Params, tuple[Hold, HeldCall] | None]:
        """`_handle`, and the hold the answer must wait for (hold_responses), if one takes this call."""
        with self._cond:
            hold = next((h for h in self._holds if h.matches(method, params)), None)
            queue = self._failures.get(method)
            status, error, retry_after = queue.popleft() if queue else (200, None, None)
            authed = params.get("token") or any(k.lower() == "authorization" for k in headers)
            if error is not None:
                body = _error(error)
            elif not authed and method != "response_url":
                body = _error("not_authed")
            else:
                body = self._methods.get(method, lambda p: {"ok": True})(params)
            if method == "apps.connections.open" and error is None:
                body = self._connections_open(params, headers)
            masked = {k: ("Bearer ***" if k.lower() == "authorization" else v) for k, v in headers.items()}
            params = {k: ("***" if k == "token" else v) for k, v in params.items()}
            call = Call(method, params, masked, time.time())
            self._calls.append(call)
            held = None
            if hold is not None and status == 200 and body.get("ok"):
                held = HeldCall(call, body, peer)
                hold.held.append(held)
                self._held.append(held)
            self._cond.notify_all()
        extra = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return status, extra, body, ((hold, held) if hold is not None and held is not None else None)

    def respond(self, channel: str, user: str, body: Params, *, message_ts: str | None = None,
                thread_ts: str | None = None) -> None:
        """Show an app's response as Slack does for a response_url post or a slash command's ack body:
        ephemeral to `user` by default, in the channel with `response_type: in_channel`, or in place of the
        message `message_ts` with `replace_original` / `delete_original`."""
        with self._cond:
            self._respond(channel, user, body, message_ts, thread_ts)
            self._cond.notify_all()

    def response_url_for(self, channel: str, user: str, *, message_ts: str | None = None,
                         thread_ts: str | None = None) -> str:
        """A response_url whose posts `respond()` in `channel` to `user` (and about `message_ts`)."""
        where = {"channel": channel, "user": user, "message_ts": message_ts, "thread_ts": thread_ts}
        return f"{self.response_url}?{urlencode({k: v for k, v in where.items() if v})}"

    def file_content(self, file_id: str) -> tuple[bytes, str] | None:
        """Bytes and mimetype of a completed upload (what `url_private` serves), or None."""
        with self._cond:
            f = self._files.get(file_id)
            return (bytes(f["content"]), _mimetype(f["name"])) if f and f["completed"] else None

    def _store_upload(self, file_id: str, data: bytes) -> bool:
        with self._cond:
            if file_id in self._files:
                self._files[file_id]["content"] = data
            return file_id in self._files

    def _next_ts(self) -> str:
        self._last_us = max(time.time_ns() // 1000, self._last_us + 100)
        return f"{self._last_us // 1_000_000}.{self._last_us % 1_000_000:06d}"

    def _next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}0SBX{self._seq:06d}"

    def _find(self, channel: Any, ts: Any) -> Params | None:
        return next((m for m in self._messages.get(str(channel), []) if m["ts"] == str(ts)), None)

    def _store_message(self, channel: str, thread_ts: Any, **fields: Any) -> Params:
        msg: Params = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "team": TEAM_ID, **fields}
        msg["ts"] = self._next_ts()
        if thread_ts:
            msg["thread_ts"] = str(thread_ts)
        self._messages.setdefault(channel, []).append(msg)
        return msg

    def _post_message(self, p: Params) -> Params:
        if not p.get("channel"):
            return _error("channel_not_found")
        if not (p.get("text") or p.get("blocks") or p.get("attachments")):
            return _error("no_text")
        fields = {"text": "", **{k: p[k] for k in _MESSAGE_FIELDS if k in p}}
        if p.get("thread_ts") and p.get("reply_broadcast") in (True, 1, "1", "true"):
            fields["subtype"] = "thread_broadcast"
        msg = self._store_message(str(p["channel"]), p.get("thread_ts"), **fields)
        return {"ok": True, "channel": p["channel"], "ts": msg["ts"], "message": copy.deepcopy(msg)}

    def _update(self, p: Params) -> Params:
        if (msg := self._find(p.get("channel"), p.get("ts"))) is None:
            return _error("message_not_found")
        msg.update({k: p[k] for k in _MESSAGE_FIELDS if k in p})  # fields left out keep their value
        msg["edited"] = {"user": BOT_USER_ID, "ts": self._next_ts()}
        return {"ok": True, "channel": p["channel"], "ts": msg["ts"], "text": msg["text"],
                "message": copy.deepcopy(msg)}

    def _response(self, p: Params) -> Params:
        if p.get("channel") and p.get("user"):  # minted by response_url_for: show it; a bare one is only recorded
            body = {k: v for k, v in p.items() if k not in ("channel", "user", "message_ts", "thread_ts")}
            self._respond(str(p["channel"]), str(p["user"]), body, p.get("message_ts"), p.get("thread_ts"))
        return {"ok": True}

    def _respond(self, channel: str, user: str, body: Params, message_ts: Any, thread_ts: Any) -> None:
        fields = {"text": "", **{k: body[k] for k in _MESSAGE_FIELDS if k in body}}
        original = self._find(channel, message_ts) if message_ts else None
        if original is not None and _truthy(body.get("delete_original")):
            self._messages[channel].remove(original)
        elif original is not None and _truthy(body.get("replace_original")):
            original.update(fields)  # Slack marks no "(edited)" on a replaced original
        elif body.get("response_type") == "in_channel":
            self._store_message(channel, body.get("thread_ts") or thread_ts, **fields)
        else:
            self._ephemerals.append({**{k: fields.get(k) for k in ("text", "blocks", "attachments")},
                                     "channel": channel, "user": user, "message_ts": self._next_ts(),
                                     "thread_ts": body.get("thread_ts") or thread_ts})

    def _post_ephemeral(self, p: Params) -> Params:
        if not p.get("channel") or not p.get("user"):
            return _error("channel_not_found" if not p.get("channel") else "user_not_in_channel")
        eph = {k: p.get(k) for k in ("channel", "user", "text", "blocks", "attachments", "thread_ts")}
        eph["message_ts"] = self._next_ts()
        self._ephemerals.append(eph)
        return {"ok": True, "message_ts": eph["message_ts"]}

    def _connections_open(self, p: Params, headers: _Headers) -> Params:
        """apps.connections.open: only an app-level token, only in the Authorization header (Slack refuses it as a
        POST parameter), and a fresh one-time URL of the attached Socket Mode fake."""
        bearer = next((v for k, v in headers.items() if k.lower() == "authorization"), "").removeprefix("Bearer ")
        if not bearer:
            return _error("missing_args" if p.get("token") is None else "invalid_auth")
        if not bearer.startswith("xapp-"):
            return _error("invalid_auth")
        if self._open_socket is None:
            return _error("internal_error")  # no Socket Mode fake attached (use_socket_mode)
        return {"ok": True, "url": self._open_socket()}

    def _open_view(self, p: Params) -> Params:
        if not isinstance(p.get("view"), dict):
            return _error("invalid_arguments")
        if not (p.get("trigger_id") or p.get("interactivity_pointer")):
            return _error("invalid_trigger_id")
        view_id = self._next_id("V")
        self._views[view_id] = view = {
            "id": view_id, "team_id": TEAM_ID, "type": "modal", "private_metadata": "", "callback_id": "",
            "external_id": "", "state": {"values": {}}, "previous_view_id": None, "root_view_id": view_id,
            "app_id": APP_ID, "bot_id": BOT_ID, **p["view"], "hash": self._next_ts(),
        }
        return {"ok": True, "view": copy.deepcopy(view)}

    def _update_view(self, p: Params) -> Params:
        if not isinstance(p.get("view"), dict):
            return _error("invalid_arguments")
        old = self._views.get(str(p.get("view_id"))) or next(  # by view_id, or by external_id
            (v for v in self._views.values() if v["external_id"] and v["external_id"] == p.get("external_id")), None)
        if old is None:
            return _error("not_found")
        old.update(p["view"], id=old["id"], hash=self._next_ts())
        return {"ok": True, "view": copy.deepcopy(old)}

    def _publish_view(self, p: Params) -> Params:
        """views.publish: the user's Home tab becomes `view` (the same view id each time, a new hash)."""
        view, user = p.get("view"), str(p.get("user_id") or "")
        if not isinstance(view, dict) or not user:
            return _error("invalid_arguments")
        if view.get("type") != "home":
            return _invalid("[ERROR] must be home [json-pointer:/view/type]")
        blocks = view.get("blocks")
        if not isinstance(blocks, list):
            return _invalid("[ERROR] missing required field: blocks [json-pointer:/view]")
        if len(blocks) > MAX_VIEW_BLOCKS:
            return _invalid(f"[ERROR] no more than {MAX_VIEW_BLOCKS} items allowed [json-pointer:/view/blocks]")
        if len(json.dumps(view)) > MAX_VIEW_BYTES:
            return _error("view_too_large")
        old = self._homes.get(user)
        if p.get("hash") and (old is None or p["hash"] != old["hash"]):
            return _error("hash_conflict")
        view_id = old["id"] if old else self._next_id("V")
        self._homes[user] = home = {
            "id": view_id, "team_id": TEAM_ID, "type": "home", "private_metadata": "", "callback_id": "",
            "external_id": "", "state": {"values": {}}, "close": None, "submit": None, "clear_on_close": False,
            "notify_on_close": False, "previous_view_id": None, "root_view_id": view_id, "app_id": APP_ID,
            "app_installed_team_id": TEAM_ID, "bot_id": BOT_ID, **view, "hash": self._next_ts(),
        }
        return {"ok": True, "view": copy.deepcopy(home)}

    def _conversation(self, p: Params) -> Params:
        if not (channel := str(p.get("channel") or "")):
            return _error("channel_not_found")
        info = {"id": channel, "name": f"sandbox-{channel.lower()}", "is_channel": True, "is_private": False,
                "is_member": True, "context_team_id": TEAM_ID}
        return {"ok": True, "channel": info}

    def _replies(self, p: Params) -> Params:
        """A thread: its parent first, then the replies oldest first (`ts` may name the parent or any reply; an
        unthreaded message comes back alone)."""
        channel = str(p.get("channel") or "")
        if not channel:
            return _error("channel_not_found")
        found = self._find(channel, p.get("ts"))
        if found is None:
            return _error("thread_not_found")
        parent_ts = str(found.get("thread_ts") or found["ts"])
        msgs = self._messages.get(channel, [])
        parent = self._find(channel, parent_ts)
        thread = [m for m in msgs if m is not parent and m.get("thread_ts") == parent_ts and m["ts"] != parent_ts]
        window = _window(p)
        if window is None:
            return _error("invalid_ts_oldest")
        in_window = [m for m in thread if window(m)]
        if parent is not None:
            in_window.insert(0, parent)  # Slack answers with the parent whatever the window
        return self._page("conversations.replies", p, [self._shown(channel, m, p) for m in in_window])

    def _history(self, p: Params) -> Params:
        """A channel's top-level messages (and replies broadcast to it), newest first, within oldest/latest."""
        channel = str(p.get("channel") or "")
        if not channel:
            return _error("channel_not_found")
        window = _window(p)
        if window is None:
            return _error("invalid_ts_oldest")
        msgs = [m for m in self._messages.get(channel, [])
                if (m.get("thread_ts") in (None, m["ts"]) or m.get("subtype") == "thread_broadcast") and window(m)]
        msgs.sort(key=lambda m: _ts_us(m["ts"]) or 0, reverse=True)
        return self._page("conversations.history", p, [self._shown(channel, m, p) for m in msgs])

    def _shown(self, channel: str, msg: Params, p: Params) -> Params:
        """A message as the conversations.* reads return it: a thread's parent with its reply counts, and its
        metadata only when the call asked for include_all_metadata."""
        shown = copy.deepcopy(msg)
        if not _truthy(p.get("include_all_metadata")):
            shown.pop("metadata", None)
        replies = [m for m in self._messages.get(channel, []) if m.get("thread_ts") == msg["ts"] and m is not msg]
        if replies:
            shown.update(thread_ts=msg["ts"], reply_count=len(replies),
                         reply_users=sorted({str(m.get("user")) for m in replies}),
                         reply_users_count=len({m.get("user") for m in replies}), latest_reply=replies[-1]["ts"])
        elif msg.get("thread_ts") and msg["thread_ts"] != msg["ts"]:
            parent = self._find(channel, msg["thread_ts"])
            shown["parent_user_id"] = (parent or {}).get("user", BOT_USER_ID)
        return shown

    def _page(self, method: str, p: Params, items: list[Params]) -> Params:
        """One page of `items` from the cursor on: `has_more` and `response_metadata.next_cursor` ("" at the end)."""
        default, most = _PAGE_LIMITS[method]
        try:
            limit = min(max(int(p.get("limit") or default), 1), most)
        except (TypeError, ValueError):  # Slack ignores a limit it cannot read
            limit = default
        start = _offset(p.get("cursor"))
        if start is None:
            return _error("invalid_cursor")
        page, rest = items[start:start + limit], items[start + limit:]
        cursor = base64.b64encode(f"offset:{start + limit}".encode()).decode() if rest else ""
        return {"ok": True, "messages": page, "has_more": bool(rest), "response_metadata": {"next_cursor": cursor}}

    def _usergroup_users(self, p: Params) -> Params:
        users = self.users_by_group.get(str(p.get("usergroup", "")))
        return _error("no_such_subteam") if users is None else {"ok": True, "users": list(users)}

    def _upload_url(self, p: Params) -> Params:
        if not p.get("filename") or not p.get("length"):
            return _error("invalid_arguments")
        file_id = self._next_id("F")
        self._files[file_id] = {"id": file_id, "name": p["filename"], "title": p["filename"], "content": None,
                                "length": int(p["length"]), "alt_txt": p.get("alt_txt"), "completed": False}
        return {"ok": True, "upload_url": f"{self.base}/upload/{file_id}", "file_id": file_id}

    def _complete_upload(self, p: Params) -> Params:
        items = p.get("files")
        if not isinstance(items, list) or not items:
            return _error("invalid_arguments")
        files = [self._files.get(str(item.get("id"))) for item in items]
        ready = [f for f in files if f is not None and f["content"] is not None]
        if len(ready) != len(items):
            return _error("file_not_found")
        shared: list[Params] = []
        for item, f in zip(items, ready, strict=True):
            f.update(title=item.get("title") or f["name"], completed=True, channel_id=p.get("channel_id"),
                     thread_ts=p.get("thread_ts"), initial_comment=p.get("initial_comment"))
            shared.append({"id": f["id"], "name": f["name"], "title": f["title"], "size": len(f["content"]),
                           "mimetype": _mimetype(f["name"]), "url_private": f"{self.base}/files/{f['id']}"})
        if p.get("channel_id"):  # Slack shares the files as a message in the channel or thread
            self._store_message(str(p["channel_id"]), p.get("thread_ts"), text=p.get("initial_comment") or "",
                                files=copy.deepcopy(shared), upload=True)
        return {"ok": True, "files": shared}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeSlackAPI  # set on the per-server subclass made in LoopbackServer.start()

    def do_POST(self) -> None:
        path = urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        # A base URL may carry a path before /api/ (SLACK_API_URL=http://host/prefix/api/), as behind a proxy.
        _, api, api_method = path.path.partition("/api/")
        is_api = bool(api and api_method)
        if is_api or (path.path == "/response" and self.command == "POST"):
            try:
                params = _decode_params(path.query, raw, self.headers.get("Content-Type", ""))
            except ValueError as exc:  # malformed body: answer like Slack rather than drop the connection
                log.debug("fake slack: bad request body: %s", exc)
                self._reply(200, json.dumps(_error("invalid_json")).encode(), "application/json")
                return
            method = api_method if is_api else "response_url"
            peer = (str(self.client_address[0]), int(self.client_address[1]))
            status, extra, body, held = self.fake._handle_call(method, params, dict(self.headers.items()), peer)
            if held is not None:
                hold, call = held
                hold.released.wait(hold.seconds)  # stored already: only the answer waits
                call.answered_at = time.time()
                try:
                    self._reply(status, json.dumps(body).encode(), "application/json; charset=utf-8", extra)
                except (BrokenPipeError, ConnectionResetError):
                    log.debug("fake slack: the caller of a held %s is gone", method)  # killed while it waited
                return
            if is_api:
                self._reply(status, json.dumps(body).encode(), "application/json; charset=utf-8", extra)
            else:
                self._reply(200, b"ok")
        elif path.path.startswith("/files/") and self.command == "GET":  # a file share's url_private
            found = self.fake.file_content(path.path[len("/files/"):])
            if found:
                self._reply(200, found[0], found[1])
            else:
                self._reply(404, b"file_not_found")
        elif path.path.startswith("/upload/") and self.command == "POST":
            stored = self.fake._store_upload(path.path[len("/upload/"):], raw)
            self._reply(200 if stored else 404, f"OK - {len(raw)}".encode() if stored else b"file_not_found")
        else:
            self._reply(404, b"not_found")

    do_GET = do_POST  # Slack accepts GET with query-string params too

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain",
               extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": content_type, "Content-Length": str(len(body)), **(extra or {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fake slack: " + format, *args)


def _decode_params(query: str, raw: bytes, content_type: str) -> Params:
    """Merge query-string and body params; JSON-decode form fields that carry JSON (blocks, view, ...)."""
    params: Params = _form(query)
    if raw and content_type.startswith("application/json"):
        body = json.loads(raw.decode("utf-8"))
        if not isinstance(body, dict):
            raise ValueError("JSON body must be an object")
        params.update(body)
    elif raw:
        params.update(_form(raw.decode("utf-8")))
    for key in _JSON_FIELDS:
        if isinstance(params.get(key), str):
            try:
                params[key] = json.loads(params[key])
            except json.JSONDecodeError:  # not JSON (a caller bug): keep the raw string so the call shows it
                pass
    return params


def _form(text: str) -> Params:
    return {k: v[0] if len(v) == 1 else v for k, v in parse_qs(text, keep_blank_values=True).items()}


def _mimetype(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _ts_us(value: Any) -> int | None:
    """A Slack ts ("1700000000.123456") in microseconds, exact; None when it is not one."""
    try:
        return int(Decimal(str(value)) * 1_000_000)
    except (InvalidOperation, ValueError):  # not a number: the caller answers like Slack does
        return None


def _window(p: Params) -> Callable[[Params], bool] | None:
    """Whether a message falls within the call's oldest / latest (exclusive unless `inclusive`); None when either
    is not a ts."""
    oldest, latest = _ts_us(p.get("oldest") or 0), _ts_us(p.get("latest") or "9999999999")
    if oldest is None or latest is None:
        return None
    inclusive = _truthy(p.get("inclusive"))

    def within(msg: Params) -> bool:
        ts = _ts_us(msg["ts"]) or 0
        return (oldest <= ts <= latest) if inclusive else (oldest < ts < latest)
    return within


def _offset(cursor: Any) -> int | None:
    """The position a cursor of ours points at (0 without one); None for a cursor we did not make."""
    if not cursor:
        return 0
    try:
        kind, _, number = base64.b64decode(str(cursor), validate=True).decode().partition(":")
        return int(number) if kind == "offset" and int(number) >= 0 else None
    except (binascii.Error, UnicodeDecodeError, ValueError):  # not ours: Slack answers invalid_cursor
        return None


def _truthy(value: Any) -> bool:
    return value in (True, 1, "1", "true", "True")


def _error(error: str) -> Params:
    return {"ok": False, "error": error}


def _invalid(message: str) -> Params:
    """Slack's answer to a view it cannot take: invalid_arguments, the reason in response_metadata.messages."""
    return {"ok": False, "error": "invalid_arguments", "response_metadata": {"messages": [message]}}


FakeSlackAPI.handler = _Handler
