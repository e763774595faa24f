"""Restart safety against a real `rollback-bot serve` process killed with SIGKILL: mid-plan (a slow helm
rollback running), mid-verification, and during an automatic rollback's grace period. After each restart the
thread and the store are checked: a half-run plan is halted with a Resume button and never re-run by itself,
verification continues in the same progress message, and an armed automatic rollback runs once at its time.

Real MLflow server, real Prometheus scraping the simulated model service (it serves the MLflow @champion
version), the fake Slack Web API, the fake `helm` (tests/bin/helm) with a delay on `rollback`. Run with -s
for the table of restarts survived and the state each incident ended in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from bot.infra.store import Incident, Store
from sandbox.model_service import ModelServiceSimulator, VersionProfile, alias_reader, seed_registry
from sandbox.servers import MlflowServer, PrometheusServer
from sandbox.signing import block_actions_body, post_signed
from sandbox.slack_api import FakeSlackAPI
from tests.helm_env import BIN, standard_history
from tests.story_env import (
    APPROVER,
    CHANNEL,
    GROUP,
    GROUP_MEMBER,
    P95,
    SECRET,
    TOKEN,
    BotProcess,
    button,
    wait_until,
)

pytestmark = pytest.mark.story

FAST = VersionProfile(latency_seconds=0.05, error_rate=0.0, auc=0.86)
SLOW = VersionProfile(latency_seconds=0.45, error_rate=0.02, auc=0.71)
SERVICE = "model-svc"
RESULTS: list[tuple[str, str, str]] = []  # (story, what happened, end state) for the closing table


def _policy(model: str, steps: list[str], *, stable_for: str = "2s", extra: str = "") -> str:
    rollback = "\n".join(f"      - {step}" for step in steps)
    return f"""
evaluate_every: 1s
services:
  {SERVICE}:
    channel: {CHANNEL}
    approvers: [{APPROVER}, {GROUP}]
    model: {model}
{extra}
    slos:
      - name: p95-latency
        query: '{P95.format(service=SERVICE)}'
        above: 0.25
        for: 2s
      - name: auc
        query: 'min(model_auc{{service="{SERVICE}"}})'
        below: 0.8
        for: 2s
    rollback:
{rollback}
    verify: {{every: 1s, within: 90s, stable_for: {stable_for}}}
"""


@dataclass
class Story:
    """One running stack: the bot process, its store, the fake Slack, the registry, the model's versions."""

    bot: BotProcess
    store: Store
    slack: FakeSlackAPI
    mlflow: MlflowClient
    model: str
    good: str
    bad: str
    tmp: Path

    def champion(self) -> str:
        return str(self.mlflow.get_model_version_by_alias(self.model, "champion").version)

    def warning(self) -> dict[str, Any]:
        found: dict[str, Any] = wait_until(lambda: next((m for m in self.slack.messages(CHANNEL) if m.get("blocks")),
                                                        None), 60, "the warning in the channel")
        return found

    def click(self, warning_ts: str, action: str, incident_id: int, user: str = APPROVER) -> None:
        message = self.slack.message(CHANNEL, warning_ts)  # as the approver sees it now
        body = block_actions_body(user_id=user, channel_id=CHANNEL, message_ts=warning_ts, action_id=action,
                                  value=str(incident_id), message=message)
        response = post_signed(f"{self.bot.url}/slack/events", SECRET, body)
        assert response.status_code == 200, response.text

    def incident(self, incident_id: int) -> Incident:
        return self.store.incident(incident_id)

    def thread(self, ts: str) -> list[str]:
        return [m.get("text", "") for m in self.slack.thread(CHANNEL, ts)]

    def wait_state(self, incident_id: int, *states: str, timeout: float = 60) -> Incident:
        return wait_until(lambda: (i := self.incident(incident_id)).state in states and i, timeout,
                          f"incident #{incident_id} in {states}")

    def restart(self) -> float:
        """SIGKILL the bot, start it again on the same database and environment; when it started."""
        self.bot.kill()
        restarted = time.time()
        self.bot.start()
        return restarted


@contextmanager
def story(tmp_path: Path, prometheus_bin: str, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
          model: str, steps: list[str], *, stable_for: str = "2s", extra: str = "",
          env: dict[str, str] | None = None) -> Iterator[Story]:
    good, bad = seed_registry(mlflow_client, model, versions=2)
    mlflow_client.set_registered_model_alias(model, "previous_champion", good)
    mlflow_client.set_registered_model_alias(model, "champion", bad)  # the bad version is live: a breach
    policy = tmp_path / "policy.yaml"
    policy.write_text(_policy(model, steps, stable_for=stable_for, extra=extra))
    with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as slack, \
            ModelServiceSimulator(champion=alias_reader(mlflow_client, model), profiles={good: FAST, bad: SLOW},
                                  default=FAST) as sim, \
            PrometheusServer(tmp_path / "prom", targets=[sim.target], binary=prometheus_bin) as prom:
        prom.wait_for_series(f'model_auc{{service="{SERVICE}"}}')
        bot = BotProcess(tmp_path, policy, slack_url=slack.url, prometheus_url=prom.url,
                         mlflow_url=mlflow_server.url, extra_env=env)
        try:
            bot.start()
            store = Store(f"sqlite:///{tmp_path / 'bot.db'}")
            yield Story(bot, store, slack, mlflow_client, model, good, bad, tmp_path)
            assert TOKEN not in bot.log() and SECRET not in bot.log(), "no secret in the logs of any run"
        finally:
            bot.stop()


def _helm_env(tmp_path: Path, hold: Path) -> tuple[dict[str, str], Path, Path]:
    """The fake helm on HELM_BIN; its `rollback` shows a pending-rollback revision until `hold` exists."""
    state, log = tmp_path / "helm-state.json", tmp_path / "helm-argv.jsonl"
    state.write_text(json.dumps({"releases": {"prod/model-svc": standard_history()}, "faults": {},
                                 "delays": {"rollback": {"until": str(hold)}}}))
    log.touch()
    return {"HELM_BIN": str(BIN / "helm"), "FAKE_HELM_STATE": str(state), "FAKE_HELM_LOG": str(log)}, state, log


def _rollbacks(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if json.loads(line)[:1] == ["rollback"])


def _table() -> None:
    print("\nrestart stories (SIGKILL of `rollback-bot serve`, then a start on the same database):")
    print(f"  {'story':<28} {'what happened':<68} end state")
    for name, what, state in RESULTS:
        print(f"  {name:<28} {what:<68} {state}")


def test_sigkill_mid_plan_halts_with_resume_and_resume_finishes_once(
        tmp_path: Path, prometheus_bin: str, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str) -> None:
    hold = tmp_path / "let-helm-finish"
    env, state_file, helm_log = _helm_env(tmp_path, hold)
    steps = ["helm: {release: model-svc, namespace: prod}",
             f"mlflow_alias: {{model: {unique_model}, alias: champion, to: previous_champion}}"]
    with story(tmp_path, prometheus_bin, mlflow_server, mlflow_client, unique_model, steps, env=env) as s:
        warning = s.warning()
        incident_id = int(button(warning, "rollback_approve")["value"])
        s.click(warning["ts"], "rollback_approve", incident_id)

        # Step 1 (helm) is running: the fake helm holds its rollback (pending-rollback). Kill the bot now.
        wait_until(lambda: any(st.position == 0 and st.status == "running" for st in s.store.steps(incident_id)),
                   30, "step 1 running")
        wait_until(lambda: _rollbacks(helm_log) == 1, 10, "helm rollback started")
        s.restart()

        halted = s.wait_state(incident_id, "halted", timeout=30)
        assert (halted.halt_kind, halted.resume_from) == ("interrupted", 0)
        interrupted = wait_until(lambda: next((t for t in s.thread(warning["ts"]) if "restarted in the middle" in t),
                                              None), 20, "the interrupted line in the thread")
        assert "Done: none." in interrupted
        assert "Step 1 (`helm`) was running when it stopped" in interrupted
        assert "Not done: step 1/2 `helm`, step 2/2 `mlflow_alias`" in interrupted
        resume = wait_until(lambda: _button_or_none(s.slack.message(CHANNEL, warning["ts"]), "rollback_retry"),
                            10, "the Resume button")
        assert resume["text"]["text"] == "Resume"
        button(s.slack.message(CHANNEL, warning["ts"]), "rollback_stop")
        assert [e.kind for e in s.store.events(incident_id)].count("interrupted") == 1

        # Nothing ran again by itself: one helm rollback (the killed run's child), @champion untouched.
        time.sleep(3)  # three evaluation cycles of the restarted bot
        assert _rollbacks(helm_log) == 1
        assert s.champion() == s.bad
        assert s.incident(incident_id).state == "halted"

        # Resume while the orphaned helm child still works: the release is busy, so the step halts, nothing runs.
        s.click(warning["ts"], "rollback_retry", incident_id, user=GROUP_MEMBER)
        busy = wait_until(lambda: (i := s.incident(incident_id)).halt_kind == "failed" and i, 30, "the busy halt")
        assert busy.state == "halted" and busy.resume_from == 0 and "is busy" in (busy.error or "")
        assert _rollbacks(helm_log) == 1 and s.champion() == s.bad
        wait_until(lambda: any("Failed step 1/2 `helm`" in t and "pending-rollback" in t
                               for t in s.thread(warning["ts"])), 10, "the busy step in the thread")

        # The orphaned helm child finishes; Retry step re-plans step 1, finds it done, and goes on.
        hold.touch()
        wait_until(lambda: json.loads(state_file.read_text())["releases"]["prod/model-svc"][-1]["description"]
                   == "Rollback to 2", 20, "the orphaned helm rollback finished")
        # Edits of the warning are throttled (one chat.update per 3 s per incident): wait for the redraw.
        wait_until(lambda: (b := _button_or_none(s.slack.message(CHANNEL, warning["ts"]), "rollback_retry"))
                   and b["text"]["text"] == "Retry step", 10, "the Retry step button")
        s.click(warning["ts"], "rollback_retry", incident_id)
        recovered = s.wait_state(incident_id, "recovered", "verify_failed", timeout=90)
        assert recovered.state == "recovered"
        assert s.champion() == s.good
        assert _rollbacks(helm_log) == 1, "helm rollback ran once in total"
        texts = s.thread(warning["ts"])
        assert any("Resumed from step 1" in t and GROUP_MEMBER in t for t in texts)
        assert any("Done step 1/2 `helm`" in t and "already at revision 2" in t for t in texts)
        assert any("Done step 2/2 `mlflow_alias`" in t for t in texts)
        wait_until(lambda: s.store.frozen(SERVICE), 20, "the service frozen")
        wait_until(lambda: s.mlflow.get_model_version(s.model, s.bad).tags.get("rollback_blocked") == "true", 20,
                   "the bad version blocked")
        steps_done = [(st.position, st.status) for st in s.store.steps(incident_id)]
        assert steps_done == [(0, "running"), (0, "failed"), (0, "done"), (1, "done")]
    RESULTS.append(("SIGKILL mid-plan (helm)", "halted/interrupted; Resume while helm busy: halted; Retry: noop",
                    recovered.state))
    _table()


def _button_or_none(message: dict[str, Any], action_id: str) -> dict[str, Any] | None:
    try:
        return button(message, action_id)
    except AssertionError:
        return None  # not rendered (yet)


def test_sigkill_mid_verification_continues_in_the_same_progress_message(
        tmp_path: Path, prometheus_bin: str, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str) -> None:
    steps = [f"mlflow_alias: {{model: {unique_model}}}"]
    with story(tmp_path, prometheus_bin, mlflow_server, mlflow_client, unique_model, steps, stable_for="8s") as s:
        warning = s.warning()
        incident_id = int(button(warning, "rollback_approve")["value"])
        s.click(warning["ts"], "rollback_approve", incident_id)
        verifying = s.wait_state(incident_id, "verifying", timeout=30)
        wait_until(lambda: s.incident(incident_id).progress_ts, 10, "the progress message")
        progress_ts = s.incident(incident_id).progress_ts
        assert progress_ts is not None
        assert verifying.state == "verifying" and s.champion() == s.good

        restarted = s.restart()

        done = s.wait_state(incident_id, "recovered", "verify_failed", timeout=90)
        assert done.state == "recovered"
        assert done.progress_ts == progress_ts, "the same progress message, not a second one"
        texts = wait_until(lambda: (t := s.thread(warning["ts"])) and any("Summary" in x for x in t) and t, 30,
                           "the summary")
        assert sum("Bot restarted: verification continues" in t for t in texts) == 1
        assert sum("*Summary —" in t for t in texts) == 1
        assert sum("Recovered: every SLO" in t for t in texts) == 1
        after = [c for c in s.slack.calls("chat.update") if c.params.get("ts") == progress_ts and c.at > restarted]
        assert after, "the restarted bot goes on updating the same progress message"
        wait_until(lambda: "Recovered" in s.slack.message(CHANNEL, progress_ts)["text"], 15,
                   "the progress message's last edit (edits are spaced out)")
        progress = [m["ts"] for m in s.slack.thread(CHANNEL, warning["ts"]) if "— elapsed" in m.get("text", "")]
        assert progress == [progress_ts]
    RESULTS.append(("SIGKILL mid-verification", "verification continued in the same progress message",
                    done.state))
    _table()


def test_sigkill_during_the_grace_period_still_rolls_back_once(
        tmp_path: Path, prometheus_bin: str, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str) -> None:
    steps = [f"mlflow_alias: {{model: {unique_model}}}"]
    extra = "    auto_rollback: true\n    auto_rollback_grace: 4s"
    with story(tmp_path, prometheus_bin, mlflow_server, mlflow_client, unique_model, steps, extra=extra) as s:
        warning = s.warning()
        incident_id = int(button(warning, "rollback_approve")["value"])
        wait_until(lambda: "auto_armed" in [e.kind for e in s.store.events(incident_id)], 10, "the armed line")
        armed = s.incident(incident_id)
        assert armed.state == "open" and armed.auto_at is not None and time.time() < armed.auto_at
        auto_at = armed.auto_at

        s.restart()  # killed inside the 4 s grace period

        done = s.wait_state(incident_id, "recovered", "verify_failed", timeout=90)
        assert done.state == "recovered" and s.champion() == s.good
        assert done.approved_by == "rollback-bot" and done.approved_at is not None
        assert done.approved_at >= auto_at - 0.01, "not before its time"
        events = [e.kind for e in s.store.events(incident_id)]
        assert events.count("approved") == 1 and events.count("auto_armed") == 1
        approvals = [a for a in s.store.audits(incident_id) if a["action"] == "approve"]
        assert len(approvals) == 1 and approvals[0]["detail"] == {"automatic": True}
        assert len([st for st in s.store.steps(incident_id) if st.status == "done"]) == 1
    RESULTS.append(("SIGKILL in auto grace period", "re-armed on start, ran once at its time", done.state))
    _table()
