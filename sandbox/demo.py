"""`rollback-bot demo`: the whole rollback story on this machine, with no Slack workspace.

Called by bot.cli (`rollback-bot demo [--headless] [--port P]`). Starts, all on 127.0.0.1: the fake Slack
Web API, an MLflow registry in a sqlite file (in-process client, no `mlflow server`) with versions 1-5 of
`recommender` (v4 @champion, v5 @candidate), the simulated model service (v1-v4 fast and accurate, v5 slow
with a bad AUC), a real Prometheus scraping it, the real bot (`bot.app.build`, served by waitress on a free
port) and the chat page (sandbox.chat) on `port`, which plays Slack: it shows what the bot sent to the
fake Web API and posts the user's commands and clicks, signed, to the bot's /slack/events.

The story: the gate promotes v5, v5 breaches, the warning comes with buttons, the on-call approver clicks
Roll back and confirms, the bot flips @champion back to v4, verifies the SLOs in the thread, and freezes
(v5 rollback_blocked, auto-promotion off). Without --headless a person plays the approver in the browser
and the demo runs until Ctrl-C. With --headless a scripted approver does the same through the chat page's
own endpoints (as the browser would) and the run ends when the story does.

The terminal shows a transcript with times since start. Headless returns 0 when the service recovered and
v5 is blocked, 1 otherwise; both return 2 when Prometheus is missing or the port is taken. Every process
and the temp dir are removed on exit, on Ctrl-C and on SIGTERM too.
"""

from __future__ import annotations

import html
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bot.slack import blocks
from bot.slo.policy_file import parse_policy
from sandbox.chat import ChatPage
from sandbox.chat.server import StatusRow
from sandbox.model_service import ModelServiceSimulator, VersionProfile, alias_reader, seed_registry
from sandbox.servers import PrometheusServer, prometheus_binary
from sandbox.slack_api import Call, FakeSlackAPI

SERVICE, MODEL, CHANNEL, ONCALL = "model-svc", "recommender", "C0MODELSVC", "U0ONCALL"
SECRET, TOKEN = "demo-signing-secret", "xoxb-demo-token"
FAST = VersionProfile(latency_seconds=0.05, error_rate=0.0, auc=0.86)
SLOW = VersionProfile(latency_seconds=0.45, error_rate=0.02, auc=0.71)
BANNER = (f"*You are <@{ONCALL}>, the on-call approver.* Watch the gate promote `v5`, then v5 break its latency "
          f"and AUC SLOs. When rollback-bot posts its warning, click *Roll back* and confirm. Open the thread "
          f"(_N replies_) to watch the verification until *Recovered*. Or type `/rollback help` below.")
VERSIONS = 5  # v1..v4 are the history (v4 serving), v5 is the new candidate that degrades
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
        kind: latency
        query: '{P95}'
        above: 0.25
        for: 3s
      - name: auc
        kind: quality
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
        # As a person reads it in Slack: &lt; &gt; &amp; (Slack's escaping of < > &) shown as the characters.
        body = html.unescape(text.strip()).replace("\n", "\n" + " " * 31)
        print(f"+{at - self.start:6.1f}s  {who:<20} {body}", flush=True)

    def pump(self) -> None:
        with self.lock:
            calls = self.slack.calls()
            for call in calls[self.seen:]:
                self._show(call)
            self.seen = len(calls)

    def act(self, who: str, text: str) -> None:
        """A line from the chat page: what the user did, or how Slack showed the bot's answer."""
        self.pump()
        with self.lock:
            self.line(time.time(), who, text)

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
        elif call.method == "response_url" and p.get("response_type") == "in_channel":
            self.line(call.at, f"#{p.get('channel')} (respond)", text)
        elif call.method in ("chat.postEphemeral", "response_url"):
            self.line(call.at, f"  (only {p.get('user')})", text)
        elif call.method == "files.completeUploadExternal":
            names = ", ".join(str(f.get("title") or f.get("id")) for f in p.get("files") or [] if isinstance(f, dict))
            self.line(call.at, "  file shared", names)
        self.shown.add(text)

    def follow(self, stop: threading.Event) -> None:
        while not stop.wait(0.2):
            self.pump()


@dataclass
class Sandbox:
    """Everything running, for the scripted or the human approver."""

    slack: FakeSlackAPI
    page: ChatPage
    mlflow: Any  # MlflowClient
    log: Transcript
    start: float
    good: str  # the version serving before the story (v4)
    bad: str  # the candidate that degrades (v5)
    frozen: Callable[[], bool]  # the bot's store says auto-promotion of the service is frozen

    def posted(self, predicate: Callable[[Call], bool], what: str, timeout: float) -> Call:
        try:
            return self.slack.wait_for(lambda c: c.method == "chat.postMessage" and predicate(c), timeout=timeout)
        except TimeoutError as exc:  # shortened: the fake's message lists every call
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}") from exc

    def outcome(self) -> tuple[str, str | None]:
        """(@champion version, the bad version's rollback_blocked tag)."""
        champion = str(self.mlflow.get_model_version_by_alias(MODEL, "champion").version)
        return champion, self.mlflow.get_model_version(MODEL, self.bad).tags.get("rollback_blocked")


def _wait(what: str, timeout: float, predicate: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _settle(slack: FakeSlackAPI, *, quiet: float, limit: float) -> None:
    """Wait until the bot has made no Slack call for `quiet` seconds (at most `limit` seconds)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        calls = slack.calls()
        if not calls or time.time() - calls[-1].at >= quiet:
            return
        time.sleep(0.2)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: servers run in their own sessions


def _recovered(call: Call) -> bool:
    """The bot's "Recovered" reply in a warning's thread."""
    return bool(call.params.get("thread_ts")) and "Recovered" in str(call.params.get("text", ""))


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
    workdir = Path(tempfile.mkdtemp(prefix="rollback-bot-demo-"))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with ExitStack() as stack:
            sandbox = _start(stack, workdir, binary, port)
            return _script(sandbox) if headless else _serve(sandbox)
    except KeyboardInterrupt:
        print("\nstopping the servers and removing the temp dir", file=sys.stderr)
        return 130 if headless else 0  # Ctrl-C is how the interactive sandbox ends
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(workdir, ignore_errors=True)


def _start(stack: ExitStack, workdir: Path, binary: str, port: int) -> Sandbox:
    import waitress
    from mlflow import MlflowClient

    from bot.app import build
    from bot.infra.config import Settings

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
    versions = seed_registry(mlflow, MODEL, versions=VERSIONS)
    older, good, bad = versions[-3], versions[-2], versions[-1]
    mlflow.set_registered_model_alias(MODEL, "previous_champion", older)
    mlflow.set_registered_model_alias(MODEL, "champion", good)
    mlflow.set_registered_model_alias(MODEL, "candidate", bad)
    log.line(time.time(), "[setup]", f"MLflow registry {uri}: v1-v{good} history, v{good} @champion (p95 50 ms, "
                                     f"AUC 0.86), v{bad} @candidate (p95 450 ms, AUC 0.71)")
    profiles = {v: FAST for v in versions[:-1]} | {bad: SLOW}
    sim = stack.enter_context(ModelServiceSimulator(SERVICE, champion=alias_reader(mlflow, MODEL),
                                                    profiles=profiles, default=FAST))
    prom = stack.enter_context(PrometheusServer(workdir / "prometheus", targets=[sim.target], binary=binary))
    prom.wait_for_series(f'model_auc{{service="{SERVICE}"}}')
    log.line(time.time(), "[setup]", f"Prometheus {prom.url} scrapes the model service {sim.url} every 1s")

    settings = Settings(slack_bot_token=TOKEN, slack_signing_secret=SECRET, slack_api_url=slack.url,
                        prometheus_url=prom.url, mlflow_tracking_uri=uri,
                        database_url=f"sqlite:///{workdir / 'bot.db'}")
    runtime = build(settings, parse_policy(POLICY, "demo-policy.yaml"), mlflow=mlflow)
    server = waitress.create_server(runtime.wsgi(), host="127.0.0.1", port=0, threads=8)
    stack.callback(server.task_dispatcher.shutdown)
    stack.callback(server.close)
    threading.Thread(target=server.run, name="waitress", daemon=True).start()
    bot_url = f"http://127.0.0.1:{server.effective_port}"
    _wait("the bot's /healthz", 10, lambda: requests.get(f"{bot_url}/healthz", timeout=1).status_code in (200, 503))

    def frozen() -> bool:
        return runtime.bot.store.frozen(SERVICE) is not None

    def status() -> list[StatusRow]:
        return _status(mlflow, versions, profiles, frozen=frozen)

    page = stack.enter_context(ChatPage(
        slack, events_url=f"{bot_url}/slack/events", secret=SECRET, user=ONCALL, user_name="oncall",
        channel=CHANNEL, channel_name=SERVICE, status=status, observe=log.act, port=port, banner=BANNER))
    runtime.bot.start()
    stack.callback(runtime.bot.scheduler.shutdown)  # stopped before Prometheus, so no loop sees it vanish
    runtime.ready.set()
    log.line(time.time(), "[setup]", f"rollback-bot serving {bot_url} (POST /slack/events); policy: breach for "
                                     f"3s, verify stable for 3s, promote when healthy 3s")
    log.line(time.time(), "[setup]", f"chat page (Slack's side) on {page.url}")
    stop = threading.Event()
    stack.callback(stop.set)
    threading.Thread(target=log.follow, args=(stop,), name="transcript", daemon=True).start()
    return Sandbox(slack=slack, page=page, mlflow=mlflow, log=log, start=start, good=good, bad=bad, frozen=frozen)


def _status(mlflow: Any, versions: list[str], profiles: dict[str, VersionProfile],
            frozen: Callable[[], bool]) -> list[StatusRow]:
    """The chat page's "behind the scenes" rows: what MLflow and the bot's store say right now."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = mlflow.get_registered_model(MODEL).aliases
        tagged = [v for v in versions if mlflow.get_model_version(MODEL, v).tags.get("rollback_blocked") == "true"]
    except MlflowException as exc:  # the registry is busy or gone (shutting down): say so in the panel
        return [("MLflow", f"unreadable: {exc.error_code}", "bad")]
    champion = str(aliases.get("champion", "?"))
    serving = profiles.get(champion)
    slow = serving is None or serving.latency_seconds > 0.25 or serving.auc < 0.8  # the demo policy's targets
    health = f"{serving.latency_seconds * 1000:.0f} ms, {serving.auc:.2f}" if serving else "?"

    def alias(name: str) -> str:
        return f"v{aliases[name]}" if name in aliases else "none"

    return [(f"{SERVICE} serves", f"v{champion}", "bad" if slow else "good"),
            ("p95, AUC", health, "bad" if slow else "good"),
            ("@champion", alias("champion"), ""), ("@candidate", alias("candidate"), ""),
            ("@previous_champion", alias("previous_champion"), ""),
            ("rollback_blocked", ", ".join(f"v{v}" for v in tagged) or "none", "note" if tagged else ""),
            ("auto-promotion", "frozen" if frozen() else "on", "note" if frozen() else "")]


def _serve(sb: Sandbox) -> int:
    """A person plays the approver in the browser; report the story's times; run until Ctrl-C."""
    print(f"\n  Open {sb.page.url} in a browser: you are @oncall in #{SERVICE}.\n"
          f"  When the warning comes, click \"Roll back\" and confirm. Ctrl-C stops the sandbox.\n", flush=True)
    warned = recovered = None
    while recovered is None:
        calls = sb.slack.calls("chat.postMessage")
        if warned is None:
            warned = next((c for c in calls if any(b.get("type") == "actions" for b in c.params.get("blocks") or [])),
                          None)
        recovered = next((c for c in calls if _recovered(c)), None)
        time.sleep(0.3)
    sb.log.pump()
    champion, tag = sb.outcome()
    waited = f", {recovered.at - warned.at:.1f}s after the warning" if warned else ""
    print(f"\nRecovered {recovered.at - sb.start:.1f}s after start{waited}; MLflow: @champion is v{champion}, "
          f"v{sb.bad} rollback_blocked={tag}. The sandbox keeps running: try `/rollback {SERVICE}`. "
          f"Ctrl-C stops it.", flush=True)
    while True:
        time.sleep(3600)


def _script(sb: Sandbox) -> int:
    """The scripted approver: uses the chat page's endpoints exactly as the browser does."""
    page = sb.page.url

    def do(path: str, body: dict[str, Any]) -> None:
        answer = requests.post(f"{page}/sandbox/{path}", json=body, timeout=15)
        if not answer.ok or not answer.json().get("ok"):
            raise RuntimeError(f"chat page /sandbox/{path} answered {answer.status_code}: {answer.text}")

    def click(ts: str, action_id: str, confirmed: bool = False) -> float:
        do("action", {"channel": CHANNEL, "ts": ts, "action_id": action_id, "confirmed": confirmed})
        return time.time()

    try:
        do("command", {"text": "/rollback help"})
        sb.posted(lambda c: "promoted" in c.params.get("text", ""), "the promotion note", 60)
        sb.posted(lambda c: any(b.get("type") == "actions" for b in c.params.get("blocks") or []), "the warning", 60)
        state = requests.get(f"{page}/sandbox/state", timeout=10).json()
        warning = next(m for m in reversed(state["messages"])
                       if any(e.get("action_id") == blocks.APPROVE for b in m.get("blocks") or []
                              for e in b.get("elements") or []))
        click(warning["ts"], blocks.DRY_RUN)
        sb.posted(lambda c: "Dry run" in c.params.get("text", ""), "the dry run in the thread", 15)
        clicked = click(warning["ts"], blocks.APPROVE, confirmed=True)  # the approver read the plan, confirms
        recovered = sb.posted(lambda c: c.params.get("thread_ts") == warning["ts"] and _recovered(c),
                              '"Recovered" in the thread', 90)
        _wait("the freeze (rollback_blocked tag and frozen service)", 15, lambda: sb.outcome()[1] and sb.frozen())
        champion, tag = sb.outcome()
        _settle(sb.slack, quiet=2.0, limit=20)  # the summary and the chart follow "Recovered": show them too
        do("command", {"text": "/rollback report model-svc"})  # the incident and the drill, summed up
        sb.slack.wait_for(lambda c: "target · last drill" in str(c.params.get("text", "")), timeout=15)
    except (TimeoutError, RuntimeError, StopIteration) as exc:  # a step of the story did not happen: say which
        sb.log.pump()
        print(f"\nFAILED: {exc or 'no warning with a Roll back button on the chat page'}", file=sys.stderr)
        return 1
    sb.log.pump()
    frozen = sb.frozen()
    ok = champion == sb.good and tag == "true" and frozen
    print(f"\n{'OK' if ok else 'FAILED'}: Recovered {recovered.at - sb.start:.1f}s after start "
          f"({recovered.at - clicked:.1f}s after the Roll back click); MLflow: @champion is v{champion}, "
          f"v{sb.bad} rollback_blocked={tag}; auto-promotion {'frozen' if frozen else 'NOT frozen'}", flush=True)
    return 0 if ok else 1
