"""POST /slack/events: the one inbound Slack adapter over HTTP. It verifies, acks and hands over; Bolt routes;
handlers.dedupe drops repeats; the listeners parse and delegate to bot.incidents.service.IncidentService.

The path of a click (say Roll back on a warning), from bytes to the domain call:

1. Bytes. Waitress reads the body (at most handlers.bodies.MAX_BODY, else 413) and bot.app's WSGI app hands
   every Slack request to `SlackRoute.__call__`.
2. Verify, once. slack_sdk's SignatureVerifier (what Bolt itself would use) checks the signature and the
   timestamp over the raw bytes, before anything is decoded or parsed: a tampered, stale, unsigned,
   non-UTF-8 or cut-off body is a 401 (Bolt's adapter would decode and JSON-parse first and end some of them
   in a 500). This is the only check: bot.app builds Bolt with `request_verification_enabled=False`, and
   both ways into Bolt below (`_dispatch` and Bolt's WSGI adapter) are reached only after `_signed`.
3. Ack first. A click or a slash command is answered at once with an empty 200 (plus X-Slack-No-Retry when
   handlers.dedupe.is_retry says Slack is retrying) and queued on a worker: approvers' decisions (Roll back,
   Stop, Retry step / Resume, Dismiss) on a lane of their own, so they never wait behind dry runs, commands
   and lookups; everything else on the other. Under a burst (50 people clicking, one process, one GIL) Bolt's
   own ack would wait behind the parsing and listener work of every request before it; this keeps each ack
   to a signature check and a queue put.
4. Bolt. On the worker `_dispatch` hands a BoltRequest to `App.dispatch`; Bolt parses the body and runs the global
   middleware of handlers.dedupe, which claims the request's key in the store: a retry or a replay stops
   there with a plain 200 and nothing runs. Then the listener matched by action_id (handlers.actions),
   callback_id (handlers.views) or command (handlers.commands).
5. The domain. The listener calls `ack()`, reads the incident id and the user, and delegates:
   `incidents.press_approve(incident_id, user)`, which opens the typed-confirm modal when its Reply carries a
   view, or a refusal told ephemerally (handlers.reply.tell). Every outbound call goes through bot.slack
   (SlackOut). A slash command's answer, the text its listener gave `ack(text=...)`, comes back from Bolt to
   `_dispatch` and is posted to the command's response_url, which Slack shows ephemerally exactly like an
   ack body.

Modal submissions (view_submission) and anything else take the synchronous path: verified in step 2 like
the rest, then run by Bolt's own WSGI adapter on the HTTP thread, and Bolt's response is the HTTP answer, because the ack of
a submission carries the validation errors Slack shows inside the modal.

Why every listener still calls `ack()` although clicks and commands over HTTP are acked in step 3 (do not
remove those calls): over HTTP, for clicks and commands, ack() only records the response Bolt returns to
`_dispatch` (nothing for a click; the command's answer for its response_url); for a modal submission the
ack is the HTTP answer (`response_action=errors` keeps the modal open, a plain ack() closes it); and in
Socket Mode (SLACK_APP_TOKEN set) this module is not in the path at all: slack_bolt's SocketModeHandler
dispatches into the same Bolt app (no signatures there, the WebSocket opened with the app token is the
authentication; /slack/events answers 404), and the listener's ack() is the only acknowledgement Slack
gets, without which it shows an error and redelivers. handlers.dedupe runs in Bolt, so it covers both.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs

from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk.signature import SignatureVerifier

from bot.slack import blocks
from bot.slack.slack_out import SlackError, SlackOut
from handlers import dedupe
from handlers.bodies import TOO_LARGE, BadLength, TooLarge, read_body

log = logging.getLogger(__name__)

PATH = "/slack/events"
# Eight workers in all, as before the decisions got their own lane: more threads busy with Bolt's listeners
# means longer waits for the HTTP threads' acks under a burst (the GIL), so the split does not add any.
WORKERS = 6
DECISION_WORKERS = 2
# Buttons that decide (Roll back, Stop, Retry step / Resume, Dismiss): served on their own workers.
DECISIONS = frozenset({blocks.APPROVE, blocks.STOP, blocks.RETRY, blocks.DISMISS})


class SlackRoute:
    """The WSGI app for Slack's requests over HTTP, in front of a Bolt app built without its own verification."""

    def __init__(self, bolt: App, signing_secret: str, slack: SlackOut) -> None:
        self.bolt = bolt
        self.slack = slack
        self.verifier = SignatureVerifier(signing_secret)
        self.sync = SlackRequestHandler(bolt, path=PATH)  # entered only after the check in __call__
        self.workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="slack-work")
        # Approvers' decisions have a lane of their own: they never wait behind dry runs, commands and lookups
        # (anyone may press Dry run, and a plan reads git, helm, Kubernetes and MLflow).
        self.decisions = ThreadPoolExecutor(DECISION_WORKERS, thread_name_prefix="slack-decide")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            raw = _read_body(environ)
        except TooLarge as exc:  # answered without keeping (or, with a Content-Length, reading) the body
            start_response(TOO_LARGE, [("Content-Type", "application/json")])
            return [json.dumps({"error": str(exc)}).encode()]
        headers = {key[5:].replace("_", "-").lower(): str(value) for key, value in environ.items()
                   if key.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = str(environ["CONTENT_TYPE"])
        if not self._signed(raw, headers):  # step 2: the only signature check; nothing below runs without it
            start_response("401 Unauthorized", [("Content-Type", "application/json")])
            return [b'{"error":"invalid request signature"}']
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError:
            start_response("400 Bad Request", [("Content-Type", "application/json")])
            return [b'{"error":"the body is not UTF-8"}']
        query = str(environ.get("QUERY_STRING", ""))
        kind, response_url, action_id = _kind(body)
        if kind in ("block_actions", "command"):  # step 3: ack first, Bolt on a worker
            lane = self.decisions if action_id in DECISIONS else self.workers
            lane.submit(self._dispatch, body, query, headers, response_url if kind == "command" else None)
            answer = [("Content-Type", "text/plain"), ("Content-Length", "0")]
            if dedupe.is_retry(headers):  # received now; handlers.dedupe drops the repeat when Bolt runs it
                answer.append(dedupe.NO_RETRY)
            start_response("200 OK", answer)
            return [b""]
        # Modal submissions and the rest: Bolt's own WSGI adapter answers them (its 404 off POST /slack/events),
        # reading the body already read here.
        environ["wsgi.input"] = io.BytesIO(raw)
        environ["CONTENT_LENGTH"] = str(len(raw))
        return self.sync(environ, start_response)

    def _signed(self, raw: bytes, headers: dict[str, str]) -> bool:
        try:
            return self.verifier.is_valid(raw, headers.get("x-slack-request-timestamp"),
                                          headers.get("x-slack-signature"))
        except ValueError:
            return False  # a timestamp that is not a number

    def _dispatch(self, body: str, query: str, headers: dict[str, str], response_url: str | None) -> None:
        """On a worker: Bolt runs the acked request (dedupe, the listener) as if it had come in just now."""
        try:
            response = self.bolt.dispatch(BoltRequest(body=body, query=query,
                                                      headers={k: [v] for k, v in headers.items()}))
            if response_url and response.status == 200 and response.body:
                _answer(self.slack, response_url, response)
        except Exception:  # noqa: BLE001 - a worker must survive any one request; the traceback is logged
            log.exception("handling a Slack request failed")


def _answer(slack: SlackOut, response_url: str, response: BoltResponse) -> None:
    """Post what Bolt's ack would have returned to the command's response_url (shown ephemerally)."""
    content_type = (response.headers.get("content-type") or [""])[0]
    message: dict[str, Any] = (json.loads(response.body) if content_type.startswith("application/json")
                               else {"text": response.body})
    message.setdefault("response_type", "ephemeral")
    try:
        slack.respond(response_url, message)
    except SlackError as exc:  # the command ran (or was refused and audited); only its answer is lost
        log.warning("the answer to a slash command did not reach its response_url: %s", exc)


def _kind(body: str) -> tuple[str | None, str | None, str | None]:
    """("command" | block_actions | view_submission | ..., response_url, clicked action_id) of a form-encoded
    Slack request."""
    form = parse_qs(body, keep_blank_values=True)
    if "command" in form:
        return "command", next(iter(form.get("response_url") or ()), None), None
    payload = next(iter(form.get("payload") or ()), None)
    if payload is None:
        return None, None, None
    try:
        data = json.loads(payload)
        kind = data.get("type")
        actions = data.get("actions") or [{}]
        action_id = actions[0].get("action_id") if isinstance(actions[0], dict) else None
    except (ValueError, AttributeError, TypeError, IndexError):
        return None, None, None  # not JSON we understand: Bolt answers it
    return (str(kind) if kind else None), None, (str(action_id) if action_id else None)


def _read_body(environ: dict[str, Any]) -> bytes:
    """The body, at most handlers.bodies.MAX_BODY bytes (TooLarge past it, before anything is verified or parsed)."""
    try:
        return read_body(environ)
    except BadLength:
        return b""  # a malformed Content-Length reads as an empty body, which then fails the signature
