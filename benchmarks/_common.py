"""Helpers shared by the benchmark scripts in this folder: figure reporting, percentiles, and the "stage" with
real servers (fake Slack Web API, real `mlflow server`, simulated model services scraped by a real Prometheus,
and a real `rollback-bot serve` process) that benchmarks 1, 2, 3 and 5 drive with signed Slack requests.

Every script prints its figures as a readable block and, last, one `RESULT {json}` line that run_all.py
collects into the README table. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.story_env: the same BotProcess the story test runs

from mlflow.tracking import MlflowClient  # noqa: E402

from sandbox.model_service import ModelServiceSimulator, VersionProfile, alias_reader, seed_registry  # noqa: E402
from sandbox.servers import MlflowServer, PrometheusServer, prometheus_binary  # noqa: E402
from sandbox.signing import block_actions_body, post_signed  # noqa: E402
from sandbox.slack_api import FakeSlackAPI  # noqa: E402
from tests.story_env import APPROVER, SECRET, BotProcess, button, wait_until  # noqa: E402

LATENCY_QUERY = "histogram_quantile(0.95, sum by (le, service) (rate(model_request_latency_seconds_bucket[5s])))"
FAST = VersionProfile(latency_seconds=0.05, error_rate=0.0, auc=0.9)
SLOW = VersionProfile(latency_seconds=0.45, error_rate=0.02, auc=0.7)


# One service, the README's grouped AUC SLO and the alias flip: for benchmarks that measure `serve` itself.
ONE_SERVICE_POLICY = """
evaluate_every: 15s
services:
  model-svc:
    channel: C0BENCHSVC
    approvers: [U0APPROVER]
    model: recommender
    slos:
      - {name: auc, query: 'min by (service) (model_auc)', by: service, below: 0.8}
    rollback:
      - mlflow_alias: {model: recommender}
"""


@dataclass(frozen=True)
class Row:
    """One line of the README table: what was measured, the figure, the target, and whether it is met."""

    benchmark: str
    figure: str
    value: str
    target: str
    met: bool | None  # None: informational, no target


def report(benchmark: str, rows: list[Row], notes: list[str] | None = None) -> None:
    """Print the figures readably, then the RESULT line run_all.py reads."""
    print(f"\n== {benchmark} ==")
    for row in rows:
        verdict = "" if row.met is None else ("  [met]" if row.met else "  [MISSED]")
        print(f"  {row.figure}: {row.value}   (target: {row.target}){verdict}")
    for note in notes or []:
        print(f"  note: {note}")
    print("RESULT " + json.dumps({"benchmark": benchmark, "rows": [asdict(r) for r in rows],
                                  "notes": notes or []}))


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def median(values: list[float]) -> float:
    return statistics.median(values)


def need_prometheus() -> str:
    binary = prometheus_binary()
    if binary is None:
        raise SystemExit("prometheus is not on PATH: run `make setup` (it installs Debian's prometheus)")
    return binary


def service_policy(services: list[str], models: dict[str, str], *, channel: str, evaluate_every: str = "1s",
                   for_: str = "2s", stable_for: str = "3s", within: str = "60s", verify_every: str = "1s") -> str:
    """A policy for `services` (one channel), every service sharing two grouped SLO queries.

    AUC is a gauge, so a breach is visible to the bot one scrape after the service starts serving the bad
    version; p95 latency uses a 5 s rate window like the story test.
    """
    blocks = []
    for index, name in enumerate(services):
        slos = (f"      - &latency {{name: p95-latency, query: '{LATENCY_QUERY}', by: service, above: 0.25, "
                f"for: {for_}}}\n"
                "      - &auc {name: auc, query: 'min by (service) (model_auc)', by: service, below: 0.8, "
                "for: " + for_ + "}\n") if index == 0 else "      - *latency\n      - *auc\n"
        model = models[name]
        blocks.append(f"""  {name}:
    channel: {channel}
    approvers: [{APPROVER}]
    model: {model}
    slos:
{slos}    rollback:
      - mlflow_alias: {{model: {model}, alias: champion, to: previous_champion}}
    verify: {{every: {verify_every}, within: {within}, stable_for: {stable_for}}}
""")
    return f"evaluate_every: {evaluate_every}\nservices:\n" + "".join(blocks)


class Stage:
    """Real servers and a real bot for `services` model services, each served by v1 (FAST) at the start.

    `break_service(name)` points its champion alias at v2 (SLOW); the simulator switches within 0.25 s and
    records the moment in `switch_time`. Use as a context manager; everything stops on exit.
    """

    CHANNEL = "C0BENCHSVC"

    def __init__(self, services: int = 1, **policy: str) -> None:
        self.names = [f"svc-{i:02d}" for i in range(services)]
        self.policy_args = policy
        self._stack = ExitStack()
        self.tmp = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="rollback-bench-")))
        self.sims: dict[str, ModelServiceSimulator] = {}
        self.models: dict[str, str] = {}

    def __enter__(self) -> Stage:
        try:
            self._start()
        except BaseException:  # a failed start still stops what was started
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        binary = need_prometheus()
        self.slack = self._stack.enter_context(FakeSlackAPI())
        self.mlflow_server = self._stack.enter_context(MlflowServer(self.tmp / "mlflow"))
        self.mlflow = MlflowClient(tracking_uri=self.mlflow_server.url, registry_uri=self.mlflow_server.url)
        for name in self.names:
            model = f"model-{name}"
            v1, v2 = seed_registry(self.mlflow, model, versions=2)
            self.mlflow.set_registered_model_alias(model, "champion", v1)
            self.models[name] = model
            self.sims[name] = self._stack.enter_context(ModelServiceSimulator(
                name, champion=alias_reader(self.mlflow, model), profiles={v1: FAST, v2: SLOW}, default=FAST,
                rps=40))
        self.prom = self._stack.enter_context(PrometheusServer(
            self.tmp / "prom", targets=[s.target for s in self.sims.values()], binary=binary))
        for name in self.names:
            self.prom.wait_for_series(f'model_auc{{service="{name}"}}', timeout=60)
        policy = self.tmp / "policy.yaml"
        policy.write_text(service_policy(self.names, self.models, channel=self.CHANNEL, **self.policy_args))
        self.bot = BotProcess(self.tmp, policy, slack_url=self.slack.url, prometheus_url=self.prom.url,
                              mlflow_url=self.mlflow_server.url)
        self.bot.start(timeout=60)
        self._stack.callback(self.bot.stop)
        self.events_url = f"{self.bot.url}/slack/events"

    def break_service(self, name: str) -> float:
        """Promote the slow v2 as the gate would (v1 kept as previous_champion); returns when the simulator
        switched, with that time.time()."""
        before = len(self.sims[name].switches)
        self.mlflow.set_registered_model_alias(self.models[name], "previous_champion", "1")
        self.mlflow.set_registered_model_alias(self.models[name], "champion", "2")
        return float(wait_until(lambda: self.sims[name].switches[before:] and self.sims[name].switches[-1][0], 10,
                                f"{name} serving v2", interval=0.01))

    def warning_for(self, name: str, timeout: float = 60) -> tuple[dict[str, Any], float]:
        """The warning message of `name` once posted, and when the fake Slack API received it."""
        call = self.slack.wait_for(lambda c: c.method == "chat.postMessage" and not c.params.get("thread_ts")
                                   and name in json.dumps(c.params.get("blocks") or [])
                                   and any(b.get("type") == "actions" for b in c.params.get("blocks") or []),
                                   timeout=timeout)
        message = next(m for m in self.slack.messages(self.CHANNEL) if m["ts"] == call_ts(call, self.slack))
        return message, call.at

    def click(self, message: dict[str, Any], action: str, user: str = APPROVER) -> float:
        """Press a button of `message` as `user` (signed like Slack); returns when the request was sent."""
        element = button(message, action)
        body = block_actions_body(user_id=user, channel_id=self.CHANNEL, message_ts=message["ts"],
                                  action_id=action, value=element["value"], message=message)
        sent = time.time()
        response = post_signed(self.events_url, SECRET, body)
        if response.status_code != 200:
            raise RuntimeError(f"click {action}: HTTP {response.status_code} {response.text[:200]}")
        return sent

    def incident_rows(self) -> list[dict[str, Any]]:
        """The bot's incidents with their steps and timeline events, read from its SQLite database (read-only)."""
        conn = sqlite3.connect(f"file:{self.tmp / 'bot.db'}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            incidents = [dict(r) for r in conn.execute("SELECT * FROM incidents ORDER BY id")]
            for incident in incidents:
                incident["steps"] = [dict(r) for r in conn.execute(
                    "SELECT * FROM steps WHERE incident_id = ? ORDER BY position", (incident["id"],))]
                incident["events"] = [dict(r) for r in conn.execute(
                    "SELECT * FROM events WHERE incident_id = ? ORDER BY id", (incident["id"],))]
            return incidents
        finally:
            conn.close()


def call_ts(call: Any, slack: FakeSlackAPI) -> str:
    """The ts the fake gave the message a chat.postMessage call created (matched by its text)."""
    for message in reversed(slack.messages(str(call.params.get("channel")))):
        if message.get("text") == call.params.get("text") and message.get("blocks") == call.params.get("blocks"):
            return str(message["ts"])
    raise LookupError("posted message not found")
