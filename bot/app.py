"""The wiring: `wire` builds the domain (each collaborator handed the few others it uses), `build` adds the Bolt
app and the handlers, `serve` runs it all.

Called by bot.cli (`serve`, `demo`), the sandbox and tests. Routes: POST /slack/events (handlers.slack_http,
which verifies Slack's signature once, then Bolt), POST /alertmanager (handlers.alertmanager), GET /healthz
(200 once ready), GET /metrics (Prometheus text). Served by waitress, a production WSGI server, with bodies
capped at handlers.bodies.MAX_BODY (413 past it); Socket Mode instead of /slack/events (then a 404) when
SLACK_APP_TOKEN is set.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slack_bolt import App

from bot.incidents.alerts import Intake
from bot.incidents.approvers import Approvers
from bot.incidents.authorization import Authorization
from bot.incidents.close import Closer
from bot.incidents.detection import Detection
from bot.incidents.drills import DrillRunner
from bot.incidents.escalation import Escalation, Pager
from bot.incidents.oncall import OnCall
from bot.incidents.planning import Planner
from bot.incidents.postmortem import Postmortems
from bot.incidents.readiness import Readiness
from bot.incidents.recovery import Recovery
from bot.incidents.report import Reports
from bot.incidents.runner import Runner
from bot.incidents.runs import Runs
from bot.incidents.service import IncidentService
from bot.incidents.states import AUTO, CLOSE, ESCALATE, PLAN, VERIFY
from bot.incidents.verify import Verifier
from bot.infra import metrics, redact
from bot.infra.config import Settings
from bot.infra.model_registry import ModelRegistry
from bot.infra.prom import Prometheus
from bot.infra.replica import Replica
from bot.infra.scheduler import Scheduler
from bot.infra.store import Fenced, Incident, Store, WorkItem, fenced
from bot.slack.slack_out import SlackError, SlackOut, make_client
from bot.slack.timeline import Timeline
from bot.slo.evaluation import Evaluator
from bot.slo.gate import Gate
from bot.slo.policy import Policy
from executors.registry import Clients, Registry, default_registry
from handlers import alertmanager, register_handlers
from handlers.bodies import MAX_BODY
from handlers.slack_http import SlackRoute

log = logging.getLogger(__name__)

# Slack sends a burst of requests when several people click at once; each waits on an HTTP thread only for its
# signature check (handlers.slack_http acks clicks and commands itself). Threads start only when needed.
HTTP_THREADS = 64
QUERY_SHARE = 0.45  # of evaluate_every: the longest a Prometheus query may take (twice, with its retry)

# How `serve` runs waitress (tests serve with the same settings through `http_server`). Waitress reads each
# request body whole before calling the app; its defaults accept 1 GiB and spool anything past 512 KiB to a
# temp file, both open to anyone who can reach the port. Here a Content-Length over MAX_BODY is answered 413
# by waitress without reading the body (it refuses a length >= max_request_body_size, so MAX_BODY itself
# passes), and a chunked body is cut off with a 413 once it passes MAX_BODY. inbuf_overflow stays above
# anything accepted, plus the 8 KiB read in which waitress notices a chunked body is over: nothing goes to disk.
# connection_limit: waitress's default of 100 open connections leaves the 101st Slack request of a burst waiting to
# be accepted (benchmark 9: 250 at once), and lets 100 idle connections from anyone shut Slack out; idle ones are
# closed after channel_timeout.
WAITRESS_OPTIONS: dict[str, Any] = {
    "threads": HTTP_THREADS, "ident": "rollback-bot", "connection_limit": 1000, "channel_timeout": 30,
    "max_request_body_size": MAX_BODY + 1,
    "inbuf_overflow": 2 * MAX_BODY,
}


class RedactSecrets(logging.Filter):
    """Replaces any configured token or secret, and the credentials of any URL (bot.infra.redact: userinfo, token-like
    query parameters), in a log record with ***, whoever logged it. Besides the secrets it is given it uses
    bot.infra.redact's process-wide ones, which build() adds (the passwords in PROMETHEUS_URL, MLFLOW_TRACKING_URI,
    DATABASE_URL and the policy's git URLs)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]
        self._redactor = redact.Redactor(self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        # A traceback repeats the exception's message (a Slack URL, an echoed token): format it here, redacted;
        # the handler's formatter then prints this exc_text instead of formatting the exception again.
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True

    def _redact(self, text: str) -> str:
        return redact.redact(self._redactor(text))


@dataclass
class Bot:
    """Every collaborator of the domain, each built once by `wire` and handed the few others it uses; nothing
    below receives this object. `start` picks up what was in flight and starts the evaluation loop."""

    policy: Policy
    store: Store
    slack: SlackOut
    scheduler: Scheduler
    runner: Runner
    evaluator: Evaluator
    incidents: IncidentService
    runs: Runs
    detection: Detection
    recovery: Recovery
    oncall: OnCall
    intake: Intake
    replica: Replica
    escalation: Escalation | None = None

    def start(self) -> None:
        """Join the replicas (bot.infra.replica), give in-flight work a row (bot.incidents.recovery), then run the
        replica's heartbeat and work poll and the evaluation loop on the local ticker."""
        self.start_work()
        self.recovery.adopt_in_flight()
        self.scheduler.every("evaluate", self.policy.evaluate_every, self.evaluate)

    def start_work(self) -> None:
        """Join and run the durable work (plan runs, verification, timers), without the evaluation loop."""
        self.replica.start()
        self.scheduler.start()

    def evaluate(self) -> None:
        """One evaluation cycle of this replica's shards, every write of it under the replica's lease."""
        try:
            with fenced(self.replica.fence):
                self.detection.evaluate_once()
                # In-flight incidents a dead replica left without their work row (it died between the move and
                # the row), once older than a lease ttl: never one a live replica is about to give its row.
                self.recovery.adopt_in_flight(older_than=self.replica.ttl, at_start=False)
        except Fenced as exc:
            log.warning("evaluation cycle stopped: %s", exc)

    def stop(self) -> None:
        self.scheduler.shutdown()
        self.replica.stop()


def wire(*, policy: Policy, store: Store, prom: Prometheus, slack: SlackOut, mlflow: Any, scheduler: Scheduler,
         registry: Registry | None = None, clients: Clients | None = None, clock: Callable[[], float] = time.time,
         replica: Replica | None = None, pager: Pager | None = None) -> Bot:
    """Build the domain: each part gets exactly the collaborators it uses. Without a `replica`, the runtime is the
    only replica of its database (the id hostname-pid)."""
    replica = replica or Replica(store, scheduler, exclusive=True)
    timeline = Timeline(store, slack, policy.services.get, replica_id=replica.id, claim_ttl=replica.ttl)
    approvers = Approvers(slack.usergroup_users, store=store)
    authz = Authorization(approvers)
    registry = registry or default_registry()
    runner = Runner(registry, clients or Clients(mlflow=mlflow), store)
    models = ModelRegistry(mlflow)
    gate = Gate(store, models, clock=clock, may_act=replica.may_act, policy=policy,
                readiness=lambda svc, candidate, outgoing: readiness.check(svc, promoting=(candidate, outgoing)),
                prom=prom)
    readiness = Readiness(runner=runner, prom=prom, approvers=approvers, baselines=gate.baselines)
    drills = DrillRunner(store=store, runner=runner, prom=prom, authz=authz, say=timeline.say,
                         mention=timeline.mention_approvers, clock=clock)
    evaluator = Evaluator(store, prom, baselines=gate.baselines)
    verifier = Verifier(store, prom, timeline, clock=clock, baselines=gate.baselines)
    closer = Closer(store=store, prom=prom, slack=slack, timeline=timeline, gate=gate, registry=registry)
    escalation = Escalation(policy=policy, store=store, timeline=timeline, work=replica, pager=pager,
                            thread_link=lambda incident: thread_link(slack, incident), clock=clock)
    runs = Runs(policy=policy, store=store, timeline=timeline, runner=runner, authz=authz, verifier=verifier,
                closer=closer, gate=gate, work=replica, clock=clock, escalation=escalation)
    incidents = IncidentService(policy=policy, store=store, timeline=timeline, authz=authz,
                                planner=Planner(runner, models), runs=runs, work=replica, clock=clock,
                                escalation=escalation)
    detection = Detection(policy=policy, evaluator=evaluator, store=store, gate=gate, timeline=timeline,
                          open_incident=incidents.open_detected, owns=replica.owns,
                          after_promotion=drills.after_promotion, clock=clock)
    recovery = Recovery(policy=policy, store=store, timeline=timeline, runs=runs, work=replica,
                        auto_approve=incidents.auto_approve, clock=clock)
    handlers: dict[str, Callable[[int, bool], float | None]] = {
        PLAN: recovery.plan, VERIFY: recovery.verify, AUTO: recovery.auto, CLOSE: recovery.close,
        ESCALATE: escalation.due}
    for kind, handle in handlers.items():
        replica.handlers[kind] = functools.partial(_on_incident, handle)
    replica.on_shards_changed.append(evaluator.forget_states)
    oncall = OnCall(policy=policy, store=store, models=models, check_approver=incidents.check_approver,
                    check_admin=incidents.check_admin, say=timeline.say, readiness=readiness, drills=drills,
                    reports=Reports(policy=policy, store=store, clock=clock), clock=clock,
                    postmortems=Postmortems(policy=policy, store=store, prom=prom, slack=slack, clock=clock))
    intake = Intake(policy=policy, store=store, timeline=timeline,
                    open_incident=lambda svc, reading: incidents.open_incident(svc, reading, source="alertmanager"))
    return Bot(policy, store, slack, scheduler, runner, evaluator, incidents, runs, detection, recovery, oncall,
               intake, replica, escalation)


def thread_link(slack: SlackOut, incident: Incident) -> str | None:
    """The link to an incident's thread (its warning), for PagerDuty: `<workspace>archives/<channel>/p<ts>`."""
    url = slack.workspace_url()
    if not url or not incident.message_ts or not incident.channel:
        return None
    return f"{url.rstrip('/')}/archives/{incident.channel}/p{incident.message_ts.replace('.', '')}"


def _on_incident(handle: Callable[[int, bool], float | None], item: WorkItem, taken_over: bool) -> float | None:
    assert item.incident_id is not None, f"work {item.key} names no incident"
    return handle(item.incident_id, taken_over)


@dataclass
class Runtime:
    settings: Settings
    bot: Bot
    bolt: App
    ready: threading.Event

    @functools.cached_property
    def slack_route(self) -> SlackRoute | None:
        """The HTTP route for Slack's requests (None in Socket Mode). Each click and command is stored before its ack
        (the inbox, owned under this replica's lease); the replica's poll takes over a dead replica's."""
        if self.settings.slack_app_token:
            return None
        route = SlackRoute(self.bolt, self.settings.slack_signing_secret, self.bot.slack, store=self.bot.store,
                           fence=lambda: self.bot.replica.fence)
        self.bot.replica.sweepers.append(route.take_over)
        return route

    def wsgi(self) -> Callable[..., Iterable[bytes]]:
        # Socket Mode (SLACK_APP_TOKEN) receives Slack's requests over its WebSocket: HTTP then has no Slack
        # route at all, so /slack/events is a 404 like any other unknown path.
        slack_route = self.slack_route
        alerts = alertmanager.Route(self.bot.intake, self.settings.alertmanager_token,
                                    self.settings.alertmanager_service_label)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
            if path == "/healthz" and method == "GET":
                replica = self.bot.replica
                ok = self.ready.is_set() and not replica.stale
                status = "ok" if ok else "lease lost" if replica.stale else "starting"
                body = {"status": status, "replica": replica.id, "epoch": replica.epoch, "leases": replica.leases()}
                start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
                return [json.dumps(body).encode() + b"\n"]
            if path == "/metrics" and method == "GET":
                # ?name[]=rollback_evaluation_seconds&name[]=...: only those, like prometheus_client's own
                # exposition (with 10,000 services the whole text is 20,000 SLO gauges, 250 ms to render).
                names = parse_qs(str(environ.get("QUERY_STRING", ""))).get("name[]")
                registry = metrics.REGISTRY.restricted_registry(names) if names else metrics.REGISTRY
                start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
                return [generate_latest(registry)]
            if path == "/alertmanager":
                return alerts(environ, start_response)
            if slack_route is None:
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found: Socket Mode is on, Slack's requests come over its WebSocket\n"]
            return slack_route(environ, start_response)

        return app


def build(settings: Settings, policy: Policy, *, mlflow: Any = None) -> Runtime:
    """Everything `serve` runs, not yet started. `mlflow` lets tests pass their own client."""
    if mlflow is None:
        # MLflow's client retries 7 times with exponential backoff by default (minutes when the server is
        # down); a rollback waiting on it should fail fast enough for a human to act. Explicit settings win.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        from mlflow import MlflowClient

        mlflow = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    redact.configure(settings, policy)  # the secrets Slack messages, logs and audit rows must never carry
    client = make_client(settings.slack_bot_token, settings.slack_api_url)
    # A query may take up to QUERY_SHARE of a cycle (one retry included, the cycle still ends in time): a grouped
    # query over 10,000 services takes seconds on a busy Prometheus, where the 5 s floor would fail every service.
    prom = Prometheus(settings.prometheus_url, timeout=max(5.0, QUERY_SHARE * policy.evaluate_every))
    store, scheduler = Store(settings.database_url), Scheduler()
    replica = Replica(store, scheduler, replica_id=settings.replica_id, ttl=settings.lease_ttl,
                      exclusive=settings.exclusive)
    pager = None
    if settings.pagerduty_routing_key:
        from bot.infra.pagerduty import PagerDuty

        try:
            pager = PagerDuty(settings.pagerduty_routing_key, settings.pagerduty_events_url)
        except ValueError as exc:  # the URL's path or the CA bundle: the bot starts without paging, loudly
            log.error("PagerDuty is not set up (%s): escalation pages nobody", exc)
    elif any(svc.escalate and svc.escalate.pagerduty for svc in policy.services.values()):
        log.warning("the policy pages PagerDuty (escalate.pagerduty) but PAGERDUTY_ROUTING_KEY is not set: escalation "
                    "mentions the approvers again and pages nobody")
    bot = wire(policy=policy, store=store, prom=prom, slack=SlackOut(client), mlflow=mlflow, scheduler=scheduler,
               clients=Clients(mlflow=mlflow, helm=settings.helm_bin, workdir=settings.git_workdir), replica=replica,
               pager=pager)
    # The client carries the bot token (and SLACK_API_URL); Bolt takes the token from it. No auth.test at
    # start: with Slack down (5xx, unreachable) Bolt would raise and a restarted bot would crash-loop instead
    # of picking up its incidents; Bolt checks the token on the first request instead.
    # process_before_response: Bolt runs each listener to its end on the thread that dispatched it. Clicks and
    # commands reach Bolt on handlers.slack_http's workers, already acked, so nothing waits for Bolt's own ack (and
    # its 10 ms ack polling is gone); a modal submission's ack (with its errors) comes after a short listener.
    # In Socket Mode nothing acks before Bolt: the socket's ack is sent when App.dispatch returns, so there Bolt
    # runs each listener on its own threads and returns at the listener's ack() (within Slack's 3 s, whatever the
    # listener does after it: a held chat.postEphemeral, a slow MLflow).
    # request_verification_enabled=False: handlers.slack_http verifies every request over HTTP before Bolt sees
    # it (Socket Mode has no signatures), so Bolt does not verify it a second time (and is not given the secret).
    bolt = App(client=client, process_before_response=not settings.slack_app_token, token_verification_enabled=False,
               request_verification_enabled=False)
    register_handlers(bolt, bot.incidents, bot.oncall, bot.slack, bot.store)
    return Runtime(settings, bot, bolt, threading.Event())


def check_token(runtime: Runtime) -> None:
    """Say at start whether Slack accepts the bot token. Never fatal: with Slack down the bot must still come up
    and pick up its incidents (Bolt checks the token on the first request too)."""
    try:
        who = runtime.bot.slack.whoami()
    except SlackError as exc:
        log.warning("Slack did not accept auth.test at start (%s); check SLACK_BOT_TOKEN. Serving anyway.", exc)
        return
    log.info("Slack accepts the bot token: %s", who)


def http_server(app: Callable[..., Iterable[bytes]], host: str, port: int, **overrides: Any) -> Any:
    """The waitress server `serve` runs for `app` (WAITRESS_OPTIONS), not yet running; port 0 picks a free one.
    Tests pass `overrides` (fewer threads) and keep the body limits."""
    import waitress

    return waitress.create_server(app, host=host, port=port, **{**WAITRESS_OPTIONS, **overrides})


def serve(runtime: Runtime, host: str = "0.0.0.0", port: int = 3000) -> None:
    """Start the loops and serve until interrupted."""
    runtime.bot.start()
    if runtime.settings.slack_app_token:
        # slack_sdk's built-in client, on Bolt's WebClient: apps.connections.open goes to SLACK_API_URL with the
        # app-level token. Not the websocket-client adapter: after a `disconnect` it can send an ack on a session
        # not yet open and lose it (tests/test_socket_mode.py); the built-in one only reads a new connection late.
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        handler = SocketModeHandler(runtime.bolt, runtime.settings.slack_app_token)
        handler.connect()
        log.info("Socket Mode connected; HTTP serves only /healthz, /metrics and /alertmanager")
    threading.Thread(target=check_token, args=(runtime,), name="auth-test", daemon=True).start()
    runtime.ready.set()
    log.info("rollback-bot serving on http://%s:%s", host, port)
    try:
        http_server(runtime.wsgi(), host, port).run()
    finally:
        runtime.bot.stop()
