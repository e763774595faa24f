"""The chat page's server: Slack's side of the sandbox for one user in one channel, on 127.0.0.1.

Called by sandbox.demo (the browser page and the headless scripted user both use it) and the tests.
It reads what the bot sent to `FakeSlackAPI` (messages, thread replies, edits, ephemerals, views, files)
and turns what the user does into the requests Slack sends to the app's request URL: a typed slash command
becomes a signed form-encoded command, a button click a signed `block_actions` payload (with trigger_id,
container, message and a response_url), a modal submit a signed `view_submission`, opening the app's Home tab
a signed JSON `event_callback` with an `app_home_opened` event (`app_home_opened_body`); the page then shows the
view the bot published for the user with views.publish. The browser cannot
hold the signing secret, so it posts plain JSON here and this server signs and forwards, as Slack does.
The bot's answer is shown the way Slack shows it: a slash command's ack body ephemerally (or in channel),
a view_submission's `response_action: errors` under the inputs. Nothing here reaches into the bot.

Routes: GET / (the page), GET /chat/{app.js,style.css}, GET /sandbox/state (JSON the page polls),
GET /sandbox/files/<id> (an upload's bytes), GET /sandbox/home (the user's published Home tab view),
POST /sandbox/{command,action,submit,close,home} (JSON bodies).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import requests

from sandbox import signing
from sandbox.http import LoopbackServer
from sandbox.slack_api import APP_ID, BOT_USER_ID, TEAM_ID, FakeSlackAPI, Params

log = logging.getLogger(__name__)

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/chat/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/chat/style.css": ("style.css", "text/css; charset=utf-8")}
SLACK_TIMEOUT = 3.0  # Slack gives up on an app that has not acked within 3 s; the sandbox says so, and waits
Observer = Callable[[str, str], None]  # (who, what): lines for the demo's transcript
StatusRow = tuple[str, str, str]  # the sandbox panel's rows: label, value, tone ("good", "bad", "note" or "")
Status = Callable[[], list[StatusRow]]


def app_home_opened_body(*, user_id: str, tab: str = "home", view: Params | None = None) -> str:
    """The JSON `event_callback` Slack posts when `user_id` opens the app's Home tab (or its Messages tab): the
    event carries `user`, `channel` (the user's DM with the app), `tab`, `event_ts`, and the view published
    for the user before, when there is one."""
    now = time.time()
    event: Params = {"type": "app_home_opened", "user": user_id, "channel": f"D0{user_id.lstrip('UW')}",
                     "tab": tab, "event_ts": f"{now:.6f}"}
    if view is not None and tab == "home":
        event["view"] = view
    return json.dumps({
        "token": signing.VERIFICATION_TOKEN, "team_id": TEAM_ID, "api_app_id": APP_ID, "event": event,
        "type": "event_callback", "event_id": f"Ev0{secrets.token_hex(5).upper()}", "event_time": int(now),
        "authorizations": [{"enterprise_id": None, "team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True,
                            "is_enterprise_install": False}],
        "is_ext_shared_channel": False,
    })


class BadRequest(ValueError):
    """The page sent something Slack's client never would (unknown button, unconfirmed click, ...)."""


class ChatPage(LoopbackServer):
    """HTTP server for the chat page; `user` acts in `channel`, signed requests go to `events_url`."""

    def __init__(
        self, slack: FakeSlackAPI, *, events_url: str, secret: str, user: str, channel: str,
        channel_name: str, user_name: str = "you", names: dict[str, str] | None = None,
        commands: tuple[str, ...] = ("/rollback",), status: Status | None = None, banner: str = "",
        observe: Observer | None = None, host: str = "127.0.0.1", port: int = 0,
    ) -> None:
        self.slack, self.events_url, self.secret = slack, events_url, secret
        self.user, self.channel, self.channel_name, self.user_name = user, channel, channel_name, user_name
        self.names = {BOT_USER_ID: "rollback-bot", user: user_name, **(names or {})}
        self.commands, self.status, self.observe = commands, status, observe or (lambda who, what: None)
        self.banner = banner  # mrkdwn shown above the channel: what the sandbox's user is there to do
        super().__init__(host, port)
        self._closed_views: set[str] = set()
        self._lock = threading.Lock()
        self._status_cache: tuple[float, list[StatusRow]] = (0.0, [])

    @property
    def url(self) -> str:
        """The page's address, `http://127.0.0.1:<port>`."""
        return self.base

    # -- what the page shows -----------------------------------------------------------------------------

    def state(self) -> Params:
        """Everything the page renders: the channel, threads, the user's ephemerals, the open modal."""
        messages = self.slack.messages(self.channel)
        threads: dict[str, list[Params]] = {}
        for msg in messages:
            replies = self.slack.thread(self.channel, msg["ts"])
            if replies:
                threads[msg["ts"]] = replies
                msg["reply_count"] = len(replies)
                msg["latest_reply"] = replies[-1]["ts"]
        for eph in self.slack.ephemerals(channel=self.channel, user=self.user):
            item = {"type": "message", "ephemeral": True, "user": BOT_USER_ID, "ts": eph["message_ts"],
                    "text": eph.get("text") or "", "blocks": eph.get("blocks") or []}
            if eph.get("thread_ts") and eph["thread_ts"] in threads:
                threads[eph["thread_ts"]].append(item)
            else:
                messages.append(item)
        messages.sort(key=lambda m: float(m["ts"]))
        for replies in threads.values():
            replies.sort(key=lambda m: float(m["ts"]))
        return {"me": {"id": self.user, "name": self.user_name},
                "channel": {"id": self.channel, "name": self.channel_name},
                "names": self.names, "channels": {self.channel: self.channel_name},
                "commands": list(self.commands), "banner": self.banner, "messages": messages, "threads": threads,
                "view": self._open_view(), "home": self.slack.home_view(self.user), "status": self._status()}

    def _open_view(self) -> Params | None:
        with self._lock:
            open_views = [v for v in self.slack.views() if v["id"] not in self._closed_views]
        return open_views[-1] if open_views else None

    def _status(self) -> list[StatusRow]:
        if self.status is None:
            return []
        at, rows = self._status_cache
        if time.monotonic() - at > 1.0:  # the panel reads MLflow and the bot's store; once a second is plenty
            rows = self.status()
            self._status_cache = (time.monotonic(), rows)
        return rows

    # -- what the user does ------------------------------------------------------------------------------

    def command(self, text: str) -> Params:
        """The user typed `text` into the message box. Slash commands go to the app as Slack sends them."""
        command, _, rest = text.strip().partition(" ")
        if not command.startswith("/"):
            self.slack.respond(self.channel, self.user, {"text": (
                "Messages are not sent to the bot in this sandbox; type a slash command, e.g. `/rollback help`.")})
            return {"ok": False, "error": "not_a_command"}
        if command not in self.commands:
            self.slack.respond(self.channel, self.user, {"text": f"`{command}` is not a valid command. "
                                                                 f"Try {', '.join(self.commands)}."})
            return {"ok": False, "error": "invalid_command"}
        self.observe(f">> {self.user}", f"types `{text.strip()}`")
        body = signing.slash_command_body(command=command, text=rest.strip(), user_id=self.user,
                                          channel_id=self.channel, user_name=self.user_name,
                                          response_url=self.slack.response_url_for(self.channel, self.user))
        response = self._forward(body, command)
        if response is None:
            return {"ok": False, "error": "no_answer"}
        if response.status_code != 200:
            self.slack.respond(self.channel, self.user, {"text": (
                f"`{command}` failed with the error \"http_service_error\" ({response.status_code})")})
            return {"ok": False, "error": f"http_{response.status_code}"}
        ack = _json_body(response)
        if ack:  # Slack shows the ack body like a response_url post: ephemeral unless in_channel
            self.slack.respond(self.channel, self.user, ack)
            self.observe(f"  (only {self.user})", str(ack.get("text") or ""))
        return {"ok": True}

    def action(self, *, channel: str, ts: str, action_id: str, block_id: str | None = None,
               ephemeral: bool = False, confirmed: bool = False) -> Params:
        """The user clicked a button of message `ts` (after its confirm dialog, when it has one)."""
        if ephemeral:
            found = [e for e in self.slack.ephemerals(channel=channel, user=self.user) if e["message_ts"] == ts]
            if not found:
                raise BadRequest(f"no ephemeral message {ts} for {self.user} in {channel}")
            message: Params = {"type": "message", "ts": ts, "text": found[0].get("text") or "",
                               "blocks": found[0].get("blocks") or []}
            thread_ts = found[0].get("thread_ts")
        else:
            try:
                message = self.slack.message(channel, ts)
            except KeyError as exc:  # the page showed a message the fake does not hold: a stale page
                raise BadRequest(str(exc)) from exc
            thread_ts = message.get("thread_ts") if message.get("thread_ts") != ts else None
        block, button = _find_button(message.get("blocks") or [], action_id, block_id)
        if button.get("confirm") and not confirmed:
            raise BadRequest(f"button {action_id} has a confirm dialog; Slack sends the click only after it")
        label = str((button.get("text") or {}).get("text") or action_id)
        self.observe(f">> {self.user}", f'clicks "{label}"' + (" and confirms the dialog" if confirmed else ""))
        body = signing.block_actions_body(
            user_id=self.user, channel_id=channel, message_ts=ts, action_id=action_id,
            value=str(button.get("value") or ""), block_id=str(block.get("block_id") or "actions"),
            message=message, thread_ts=thread_ts, ephemeral=ephemeral,
            response_url=self.slack.response_url_for(channel, self.user, message_ts=ts, thread_ts=thread_ts))
        response = self._forward(body, f'"{label}"')
        if response is None or response.status_code != 200:
            self.slack.respond(channel, self.user, {"text": (
                f"rollback-bot did not answer the click on \"{label}\" (Slack shows a warning sign on the button)")})
            return {"ok": False, "error": "no_answer" if response is None else f"http_{response.status_code}"}
        return {"ok": True}

    def submit(self, view_id: str, values: dict[str, dict[str, str]]) -> Params:
        """The user pressed a modal's submit button; `values` is {block_id: {action_id: typed text}}."""
        view = next((v for v in self.slack.views() if v["id"] == view_id), None)
        if view is None or view_id in self._closed_views:
            raise BadRequest(f"no open view {view_id}")
        state = _state_values(view, values)
        title = str((view.get("title") or {}).get("text") or "")
        self.observe(f">> {self.user}", f'submits the "{title}" modal')
        body = signing.view_submission_body(user_id=self.user, callback_id=str(view.get("callback_id") or ""),
                                            private_metadata=str(view.get("private_metadata") or ""),
                                            values=state, view_id=view_id, opened=view)
        response = self._forward(body, f'the "{title}" modal')
        if response is None or response.status_code != 200:
            return {"ok": False, "error": "We had some trouble connecting. Try again?"}
        ack = _json_body(response)
        action = ack.get("response_action")
        if action == "errors":
            errors = {str(k): str(v) for k, v in (ack.get("errors") or {}).items()}
            self.observe(f"  (modal errors for {self.user})", "; ".join(errors.values()))
            return {"ok": False, "errors": errors}
        if action in ("update", "push"):
            return {"ok": False, "error": f"response_action {action} is not shown by this sandbox"}
        with self._lock:  # no response_action closes this view; "clear" closes the whole stack
            if action == "clear":
                self._closed_views.update(v["id"] for v in self.slack.views())
            self._closed_views.add(view_id)
        return {"ok": True}

    def open_home(self, tab: str = "home") -> Params:
        """The user opened the app's Home tab (again: the bot publishes it afresh each time) or its Messages tab."""
        if tab not in ("home", "messages"):
            raise BadRequest(f"no tab {tab!r}: Slack's App Home has home and messages")
        self.observe(f">> {self.user}", f"opens rollback-bot's {tab.capitalize()} tab")
        body = app_home_opened_body(user_id=self.user, tab=tab, view=self.slack.home_view(self.user))
        response = self._forward(body, f"the {tab} tab", content_type="application/json")
        if response is None or response.status_code != 200:
            return {"ok": False, "error": "no_answer" if response is None else f"http_{response.status_code}"}
        return {"ok": True}

    def close(self, view_id: str) -> Params:
        """The user pressed the modal's close button (no view_closed is sent: the bot asks for none)."""
        with self._lock:
            self._closed_views.add(view_id)
        return {"ok": True}

    def _forward(self, body: str, what: str, content_type: str | None = None) -> requests.Response | None:
        """Post `body` signed to the app (form-encoded, or events as `content_type="application/json"`)."""
        started = time.monotonic()
        extra = {"Content-Type": content_type} if content_type else None
        try:
            response = signing.post_signed(self.events_url, self.secret, body, timeout=10, extra_headers=extra)
        except requests.RequestException as exc:  # the bot is down or hung: shown to the user, like Slack does
            log.warning("chat page: %s not delivered: %s", what, exc)
            self.observe("  [slack]", f"the bot did not answer {what}: {type(exc).__name__}")
            return None
        took = time.monotonic() - started
        if took > SLACK_TIMEOUT:
            self.observe("  [slack]", f"the bot took {took:.1f}s to ack {what}; Slack would have given up at 3s")
        return response


def _find_button(blocks: list[Params], action_id: str, block_id: str | None) -> tuple[Params, Params]:
    for block in blocks:
        if block_id and block.get("block_id") != block_id:
            continue
        elements = block.get("elements") or []
        if block.get("accessory"):
            elements = [*elements, block["accessory"]]
        for element in elements:
            if element.get("type") == "button" and element.get("action_id") == action_id:
                return block, element
    raise BadRequest(f"no button {action_id} in that message")


def _state_values(view: Params, typed: dict[str, dict[str, str]]) -> Params:
    """Slack's view.state.values for the view's input blocks, filled with what the user typed."""
    values: Params = {}
    for block in view.get("blocks") or []:
        element = block.get("element") or {}
        if block.get("type") != "input" or not element.get("action_id"):
            continue
        text = (typed.get(str(block.get("block_id"))) or {}).get(element["action_id"])
        values[str(block.get("block_id"))] = {element["action_id"]: {"type": element.get("type"), "value": text}}
    return values


def _json_body(response: requests.Response) -> Params:
    if not response.content.strip():
        return {}
    try:
        body = response.json()
    except ValueError:  # Slack shows a plain-text ack body as the message text
        return {"text": response.text}
    return body if isinstance(body, dict) else {}


class _Handler(BaseHTTPRequestHandler):
    fake: ChatPage  # set on the per-server subclass made in LoopbackServer.start()

    def do_GET(self) -> None:
        if not self._local():
            return
        path = urlsplit(self.path).path
        if path in STATIC:
            name, content_type = STATIC[path]
            self._reply(200, resources.files(__package__).joinpath(name).read_bytes(), content_type)
        elif path == "/sandbox/state":
            self._json(200, self.fake.state())
        elif path == "/sandbox/home":
            self._json(200, {"ok": True, "view": self.fake.slack.home_view(self.fake.user)})
        elif path.startswith("/sandbox/files/"):
            found = self.fake.slack.file_content(path[len("/sandbox/files/"):])
            if found:
                self._reply(200, found[0], found[1])
            else:
                self._json(404, {"ok": False, "error": "file_not_found"})
        else:
            self._json(404, {"ok": False, "error": "not_found"})

    def do_POST(self) -> None:
        if not self._local():
            return
        path = urlsplit(self.path).path
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            # JSON only: a form on another web site cannot post here without a CORS preflight we never answer
            self._json(415, {"ok": False, "error": "send application/json"})
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            self._json(200, self._route(path, body))
        except (BadRequest, ValueError) as exc:  # bad input (json.JSONDecodeError is a ValueError): say what
            self._json(400, {"ok": False, "error": str(exc)})

    def _route(self, path: str, body: Params) -> Params:
        page = self.fake

        def field(name: str) -> str:
            if not isinstance(body.get(name), str) or not body[name]:
                raise BadRequest(f"{path} needs a non-empty string field {name!r}")
            return str(body[name])

        if path == "/sandbox/command":
            return page.command(field("text"))
        if path == "/sandbox/action":
            block_id = body.get("block_id")
            return page.action(channel=field("channel"), ts=field("ts"), action_id=field("action_id"),
                               block_id=str(block_id) if block_id else None, ephemeral=bool(body.get("ephemeral")),
                               confirmed=bool(body.get("confirmed")))
        if path == "/sandbox/submit":
            values = body.get("values") or {}
            if not isinstance(values, dict) or not all(isinstance(v, dict) for v in values.values()):
                raise BadRequest("/sandbox/submit needs values as {block_id: {action_id: text}}")
            return page.submit(field("view_id"), values)
        if path == "/sandbox/close":
            return page.close(field("view_id"))
        if path == "/sandbox/home":
            return page.open_home(str(body.get("tab") or "home"))
        raise BadRequest(f"no route {path}")

    def _local(self) -> bool:
        """Only requests addressed to the loopback name (no DNS rebinding from another site)."""
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if host in ("127.0.0.1", "localhost"):
            return True
        self._json(403, {"ok": False, "error": "the sandbox answers only http://127.0.0.1"})
        return False

    def _json(self, status: int, body: Params) -> None:
        self._reply(status, json.dumps(body).encode(), "application/json; charset=utf-8")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("chat page: " + format, *args)


ChatPage.handler = _Handler
