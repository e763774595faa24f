"""Issue 7's stories: a real `rollback-bot serve` runs a six-step plan (Argo Rollouts undo, Helm rollback,
feature flag, git revert, Argo CD sync, MLflow alias) approved in Slack, against a real MLflow server, a real
Prometheus scraping the simulated model service, the fake Kubernetes API, the fake `helm` and a local bare
git repository; and the same plan with step 3 failing, halting, and retried by an approver.

Each executor's effect is asserted in its own world (requests the fake API server received, helm's argv, the
commits on origin, the MLflow aliases and tags). Step durations and the whole thread are printed (run with -s).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from bot.infra.store import Store
from sandbox.model_service import ModelServiceSimulator, VersionProfile, alias_reader, seed_registry
from sandbox.servers import MlflowServer, PrometheusServer
from sandbox.signing import block_actions_body, post_signed
from sandbox.slack_api import FakeSlackAPI
from tests.layers_env import (
    APP_PATH,
    CONFIGMAP_PATH,
    DEPLOYMENT_PATH,
    FLAG,
    IMAGES,
    JSON_PATCH,
    MERGE,
    NAME,
    ROLLOUT_PATH,
    STRATEGIC,
    LayersWorld,
    layers_policy_yaml,
)
from tests.story_env import APPROVER, CHANNEL, GROUP, GROUP_MEMBER, SECRET, STRANGER, BotProcess, button, wait_until

pytestmark = pytest.mark.story

FAST = VersionProfile(latency_seconds=0.05, error_rate=0.0, auc=0.86)
SLOW = VersionProfile(latency_seconds=0.45, error_rate=0.02, auc=0.71)
EXECUTORS = ["argo_rollouts", "helm", "feature_flag", "git_revert", "argocd", "mlflow_alias"]
LABELS = [f"step {i}/6 `{name}`" for i, name in enumerate(EXECUTORS, 1)]
APPROVERS_MENTIONED = f"<@{APPROVER}>, <!subteam^{GROUP}>"


@dataclass
class Story:
    slack: FakeSlackAPI
    world: LayersWorld
    bot: BotProcess
    store: Store
    mlflow: MlflowClient
    model: str
    good: str  # MLflow version behind @previous_champion
    bad: str  # MLflow version that is @champion when the story starts
    warning: dict[str, Any]
    incident_id: int

    def thread(self) -> list[str]:
        return [m.get("text", "") for m in self.slack.thread(CHANNEL, self.warning["ts"])]

    def current_warning(self) -> dict[str, Any]:
        return self.slack.message(CHANNEL, self.warning["ts"])

    def click(self, user: str, action: str) -> None:
        """A signed block_actions request, as Slack sends it when `user` presses `action` on the warning now."""
        body = block_actions_body(user_id=user, channel_id=CHANNEL, message_ts=self.warning["ts"], action_id=action,
                                  value=str(self.incident_id), message=self.current_warning())
        response = post_signed(f"{self.bot.url}/slack/events", SECRET, body)
        assert response.status_code == 200, response.text

    def champion(self) -> str:
        return str(self.mlflow.get_model_version_by_alias(self.model, "champion").version)

    def state(self) -> str:
        return self.store.incident(self.incident_id).state

    def wait_state(self, state: str, timeout: float) -> None:
        wait_until(lambda: self.state() == state, timeout, f"incident {state} (now {self.state()})", interval=0.2)

    def wait_thread(self, needle: str, timeout: float = 60) -> str:
        return str(wait_until(lambda: next((t for t in self.thread() if needle in t), None), timeout,
                              f"{needle!r} in the thread"))


@contextmanager
def six_step_story(tmp_path: Path, prometheus_bin: str, mlflow_client: MlflowClient, mlflow_server: MlflowServer,
                   model: str, *, before_start: Any = None) -> Iterator[Story]:
    """The bad version live in all six layers, the bot running, the SLO breach warned about in Slack."""
    good, bad = seed_registry(mlflow_client, model, versions=2)
    mlflow_client.set_registered_model_alias(model, "previous_champion", good)
    mlflow_client.set_registered_model_alias(model, "champion", bad)  # promoted earlier; now it breaches
    mlflow_client.set_registered_model_alias(model, "candidate", bad)
    with LayersWorld(tmp_path / "world") as world:
        policy = tmp_path / "policy.yaml"
        policy.write_text(layers_policy_yaml(model=model, repo=world.git.bare))
        if before_start is not None:
            before_start(world)
        with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as slack, \
                ModelServiceSimulator(champion=alias_reader(mlflow_client, model), profiles={good: FAST, bad: SLOW},
                                      default=FAST) as sim, \
                PrometheusServer(tmp_path / "prom", targets=[sim.target], binary=prometheus_bin) as prom:
            prom.wait_for_series('model_auc{service="model-svc"}')
            bot = BotProcess(tmp_path, policy, slack_url=slack.url, prometheus_url=prom.url,
                             mlflow_url=mlflow_server.url, extra_env=world.env())
            store = Store(f"sqlite:///{tmp_path / 'bot.db'}")
            try:
                bot.start()
                slack.wait_for(lambda c: c.method == "chat.postMessage" and bool(c.params.get("blocks"))
                               and any(b.get("type") == "actions" for b in c.params["blocks"]), timeout=60)
                warning = slack.messages(CHANNEL)[-1]
                incident_id = int(button(warning, "rollback_approve")["value"])
                yield Story(slack, world, bot, store, mlflow_client, model, good, bad, warning, incident_id)
            except BaseException:
                print("\nbot log:\n" + bot.log()[-6000:])
                raise
            finally:
                bot.stop()
                store.engine.dispose()


def _writes(world: LayersWorld) -> list[tuple[str, str, str | None, Any]]:
    return [(r.method, r.path, r.content_type, r.body) for r in world.kube_writes()]


def _v2_template(world: LayersWorld) -> dict[str, Any]:
    """The stable ReplicaSet's template without its hash label: what `kubectl argo rollouts undo` sends."""
    rs = next(r for r in world.kube.objects("replicasets", "prod")
              if r["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES[1])
    template = json.loads(json.dumps(rs["spec"]["template"]))
    del template["metadata"]["labels"]["rollouts-pod-template-hash"]
    return template


def _durations(story: Story) -> list[tuple[int, str, str, float]]:
    """(position, executor, status, seconds) of every stored step run, in order."""
    return [(s.position, s.executor, s.status, float((s.outcome or {}).get("seconds", -1)))
            for s in story.store.steps(story.incident_id)]


def _print_story(story: Story, title: str) -> None:
    print(f"\n== {title}: step durations (from the store's steps rows) ==")
    for position, executor, status, seconds in _durations(story):
        print(f"  step {position + 1}/6 {executor:<14} {status:<7} {seconds:.3f}s")
    print(f"== {title}: the whole thread ==")
    print(story.current_warning().get("text", ""))
    for text in story.thread():
        print("  | " + text.replace("\n", "\n  | "))


def _in_order(texts: list[str], needles: list[str]) -> None:
    """Each needle appears in a thread message after the message where the previous one appeared."""
    at = -1
    for needle in needles:
        found = next((i for i, t in enumerate(texts) if i > at and needle in t), None)
        assert found is not None, f"{needle!r} not found after message {at}:\n" + "\n".join(texts)
        at = found


def _assert_recovered_and_frozen(story: Story) -> str:
    summary = story.wait_thread("*Summary — Recovered*", timeout=120)
    assert story.state() == "recovered"
    assert story.champion() == story.good
    version = story.mlflow.get_model_version(story.model, story.bad)
    assert version.tags.get("rollback_blocked") == "true"
    assert version.tags.get("rollback_incident") == str(story.incident_id)
    frozen = story.store.frozen(NAME)
    assert frozen is not None and frozen.incident_id == story.incident_id
    wait_until(lambda: "Recovered in" in json.dumps(story.current_warning()["blocks"]), 10, "warning shows recovered")
    assert button_ids(story.current_warning()) == []  # nothing left to press
    return summary


def button_ids(message: dict[str, Any]) -> list[str]:
    return [e.get("action_id") for b in message.get("blocks") or [] for e in b.get("elements") or []
            if e.get("type") == "button"]


def test_six_step_plan_dry_run_then_approved_in_slack_ends_recovered_and_frozen(
        tmp_path: Path, prometheus_bin: str, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str) -> None:
    with six_step_story(tmp_path, prometheus_bin, mlflow_client, mlflow_server, unique_model) as story:
        world = story.world
        origin_before = world.git.log()
        assert origin_before[0][0] == world.bad_sha
        rollout_before = world.rollout()

        # 0. The warning says what changed on each layer, under the breach: the Rollout's canary image, the helm
        #    revision, the commit the revert would undo and the MLflow version serving.
        changed = next(b["text"]["text"] for b in story.warning["blocks"]
                       if b.get("type") == "section" and "What changed" in b.get("text", {}).get("text", ""))
        assert "*Argo Rollouts:*" in changed and "canary" in changed
        assert "*Helm:*" in changed and "revision" in changed and "chart" in changed
        assert "*git:*" in changed and f"commit `{world.bad_sha[:12]}`" in changed
        assert "*MLflow:*" in changed and f"v{story.bad} is @champion" in changed

        # 1. Dry run: all six plans with their commands in the thread; nothing changes anywhere.
        story.click(GROUP_MEMBER, "rollback_dry_run")
        dry = story.wait_thread("Dry run requested by")
        assert f"<@{GROUP_MEMBER}>" in dry and "nothing was changed" in dry
        short = world.bad_sha[:12]
        for i, (name, command) in enumerate([
                ("argo_rollouts", "kubectl argo rollouts undo model-svc -n prod --to-revision=2"),
                ("helm", "helm rollback model-svc 2 -n prod --wait --timeout 5m0s"),
                ("feature_flag", "kubectl rollout restart deployment/model-svc -n prod"),
                ("git_revert", f"git revert --no-edit {short}"),
                ("argocd", "kubectl patch application model-svc -n argocd --type merge -p"),
                ("mlflow_alias", f"set_registered_model_alias('{unique_model}', 'champion', '{story.good}')")], 1):
            assert f"{i}. `{name}` — " in dry, f"step {i} missing from the dry run:\n{dry}"
            assert command in dry, f"{command!r} missing from the dry run:\n{dry}"
        assert "kubectl argo rollouts abort model-svc -n prod" in dry
        assert f"{FLAG}" in dry and "could not plan" not in dry
        assert [r for r in world.kube.requests() if r.method != "GET"] == []  # no PATCH, PUT, POST
        assert world.helm_rollbacks() == []
        assert world.git.log() == origin_before
        assert world.rollout()["spec"] == rollout_before["spec"] and world.flag() == "true"
        assert story.champion() == story.bad and story.state() == "open"

        # 2. An approver (a member of the approvers' user group) presses Roll back.
        story.click(GROUP_MEMBER, "rollback_approve")
        story.wait_state("verifying", timeout=120)
        _assert_recovered_and_frozen(story)

        # 3. Each executor's exact effect in its own world, in plan order.
        writes = _writes(world)
        restart = writes[3][3]["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", restart)
        revert_sha, revert_message = world.git.log()[0]
        assert writes == [
            ("PATCH", f"{ROLLOUT_PATH}/status", MERGE, {"status": {"abort": True}}),
            ("PATCH", ROLLOUT_PATH, JSON_PATCH, [{"op": "replace", "path": "/spec/template",
                                                  "value": _v2_template(world)}]),
            ("PATCH", CONFIGMAP_PATH, MERGE, {"data": {FLAG: "false"}}),
            ("PATCH", DEPLOYMENT_PATH, STRATEGIC,
             {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": restart}}}}}),
            ("PATCH", APP_PATH, MERGE, {"spec": {"syncPolicy": {"automated": None}}}),
            ("PATCH", APP_PATH, MERGE, {"operation": {"initiatedBy": {"username": "rollback-bot"},
                                                      "sync": {"revision": revert_sha}}}),
        ]
        rollout = world.rollout()
        assert rollout["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES[1]
        assert rollout["status"]["phase"] == "Healthy"
        assert rollout["status"]["canary"]["weights"]["canary"]["weight"] == 0
        assert world.helm_rollbacks() == [["rollback", NAME, "2", "-n", "prod", "--wait", "--timeout", "5m0s"]]
        last = world.helm.history(f"prod/{NAME}")[-1]
        assert (last["revision"], last["status"], last["description"], last["app_version"]) == (
            4, "deployed", "Rollback to 2", "1.1")
        assert world.flag() == "false"
        assert [sha for sha, _ in world.git.log()[1:]] == [sha for sha, _ in origin_before]  # one new commit
        assert revert_message.startswith('Revert "bad model config')
        assert f"This reverts commit {world.bad_sha}." in revert_message
        assert f"incident #{story.incident_id}" in revert_message
        app = world.application()
        assert "automated" not in app["spec"]["syncPolicy"]
        assert app["status"]["operationState"]["operation"]["sync"]["revision"] == revert_sha
        assert app["status"]["operationState"]["phase"] == "Succeeded"
        assert app["status"]["sync"]["revision"] == revert_sha

        # 4. The thread: every step's start and done line with its duration, in order; freeze and checklist.
        texts = story.thread()
        _in_order(texts, [f"Approved by <@{GROUP_MEMBER}>"]
                  + [line for label in LABELS for line in (f"Started {label}:", f"Done {label} in ")]
                  + ["Plan executed in", "Auto-promotion disabled for this service (frozen)",
                     "*Post-rollback checklist*", "*Summary — Recovered*"])
        for label in LABELS:
            done = next(t for t in texts if f"Done {label} in " in t)
            assert re.search(rf"Done {re.escape(label)} in (\d+ms|\d+s|\d+m\d\ds):", done), done
        frozen = next(t for t in texts if "Auto-promotion disabled for this service (frozen)" in t)
        assert f"version {story.bad} tagged rollback_blocked=true" in frozen
        assert "Rollout prod/model-svc runs revision 2 (model-svc:v2) as stable" in frozen
        assert "model-svc:v3 is gone from spec.template" in frozen
        assert "Auto-sync of Application argocd/model-svc stays off" in frozen
        assert f"{FLAG} stays 'false'" in frozen
        checklist = next(t for t in texts if "*Post-rollback checklist*" in t)
        assert "Traffic to the bad version: 0% (stable ReplicaSet holds 100%)" in checklist
        assert ":white_check_mark: SLOs back in target" in checklist
        assert ":white_check_mark: Auto-promotion disabled" in checklist
        uploads = [u for u in story.slack.uploads() if u.get("thread_ts") == story.warning["ts"]]
        assert uploads and uploads[0]["content"].startswith(b"\x89PNG")

        # 5. Each step ran once, in order, and its duration is stored.
        steps = _durations(story)
        assert [(p, e, s) for p, e, s, _ in steps] == [(i, e, "done") for i, e in enumerate(EXECUTORS)]
        assert all(seconds >= 0 for *_, seconds in steps)
        _print_story(story, "six-step story")
        (tmp_path / "layers-story-times.json").write_text(json.dumps({e: s for _, e, _, s in steps}))


def test_step_three_fails_halts_with_retry_and_stop_then_retry_runs_steps_three_to_six(
        tmp_path: Path, prometheus_bin: str, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str) -> None:
    def configmap_breaks(world: LayersWorld) -> None:
        world.kube.fail("PATCH", f"^{CONFIGMAP_PATH}$", 500, times=None)  # every PATCH, until cleared

    with six_step_story(tmp_path, prometheus_bin, mlflow_client, mlflow_server, unique_model,
                        before_start=configmap_breaks) as story:
        world = story.world
        origin_before = world.git.log()

        story.click(APPROVER, "rollback_approve")
        story.wait_state("halted", timeout=120)

        # 1. Steps 1-2 done, 3 failed, 4-6 never started; their worlds are untouched.
        assert [(p, e, s) for p, e, s, _ in _durations(story)] == [
            (0, "argo_rollouts", "done"), (1, "helm", "done"), (2, "feature_flag", "failed")]
        incident = story.store.incident(story.incident_id)
        assert incident.resume_from == 2 and incident.halt_kind == "failed"
        assert incident.error and incident.error.startswith("step 3/6 `feature_flag`: ") and "500" in incident.error
        assert world.git.log() == origin_before  # no push
        assert world.kube.requests("PATCH", "applications") == []
        assert world.kube.requests("PATCH", "deployments") == []
        assert story.champion() == story.bad
        assert world.flag() == "true"
        assert len(world.kube.requests("PATCH", "configmaps")) == 4  # the client's bounded retries, then it gave up
        assert len(world.helm_rollbacks()) == 1

        # 2. The thread names the failing step and why, what was done and not, and calls the approvers.
        failed = story.wait_thread(":x: Rollback stopped at step 3/6 `feature_flag`")
        assert "Kubernetes API answered 500" in failed and "ConfigMap prod/model-svc-flags" in failed
        assert f"Done: {LABELS[0]}, {LABELS[1]}." in failed
        assert f"Not run: {LABELS[3]}, {LABELS[4]}, {LABELS[5]}." in failed
        assert APPROVERS_MENTIONED in failed
        texts = story.thread()
        _in_order(texts, [f"Done {LABELS[0]} in ", f"Done {LABELS[1]} in ", f"Started {LABELS[2]}:",
                          f"Failed {LABELS[2]} after ", ":x: Rollback stopped at"])
        assert not any(f"Started {label}" in t for label in LABELS[3:] for t in texts)

        # 3. The warning offers Retry step and Stop (and Dry run); a non-approver's Retry is refused privately.
        wait_until(lambda: "rollback_retry" in button_ids(story.current_warning()), 10, "Retry step button")
        current = story.current_warning()
        assert button(current, "rollback_retry")["text"]["text"] == "Retry step"
        assert button(current, "rollback_stop")["text"]["text"] == "Stop"
        assert button_ids(current) == ["rollback_retry", "rollback_stop", "rollback_dry_run"]
        assert "Stopped at a failing step" in json.dumps(current["blocks"])
        story.click(STRANGER, "rollback_retry")
        refusal = story.slack.wait_for(lambda c: c.method == "chat.postEphemeral" and c.params.get("user") == STRANGER)
        assert "not an approver" in refusal.params["text"]
        assert story.state() == "halted"

        # 4. The fault is fixed; an approver retries: steps 1-2 are not run again, 3-6 run, it recovers.
        world.kube.clear_failures()
        rollout_writes = len(world.kube.requests("PATCH", "rollouts"))
        story.click(GROUP_MEMBER, "rollback_retry")
        story.wait_thread(f"Retry from step 3 by <@{GROUP_MEMBER}>")
        _assert_recovered_and_frozen(story)
        assert len(world.helm_rollbacks()) == 1  # helm rollback ran once, in the first run only
        assert len(world.kube.requests("PATCH", "rollouts")) == rollout_writes
        assert [(p, e, s) for p, e, s, _ in _durations(story)] == [
            (0, "argo_rollouts", "done"), (1, "helm", "done"), (2, "feature_flag", "failed"),
            (2, "feature_flag", "done"), (3, "git_revert", "done"), (4, "argocd", "done"), (5, "mlflow_alias", "done")]
        assert world.flag() == "false"
        revert_sha, revert_message = world.git.log()[0]
        assert f"This reverts commit {world.bad_sha}." in revert_message
        app = world.application()
        assert "automated" not in app["spec"]["syncPolicy"]
        assert app["status"]["operationState"]["operation"]["sync"]["revision"] == revert_sha
        texts = story.thread()
        _in_order(texts, [":x: Rollback stopped at", f"Retry from step 3 by <@{GROUP_MEMBER}>"]
                  + [line for label in LABELS[2:] for line in (f"Started {label}:", f"Done {label} in ")]
                  + ["Auto-promotion disabled for this service (frozen)", "*Post-rollback checklist*"])
        retried = texts.index(next(t for t in texts if "Retry from step 3" in t))
        assert not any(f"Started {label}" in t for label in LABELS[:2] for t in texts[retried:])
        frozen = next(t for t in texts if "Auto-promotion disabled for this service (frozen)" in t)
        assert "Rollout prod/model-svc runs revision 2" in frozen  # the step done before the halt still counts
        assert "Auto-sync of Application argocd/model-svc stays off" in frozen
        checklist = next(t for t in texts if "*Post-rollback checklist*" in t)
        assert "Traffic to the bad version: 0%" in checklist
        _print_story(story, "step-3-fails story")
