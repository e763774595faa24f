"""`rollback-bot demo`: the whole rollback story on this machine, with no Slack workspace.

Called by bot.cli (`rollback-bot demo [--headless] [--port P]`). Starts, all on 127.0.0.1: the fake Slack
Web API, an MLflow registry in a sqlite file (in-process client, no `mlflow server`), the simulated model
service (v1 fast and accurate, v2 slow with a bad AUC), a real Prometheus scraping it, and the real bot
(`bot.app.build`, served by waitress on `port`). A scripted on-call engineer then plays the story through the
wire formats Slack uses (signed block_actions posted to /slack/events): the gate promotes v2, v2 breaches,
the warning comes, they click Dry run, then Roll back; the bot flips @champion back to v1, verifies the SLOs in
the thread and freezes v2 (rollback_blocked). Everything the fake Slack receives is printed as a transcript.

Returns 0 when the service recovered and v2 is blocked, 1 otherwise, 2 when Prometheus is missing or the
port is taken. Every process and the temp dir are removed on exit, on Ctrl-C and on SIGTERM too.
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

from bot import blocks
from bot.policy import parse_policy
from bot.sandbox.model_service import ModelServiceSimulator, VersionProfile, alias_reader, seed_registry
from bot.sandbox.servers import PrometheusServer, prometheus_binary
from bot.sandbox.signing import block_actions_body, post_signed
from bot.sandbox.slack_api import Call, FakeSlackAPI

SERVICE, MODEL, CHANNEL, ONCALL = "model-svc", "recommender", "C0MODELSVC", "U0ONCALL"
SECRET, TOKEN = "demo-signing-secret", "xoxb-demo-token"
FAST = VersionProfile(latency_seconds=0.05, error_rate=0.0, auc=0.86)
SLOW = VersionProfile(latency_seconds=0.45, error_rate=0.02, auc=0.71)
P95 = f'histogram_quantile(0.95, sum by (le) (rate(model_request_latency_seconds_bucket{{service="{SERVICE}"}}[5s])))'
POLICY = f"""
evaluate_every: 1s
services:
  {SERVICE}:
    channel: {CHANNEL}
    approvers: [{ONCALL}]
    model: {MODEL}
    slos:
      - name: p95-latency
        query: '{P95}'
        above: 0.25
        for: 3s
      - name: auc
        query: 'min(model_auc{{service="{SERVICE}"}})'
        below: 0.8
        for: 3s
    rollback:
      - mlflow_alias: {{model: {MODEL}, alias: champion, to: previous_champion}}
    verify: {{every: 1s, within: 60s, stable_for: 3s}}
    promote: {{from: candidate, to: champion, healthy_for: 3s}}
"""


class Transcript:
    """Prints what the fake Slack received (messages, thread replies, edits) and the user's actions, in order."""

    def __init__(self, slack: FakeSlackAPI, start: float) -> None:
        self.slack, self.start = slack, start
        self.seen = 0
        self.shown: set[str] = set()  # texts already printed, so an edit that only changes blocks is shown by them
        self.lock = threading.Lock()

    def line(self, at: float, who: str, text: str) -> None:
        body = text.strip().replace("\n", "\n" + " " * 31)
        print(f"+{at - self.start:6.1f}s  {who:<20} {body}", flush=True)

    def pump(self) -> None:
        with self.lock:
            calls = self.slack.calls()
            for call in calls[self.seen:]:
                self._show(call)
            self.seen = len(calls)

    def act(self, text: str) -> None:
        self.pump()
        with self.lock:
            self.line(time.time(), f">> {ONCALL}", text)

    def _show(self, call: Call) -> None:
        p = call.params
        text = str(p.get("text") or "")
        if call.method == "chat.postMessage":
            self.line(call.at, "  thread reply" if p.get("thread_ts") else f"#{p.get('channel')}", text)
        elif call.method == "chat.update":
            sections = [b["text"]["text"] for b in p.get("blocks") or [] if b.get("type") == "section" and "text" in b]
            if text in self.shown and sections:  # e.g. the warning: same headline, new status line
                text = sections[-1]
            if text not in self.shown:
                self.line(call.at, "  (edited)", text)
        elif call.method == "chat.postEphemeral":
            self.line(call.at, f"  (only {p.get('user')})", text)
        self.shown.add(text)

    def follow(self, stop: threading.Event) -> None:
        while not stop.wait(0.2):
            self.pump()


def _wait(what: str, timeout: float, predicate: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: servers run in their own sessions


def run_demo(headless: bool, port: int) -> int:
    binary = prometheus_binary()
    if binary is None:
        print("The demo needs a real Prometheus and `prometheus` is not on PATH.\n"
              "Install it with: apt-get update && apt-get install -y prometheus   (or run `make demo`)",
              file=sys.stderr)
        return 2
    try:  # fail before the 10 s of set-up, not after
        with socket.create_server(("127.0.0.1", port)):
            pass
    except OSError as exc:  # the port is taken: say which and how to pick another
        print(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}; pick another with --port", file=sys.stderr)
        return 2
    if not headless:
        print("A browser sandbox (chat page) is planned; this is the scripted run (same as --headless).")
    workdir = Path(tempfile.mkdtemp(prefix="rollback-bot-demo-"))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with ExitStack() as stack:
            return _play(stack, workdir, binary, port)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the servers and removing the temp dir", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(workdir, ignore_errors=True)


def _play(stack: ExitStack, workdir: Path, binary: str, port: int) -> int:
    import waitress
    from mlflow import MlflowClient

    from bot.app import build
    from bot.config import Settings

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)  # their INFO lines on db migrations drown the transcript
    # build() gives Bolt both a token and a client; Bolt resets its logger's level, so filter that one line.
    logging.getLogger("slack_bolt.App").addFilter(lambda r: "will be unused" not in r.getMessage())
    start = time.time()
    print(f"rollback-bot demo: {SERVICE} serves @champion of MLflow model `{MODEL}`; everything on 127.0.0.1",
          flush=True)
    slack = stack.enter_context(FakeSlackAPI())
    log = Transcript(slack, start)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow = MlflowClient(tracking_uri=uri, registry_uri=uri)
    v1, v2 = seed_registry(mlflow, MODEL, versions=2)
    mlflow.set_registered_model_alias(MODEL, "champion", v1)
    mlflow.set_registered_model_alias(MODEL, "candidate", v2)
    log.line(time.time(), "[setup]", f"MLflow registry {uri}: v{v1} @champion (p95 50 ms, AUC 0.86), "
                                     f"v{v2} @candidate (p95 450 ms, AUC 0.71)")
    sim = stack.enter_context(ModelServiceSimulator(SERVICE, champion=alias_reader(mlflow, MODEL),
                                                    profiles={v1: FAST, v2: SLOW}, default=FAST))
    prom = stack.enter_context(PrometheusServer(workdir / "prometheus", targets=[sim.target], binary=binary))
    prom.wait_for_series(f'model_auc{{service="{SERVICE}"}}')
    log.line(time.time(), "[setup]", f"Prometheus {prom.url} scrapes the model service {sim.url} every 1s")

    settings = Settings(slack_bot_token=TOKEN, slack_signing_secret=SECRET, slack_api_url=slack.url,
                        prometheus_url=prom.url, mlflow_tracking_uri=uri,
                        database_url=f"sqlite:///{workdir / 'bot.db'}")
    runtime = build(settings, parse_policy(POLICY, "demo-policy.yaml"), mlflow=mlflow)
    server = waitress.create_server(runtime.wsgi(), host="127.0.0.1", port=port, threads=8)
    stack.callback(server.task_dispatcher.shutdown)
    stack.callback(server.close)
    threading.Thread(target=server.run, name="waitress", daemon=True).start()
    runtime.bot.start()
    stack.callback(runtime.bot.scheduler.shutdown)  # stopped before Prometheus, so no loop sees it vanish
    runtime.ready.set()
    events = f"http://127.0.0.1:{port}/slack/events"
    _wait("the bot's /healthz", 10, lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok)
    log.line(time.time(), "[setup]", f"rollback-bot serving http://127.0.0.1:{port} (POST /slack/events); "
                                     f"policy: breach for 3s, verify stable for 3s, promote when healthy 3s")
    stop = threading.Event()
    stack.callback(stop.set)
    threading.Thread(target=log.follow, args=(stop,), name="transcript", daemon=True).start()

    def posted(predicate: Callable[[Call], bool], what: str, timeout: float) -> Call:
        try:
            return slack.wait_for(lambda c: c.method == "chat.postMessage" and predicate(c), timeout=timeout)
        except TimeoutError as exc:  # shortened: the fake's message lists every call
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}") from exc

    try:
        posted(lambda c: "promoted" in c.params.get("text", ""), "the promotion note", 60)
        posted(lambda c: any(b.get("type") == "actions" for b in c.params.get("blocks") or []), "the warning", 60)
        warning = next(m for m in reversed(slack.messages(CHANNEL)) if m.get("blocks"))
        incident = next(e["value"] for b in warning["blocks"] for e in b.get("elements") or []
                        if e.get("action_id") == blocks.APPROVE)

        def click(action_id: str, what: str) -> float:
            log.act(what)
            body = block_actions_body(user_id=ONCALL, channel_id=CHANNEL, message_ts=warning["ts"],
                                      action_id=action_id, value=incident, message=warning,
                                      response_url=slack.response_url)
            response = post_signed(events, SECRET, body)
            if response.status_code != 200:
                raise RuntimeError(f"/slack/events answered {response.status_code}: {response.text}")
            return time.time()

        click(blocks.DRY_RUN, 'clicks "Dry run" on the warning')
        posted(lambda c: "Dry run" in c.params.get("text", ""), "the dry run in the thread", 15)
        clicked = click(blocks.APPROVE, 'reads the plan, clicks "Roll back" and confirms the dialog')
        recovered = posted(lambda c: c.params.get("thread_ts") == warning["ts"]
                           and "Recovered" in c.params.get("text", ""), '"Recovered" in the thread', 90)
        tag = _wait("the rollback_blocked tag", 15,
                    lambda: mlflow.get_model_version(MODEL, v2).tags.get("rollback_blocked"))
        champion = str(mlflow.get_model_version_by_alias(MODEL, "champion").version)
    except (TimeoutError, RuntimeError) as exc:  # a step of the story did not happen: say which, exit 1
        log.pump()
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    log.pump()
    ok = champion == v1 and tag == "true"
    print(f"\n{'OK' if ok else 'FAILED'}: Recovered {recovered.at - start:.1f}s after start "
          f"({recovered.at - clicked:.1f}s after the Roll back click); MLflow: @champion is v{champion}, "
          f"v{v2} rollback_blocked={tag}", flush=True)
    return 0 if ok else 1
