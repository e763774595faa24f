"""Builders shared by the story tests: a policy file, the simulated model service with its registry, a real
Prometheus scraping it, and a real `rollback-bot serve` process wired to the fake Slack Web API.

Used by tests/test_story.py, the restart and fault stories, tests/replicas_env.py (several BotProcess on one
PostgreSQL database) and the benchmarks. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from sandbox.servers import free_port
from sandbox.signing import post_signed, slash_command_body
from sandbox.slack_api import FakeSlackAPI

SECRET = "story-signing-secret"
TOKEN = "xoxb-story-token-0000"
APPROVER = "U0APPROVER"
GROUP, GROUP_MEMBER = "S0ONCALL", "U0ONCALL1"
STRANGER = "U0STRANGER"
CHANNEL = "C0MODELSVC"

P95 = ('histogram_quantile(0.95, sum by (le) (rate(model_request_latency_seconds_bucket'
       '{{service="{service}"}}[5s])))')


def policy_yaml(*, model: str, service: str = "model-svc", confirm: str = "dialog", for_: str = "3s",
                stable_for: str = "3s", within: str = "60s", healthy_for: str = "3s") -> str:
    return f"""
evaluate_every: 1s
services:
  {service}:
    channel: {CHANNEL}
    approvers: [{APPROVER}, {GROUP}]
    confirm: {confirm}
    model: {model}
    slos:
      - name: p95-latency
        kind: latency
        query: '{P95.format(service=service)}'
        above: 0.25
        for: {for_}
      - name: auc
        kind: quality
        query: 'min(model_auc{{service="{service}"}})'
        below: 0.8
        for: {for_}
    rollback:
      - mlflow_alias: {{model: {model}, alias: champion, to: previous_champion}}
    verify: {{every: 1s, within: {within}, stable_for: {stable_for}}}
    promote: {{from: candidate, to: champion, healthy_for: {healthy_for}}}
"""


class BotProcess:
    """A real `rollback-bot serve` subprocess; stdout/stderr go to a log file the test can scan."""

    def __init__(self, workdir: Path, policy: Path, *, slack_url: str, prometheus_url: str, mlflow_url: str,
                 extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "bot.log"
        inherited = {k: v for k, v in os.environ.items() if k != "SLACK_APP_TOKEN"}  # HTTP unless a test asks
        self.env = {
            **inherited,
            "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": slack_url,
            "PROMETHEUS_URL": prometheus_url, "MLFLOW_TRACKING_URI": mlflow_url,
            "DATABASE_URL": f"sqlite:///{workdir / 'bot.db'}", **(extra_env or {}),
        }
        self.cmd = [sys.executable, "-m", "bot.cli", "serve", "--policy", str(policy), "--host", "127.0.0.1",
                    "--port", str(self.port)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30, poll: float = 0.1) -> BotProcess:
        self.launch()
        return self.wait_ready(timeout, poll)

    def launch(self) -> BotProcess:
        """Start the process without waiting for it (tests/replicas_env.py starts several at once)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self._log = log
        return self

    def wait_ready(self, timeout: float = 30, poll: float = 0.1) -> BotProcess:
        """Wait until the launched process answers GET /healthz with 200; RuntimeError with its log if it exits."""
        assert self.proc is not None, "not launched"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rollback-bot exited {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass  # not listening yet
            time.sleep(poll)
        raise RuntimeError(f"rollback-bot not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the bot (no shutdown code runs, like a node dying) and wait for it; the log stays open
        for the next start(). Children it started (a helm run) are not killed: they live on as orphans."""
        assert self.proc is not None, "not started"
        self.proc.kill()
        self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()


def button(message: dict[str, Any], action_id: str) -> dict[str, Any]:
    for block in message.get("blocks") or []:
        for element in block.get("elements") or []:
            if element.get("action_id") == action_id:
                return element
    raise AssertionError(f"no button {action_id} in {message.get('text')!r}")


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def command(bot: BotProcess, slack: FakeSlackAPI, text: str, user: str) -> str:
    """The ephemeral answer to a signed `/rollback <text>`."""
    before = len(slack.calls("chat.postEphemeral"))
    body = slash_command_body(text=text, user_id=user, channel_id=CHANNEL, response_url=slack.response_url)
    assert post_signed(f"{bot.url}/slack/events", SECRET, body).status_code == 200
    call = wait_until(lambda: next((c for c in slack.calls("chat.postEphemeral")[before:]
                                    if c.params.get("user") == user), None), 60, f"the answer to /rollback {text}")
    return html.unescape(str(call.params["text"]))


def channel_lines(slack: FakeSlackAPI, start: str) -> list[str]:
    """The channel's messages starting with `start` (after a leading emoji), as Slack shows them."""
    texts = [html.unescape(str(m.get("text", ""))) for m in slack.messages(CHANNEL)]
    return [t for t in texts if re.sub(r"^:[a-z_]+: ", "", t).startswith(start)]
