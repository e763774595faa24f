"""POST /slack/events: Slack's request URL, in front of Bolt.

Called by bot.app's WSGI app. Two things happen here before Bolt sees a request:

1. The signature is checked with slack_sdk's SignatureVerifier (what Bolt uses) before anything is parsed:
   Bolt's adapter decodes and JSON-parses the body first, so a tampered, non-UTF-8 or cut-off body would end
   in a 500 instead of a 401. Bolt then verifies the same request again.
2. Button clicks and slash commands are acked at once with an empty 200 and handed to Bolt on a worker
   thread. Under a burst (50 people clicking, one process, one GIL) Bolt's own ack waits behind the parsing
   and listener work of every request before it; this keeps each ack to a signature check and a queue put.
   A slash command's answer (what Bolt's ack(text=...) would have returned) is posted to its response_url,
   which Slack shows ephemerally exactly like an ack body. Modal submissions stay synchronous: their ack
   carries the validation errors Slack shows inside the modal. Approvers' decisions (Roll back, Stop, Retry
   step / Resume, Dismiss) run on workers of their own, so they never wait behind dry runs or lookups.
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
from handlers.bodies import TOO_LARGE, BadLength, TooLarge, read_body

log = logging.getLogger(__name__)

# Eight workers in all, as before the decisions got their own lane: more threads busy with Bolt's listeners
# means longer waits for the HTTP threads' acks under a burst (the GIL), so the split does not add any.
WORKERS = 6
DECISION_WORKERS = 2
# Buttons that decide (Roll back, Stop, Retry step / Resume, Dismiss): served on their own workers.
DECISIONS = frozenset({blocks.APPROVE, blocks.STOP, blocks.RETRY, blocks.DISMISS})


class SlackRoute:
    def __init__(self, bolt: App, signing_secret: str, slack: SlackOut) -> None:
        self.bolt = bolt
        self.slack = slack
        self.verifier = SignatureVerifier(signing_secret)
        self.sync = SlackRequestHandler(bolt, path="/slack/events")
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
        if not self._signed(raw, headers):
            start_response("401 Unauthorized", [("Content-Type", "application/json")])
            return [b'{"error":"invalid request signature"}']
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError:
            start_response("400 Bad Request", [("Content-Type", "application/json")])
            return [b'{"error":"the body is not UTF-8"}']
        kind, response_url, action_id = _kind(body)
        if kind in ("block_actions", "command"):
            lane = self.decisions if action_id in DECISIONS else self.workers
            lane.submit(self._dispatch, body, headers, response_url if kind == "command" else None)
            answer = [("Content-Type", "text/plain"), ("Content-Length", "0")]
            if "x-slack-retry-num" in headers:  # received now; the dedupe in Bolt's middleware drops the repeat
                answer.append(("X-Slack-No-Retry", "1"))
            start_response("200 OK", answer)
            return [b""]
        environ["wsgi.input"] = io.BytesIO(raw)
        environ["CONTENT_LENGTH"] = str(len(raw))
        return self.sync(environ, start_response)

    def _signed(self, raw: bytes, headers: dict[str, str]) -> bool:
        try:
            return self.verifier.is_valid(raw, headers.get("x-slack-request-timestamp"),
                                          headers.get("x-slack-signature"))
        except ValueError:
            return False  # a timestamp that is not a number

    def _dispatch(self, body: str, headers: dict[str, str], response_url: str | None) -> None:
        """Bolt runs the request (verification, dedupe, the listener) as if it had come in just now."""
        try:
            response = self.bolt.dispatch(BoltRequest(body=body, headers={k: [v] for k, v in headers.items()}))
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
