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
3. Store, then ack. With a store and the replica's fence (bot.app passes both), a click or a slash command is
   first written to the store's inbox (bot.infra.store.inbox: one INSERT, owned by this replica's membership
   lease, without Slack's legacy verification token), keyed by handlers.dedupe.request_key: the row is the
   request's idempotency claim, so a retry or a replay finds its key there and is answered 200 with
   X-Slack-No-Retry, running nothing. A store that cannot keep the request is a 503: Slack shows the user an
   error instead of a click acked and then lost. Then it is answered with an empty 200 (plus X-Slack-No-Retry
   when handlers.dedupe.is_retry says Slack is retrying) and queued on a worker: approvers' decisions (Roll
   back, Stop, Retry step / Resume, Dismiss) on a lane of their own, so they never wait behind dry runs,
   commands and lookups; everything else on the other. Under a burst (50 people clicking, one process, one
   GIL) Bolt's own ack would wait behind the parsing and listener work of every request before it; this keeps
   each ack to a signature check, one parse, one INSERT and a queue put.
4. Bolt. On the worker (after checking the row is still this replica's, under a live lease) `_dispatch` hands a
   BoltRequest to `App.dispatch`, with the internal header handlers.dedupe.INBOX_HEADER naming the inbox row;
   the row is marked done after. Bolt parses the body and runs the global middleware of handlers.dedupe,
   which lets an inbox request through (already claimed) and claims the key of any other request in the
   store: a retry or a replay stops there with a plain 200 and nothing runs. Then the listener matched by
   action_id (handlers.actions), callback_id (handlers.views) or command (handlers.commands).
   If the replica dies after the ack, its rows outlive it: `SlackRoute.take_over`, run by every replica's
   work loop, takes the rows of a replica whose lease is gone (received within Slack's 5-minute window) and
   runs them through this same step, the command's response_url answer included.
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

from bot.infra import metrics
from bot.infra.store import Fence, Store
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
# The headers an inbox row keeps: what Bolt reads from a Slack request (the body's type, Slack's retry marks).
# Never the signature (the stored body has lost its token, so it would not match anyway) or a proxy's headers.
KEPT_HEADERS = ("content-type", "x-slack-request-timestamp", dedupe.RETRY_HEADER, "x-slack-retry-reason")
_INBOX_ENVIRON = "HTTP_" + dedupe.INBOX_HEADER.upper().replace("-", "_")
TAKE_OVER_BATCH = 32  # inbox rows taken over per call (take_over runs every poll)


class SlackRoute:
    """The WSGI app for Slack's requests over HTTP, in front of a Bolt app built without its own verification."""

    def __init__(self, bolt: App, signing_secret: str, slack: SlackOut, *, store: Store | None = None,
                 fence: Callable[[], Fence] | None = None) -> None:
        """`store` and `fence` (the replica's membership lease as held now) turn the inbox on: clicks and
        commands are stored before their ack and can be taken over (`take_over`). Without them (both None)
        an acked request lives only in this process, as before replicas."""
        self.bolt = bolt
        self.slack = slack
        self.store = store
        self.fence = fence
        self.verifier = SignatureVerifier(signing_secret)
        self.sync = SlackRequestHandler(bolt, path=PATH)  # entered only after the check in __call__
        self.workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="slack-work")
        # Approvers' decisions have a lane of their own: they never wait behind dry runs, commands and lookups
        # (anyone may press Dry run, and a plan reads git, helm, Kubernetes and MLflow).
        self.decisions = ThreadPoolExecutor(DECISION_WORKERS, thread_name_prefix="slack-decide")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # Only this route marks a request as claimed by the inbox (step 4): a copy sent from outside is dropped
        # here, before Bolt's adapter (step 2's synchronous path) or a worker could see it.
        environ.pop(_INBOX_ENVIRON, None)
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
        kind, response_url, action_id, key = _parse(body)
        if kind in ("block_actions", "command"):  # step 3: store, ack, Bolt on a worker
            lane = self.decisions if action_id in DECISIONS else self.workers
            answer = [("Content-Type", "text/plain"), ("Content-Length", "0")]
            if dedupe.is_retry(headers):  # received now; the inbox or handlers.dedupe drops the repeat
                answer.append(dedupe.NO_RETRY)
            reply = response_url if kind == "command" else None
            if self.store is None or self.fence is None or key is None:  # no inbox, or no key: this process only
                lane.submit(self._dispatch, body, query, headers, reply)
                start_response("200 OK", answer)
                return [b""]
            kept = {name: headers[name] for name in KEPT_HEADERS if name in headers}
            try:
                owner = self.fence()
                row_id = self.store.inbox_receive(key, kept, raw, owner)
            except Exception:  # noqa: BLE001 - not stored, so not acked: Slack shows the user an error
                log.exception("a Slack request could not be stored in the inbox; answered 503")
                start_response("503 Service Unavailable", [("Content-Type", "application/json")])
                return [b'{"error":"the request could not be stored; try again"}']
            if row_id is None:  # its key is in the inbox already: a retry or a replay, handled once already
                log.info("ignored a repeated Slack request (%s)", key.split(":")[0])
                start_response("200 OK", [*answer[:2], dedupe.NO_RETRY])
                return [b""]
            lane.submit(self._handle, row_id, owner, body, query, kept, reply)
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

    def take_over(self, me: Fence) -> int:
        """Take the inbox rows a dead replica acked but may not have handled (its lease expired or moved to a
        new epoch; received within Slack's 5-minute window) and run each on the workers as `me`, exactly as a
        request just received: the listener, then the command's response_url answer. Returns how many were
        taken. bot.app calls it from each replica's work loop, every poll."""
        if self.store is None:
            return 0
        taken = 0
        for row in self.store.inbox_orphans(me, TAKE_OVER_BATCH):
            if not self.store.inbox_take(row, me):
                continue  # another replica took it first
            metrics.WORK_TAKEN_OVER.labels(kind="inbox").inc()
            log.info("taking over Slack request %s (%s) from replica %s (epoch %s)", row.id,
                     row.key.split(":")[0], row.owner, row.owner_epoch)
            body = row.body.decode("utf-8", "replace")
            kind, response_url, action_id, _ = _parse(body)
            lane = self.decisions if action_id in DECISIONS else self.workers
            lane.submit(self._handle, row.id, me, body, "", row.headers, response_url if kind == "command" else None)
            taken += 1
        return taken

    def _handle(self, row_id: int, me: Fence, body: str, query: str, headers: dict[str, str],
                response_url: str | None) -> None:
        """On a worker: run an inbox request held by `me` through Bolt, then mark it done. A row that is no
        longer `me`'s under a live lease (this replica was paused past its lease, and another one takes it
        over) is left to its new owner."""
        assert self.store is not None
        try:
            mine = self.store.inbox_owns(row_id, me)
        except Exception:  # noqa: BLE001 - the store is unreachable: run it anyway; a lost click is the worse outcome
            log.exception("could not check inbox row %s; handling it", row_id)
            mine = True
        if not mine:
            log.info("inbox row %s is no longer this replica's (lease %s epoch %s): left to its new owner",
                     row_id, me.name, me.epoch)
            return
        self._dispatch(body, query, {**headers, dedupe.INBOX_HEADER: str(row_id)}, response_url)
        try:
            self.store.inbox_done(row_id)
        except Exception:  # noqa: BLE001 - it ran; only the mark is lost (a replica taking it later runs it again)
            log.exception("could not mark inbox row %s done", row_id)

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


def _parse(body: str) -> tuple[str | None, str | None, str | None, str | None]:
    """("command" | block_actions | view_submission | ..., response_url, clicked action_id, request key) of a
    form-encoded Slack request: one parse, for the lane, the response_url and the inbox's key."""
    form = parse_qs(body, keep_blank_values=True)
    if "command" in form:
        fields = {name: values[0] for name, values in form.items() if values}
        return "command", fields.get("response_url"), None, _key(fields)
    payload = next(iter(form.get("payload") or ()), None)
    if payload is None:
        return None, None, None, None
    try:
        data = json.loads(payload)
        kind = data.get("type")
        actions = data.get("actions") or [{}]
        action_id = actions[0].get("action_id") if isinstance(actions[0], dict) else None
    except (ValueError, AttributeError, TypeError, IndexError):
        return None, None, None, None  # not JSON we understand: Bolt answers it
    return (str(kind) if kind else None), None, (str(action_id) if action_id else None), _key(data)


def _key(data: dict[str, Any]) -> str | None:
    """handlers.dedupe's key of the request, or None for a shape it cannot key (then it is not stored)."""
    try:
        return dedupe.request_key(data)
    except (AttributeError, TypeError, IndexError):
        return None


def _read_body(environ: dict[str, Any]) -> bytes:
    """The body, at most handlers.bodies.MAX_BODY bytes (TooLarge past it, before anything is verified or parsed)."""
    try:
        return read_body(environ)
    except BadLength:
        return b""  # a malformed Content-Length reads as an empty body, which then fails the signature
