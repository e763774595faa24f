"""The warning's "What changed" lines: each executor's plan() says what is live on its layer (StepPlan.live) against
the same fakes its own tests use (a real `mlflow server`, the fake `helm`, a real git origin, the fake Kubernetes
API), and bot.slack.blocks renders those lines under the breach, inert and clipped, from the stored baseline.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from bot.infra.plans import Baseline, PlannedStep
from bot.infra.store import Incident
from bot.slack import blocks
from executors import git_revert as git_revert_module
from executors.argo_rollouts import ArgoRollouts, ArgoRolloutsConfig
from executors.base import Change, StepContext, StepPlan
from executors.git_revert import GitRevert
from executors.helm import Helm, HelmConfig
from executors.mlflow_alias import MlflowAlias, MlflowAliasConfig
from executors.mlflow_alias import live_text as mlflow_live_text
from executors.spec import Clients
from sandbox.model_service import seed_registry
from tests import kube_env
from tests.helm_env import FakeHelm, revisions, standard_history
from tests.kube_env import KubeEnv
from tests.test_exec_git_revert import DEV, Origin, make_origin

kube_server, kube = kube_env.kube_server, kube_env.kube  # the shared fixtures (see tests/kube_env.py)

CTX = StepContext("model-svc", 1)
RELEASE = "prod/model-svc"
UTC_MINUTE = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"
NASTY = "bump model-svc to v2 <!channel> & <@U0BOSS> <https://evil.example|click>"


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def _incident(steps: list[PlannedStep], **changes: Any) -> Incident:
    base = Incident(
        id=12, service="model-svc", active_service="model-svc", state="open", trigger="p95-latency",
        detail={"value": 0.412, "target": "< 0.25"}, baseline=Baseline.of(steps).to_dict(),
        breach_started_at=1_800_000_000.0, opened_at=1_800_000_030.0, warned_at=None, channel="C0MODELSVC",
        message_ts=None, progress_ts=None, requested_by=None, first_approver=None, approved_by=None, approved_at=None,
        executed_at=None, recovered_at=None, finished_at=None, error=None, verification={}, resume_from=None,
        halt_kind=None, auto_at=None, armed_by=None)
    return replace(base, **changes)  # type: ignore[arg-type]


def _plan(executor: str, live: str | None) -> StepPlan:
    return StepPlan(executor, f"{executor} summary", (Change("r", "f", "1", "2"),), "true", pin="2", live=live)


def _changed_section(body: list[dict[str, Any]]) -> str | None:
    return next((b["text"]["text"] for b in body if b["type"] == "section" and "text" in b
                 and b["text"]["text"].startswith("*What changed*")), None)


# ---- the executors' words --------------------------------------------------------------------------------------
def test_mlflow_says_which_version_the_alias_serves_and_where_it_came_from(mlflow_client: MlflowClient,
                                                                         unique_model: str) -> None:
    v1, v2 = seed_registry(mlflow_client, unique_model, versions=2)
    mlflow_client.set_registered_model_alias(unique_model, "previous_champion", v1)
    mlflow_client.set_registered_model_alias(unique_model, "champion", v2)
    served = mlflow_client.get_model_version(unique_model, v2)

    plan = MlflowAlias(MlflowAliasConfig(model=unique_model), mlflow_client).plan(context=CTX)

    by = f" by {served.user_id}" if served.user_id else ""
    assert plan.live == (f"`{unique_model}` v{v2} is @champion — registered {_utc(served.creation_timestamp / 1000)}"
                         f"{by}, run `{served.run_id}`, source `runs:/{served.run_id}/model`")


def test_mlflow_names_the_user_and_leaves_out_what_mlflow_left_empty() -> None:
    made = 1_800_000_060_000  # MLflow's creation_timestamp is in milliseconds
    alice = SimpleNamespace(version="5", creation_timestamp=made, user_id="alice", run_id="abc123",
                            source="runs:/abc123/model")
    assert mlflow_live_text("recommender", "champion", alice) == (
        f"`recommender` v5 is @champion — registered {_utc(made / 1000)} by alice, run `abc123`, "
        "source `runs:/abc123/model`")
    bare = SimpleNamespace(version="5", creation_timestamp=None, user_id="", run_id=None, source="")
    assert mlflow_live_text("recommender", "champion", bare) == "`recommender` v5 is @champion — registered"


def test_helm_says_the_deployed_revision_from_its_history(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    FakeHelm.install(monkeypatch, tmp_path, {RELEASE: standard_history()})
    plan = Helm(HelmConfig(release="model-svc", namespace="prod"), "helm").plan(context=CTX)
    assert plan.live == ("`model-svc` revision 3 deployed 2026-11-03 10:00 UTC — chart model-svc-0.3.0, app 1.2 "
                         "(Upgrade complete)")


@pytest.mark.parametrize(("updated", "shown"), [
    ("2026-12-02T13:01:07.123456789+01:00", " 2026-12-02 12:01 UTC"),  # real helm: RFC 3339 with nanoseconds, local
    ("2026-12-02T12:01:07.5Z", " 2026-12-02 12:01 UTC"),
    ("", ""),  # helm prints "" for a revision never deployed
])
def test_helm_reads_the_time_the_way_real_helm_prints_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         updated: str, shown: str) -> None:
    history = revisions(("superseded", "1.3", "Install complete"), ("deployed", "1.4.0", "Upgrade complete"))
    history[-1].update(updated=updated, chart="model-svc-1.4.0")
    FakeHelm.install(monkeypatch, tmp_path, {RELEASE: history})
    plan = Helm(HelmConfig(release="model-svc", namespace="prod"), "helm").plan(context=CTX)
    assert plan.live == f"`model-svc` revision 2 deployed{shown} — chart model-svc-1.4.0, app 1.4.0 (Upgrade complete)"


def _commit_at(origin: Origin, message: str, at: int) -> str:
    (Path(origin.dev.working_dir) / "model.yaml").write_text(f"version: {at}\n")
    origin.dev.index.add(["model.yaml"])
    stamp = f"{at} +0000"
    sha = origin.dev.index.commit(message, author=DEV, committer=DEV, author_date=stamp, commit_date=stamp).hexsha
    origin.dev.git.push("origin", "HEAD:refs/heads/main")
    return str(sha)


def _git_revert(origin: Origin, commit: str) -> GitRevert:
    spec = git_revert_module.SPEC
    built = spec.build(spec.config.model_validate({"repo": origin.url, "commit": commit}), Clients())
    assert isinstance(built, GitRevert)
    return built


def test_git_revert_says_the_commit_it_would_revert(tmp_path: Path) -> None:
    origin = make_origin(tmp_path)
    _commit_at(origin, "add model-svc config", 1_800_000_000)
    sha = _commit_at(origin, f"{NASTY}\n\nlonger body", 1_800_000_060)
    plan = _git_revert(origin, "last").plan(context=CTX)
    assert plan.live == f"commit `{sha[:12]}` \"{NASTY}\" by dev, committed {_utc(1_800_000_060)} on main"


def test_argo_rollouts_says_the_canary_image_and_the_stable_beside_it(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", ["model-svc:v1", "model-svc:v2", "model-svc:v3"], stable=2)
    executor = ArgoRollouts(ArgoRolloutsConfig(rollout="model-svc", namespace="prod"), kube.client())
    live = executor.plan(context=CTX).live
    assert live is not None and re.fullmatch(
        rf"`prod/model-svc` canary `model-svc:v3` is revision 3 \(ReplicaSet created {UTC_MINUTE}\), 20% of traffic; "
        r"stable is revision 2 `model-svc:v2`", live), live
    aborted = ArgoRollouts(ArgoRolloutsConfig(rollout="model-svc", namespace="prod", action="abort"), kube.client())
    assert aborted.plan(context=CTX).live == live  # the same words whatever the action


def test_argo_rollouts_says_when_the_bad_image_is_already_stable(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", ["model-svc:v1", "model-svc:v2"], stable=2)
    executor = ArgoRollouts(ArgoRolloutsConfig(rollout="model-svc", namespace="prod"), kube.client())
    live = executor.plan(context=CTX).live
    assert live is not None and re.fullmatch(
        rf"`prod/model-svc` runs `model-svc:v2` as stable, revision 2 \(ReplicaSet created {UTC_MINUTE}\)", live), live


def test_argo_rollouts_says_an_aborted_canary_has_no_traffic(kube: KubeEnv) -> None:
    kube.fake.seed_rollout("prod", "model-svc", ["model-svc:v1", "model-svc:v2"], stable=1, aborted=True)
    executor = ArgoRollouts(ArgoRolloutsConfig(rollout="model-svc", namespace="prod"), kube.client())
    live = executor.plan(context=CTX).live
    assert live is not None and "canary `model-svc:v2` is revision 2" in live
    assert "aborted (all traffic on stable); stable is revision 1 `model-svc:v1`" in live


# ---- the warning -----------------------------------------------------------------------------------------------
def test_the_warning_shows_each_layers_line_under_the_breach_with_outside_text_inert(tmp_path: Path) -> None:
    origin = make_origin(tmp_path)
    sha = _commit_at(origin, NASTY, 1_800_000_060)
    git_plan = _git_revert(origin, "last").plan(context=CTX)
    steps = [PlannedStep("mlflow_alias", plan=_plan("mlflow_alias", "`recommender` v5 is @champion")),
             PlannedStep("helm", plan=_plan("helm", "`model-svc` revision 7 deployed")),
             PlannedStep("git_revert", plan=git_plan),
             PlannedStep("feature_flag", plan=_plan("feature_flag", None)),  # says nothing: no line
             PlannedStep("argocd", error="cannot reach Argo CD")]  # not planned: no line
    incident = _incident(steps)  # the baseline as stored: to_dict, and from_dict in the warning

    _, body = blocks.warning(incident, approvers=["U0A"], confirm="dialog",
                             changed={"mlflow_alias": "promoted by the gate at 12:04 UTC & <!here>"})

    assert body[0]["text"]["text"].startswith(":rotating_light: *model-svc*")
    section = _changed_section(body)
    assert section is not None and body[1]["text"]["text"] == section  # right under the breach
    assert section.splitlines() == [
        "*What changed* (as found when the alert fired)",
        "• *MLflow:* `recommender` v5 is @champion — promoted by the gate at 12:04 UTC &amp; &lt;!here&gt;",
        "• *Helm:* `model-svc` revision 7 deployed",
        f"• *git:* commit `{sha[:12]}` \"bump model-svc to v2 &lt;!channel&gt; &amp; &lt;@U0BOSS&gt; "
        f"&lt;https://evil.example|click&gt;\" by dev, committed {_utc(1_800_000_060)} on main",
    ]
    flat = json.dumps(body)
    for live_markup in ("<!channel>", "<!here>", "<@U0BOSS>", "<https://evil.example"):
        assert live_markup not in flat, live_markup
    assert "<@U0A>" in flat  # the approvers the bot names itself stay mentions


def test_old_stored_plans_without_live_still_load_and_show_no_section() -> None:
    stored = _incident([PlannedStep("helm", plan=_plan("helm", None))]).baseline
    for step in stored["steps"]:
        del step["live"]  # a baseline stored before StepPlan had `live`
    incident = _incident([], baseline=stored)
    base = Baseline.from_dict(incident.baseline)
    assert base.steps[0].plan is not None and base.steps[0].plan.live is None
    _, body = blocks.warning(incident, approvers=["U0A"], confirm="dialog")
    assert _changed_section(body) is None
    assert blocks.what_changed(base, {"helm": "deployed by the release pipeline"}) == [
        "• *Helm:* deployed by the release pipeline"]


def test_live_round_trips_through_the_stored_baseline() -> None:
    steps = [PlannedStep("helm", plan=_plan("helm", "`model-svc` revision 7 deployed"))]
    stored = json.loads(json.dumps(Baseline.of(steps).to_dict()))  # as the store's JSON column hands it back
    plan = Baseline.from_dict(stored).steps[0].plan
    assert plan is not None and plan.live == "`model-svc` revision 7 deployed"


def test_long_lines_are_clipped_and_the_warning_stays_within_slack_limits() -> None:
    names = [("git_revert" if i % 2 else f"step{i}") for i in range(12)]
    steps = [PlannedStep(name, plan=_plan(name, "&" * 5000)) for name in names]
    _, body = blocks.warning(_incident(steps), approvers=["U0A"], confirm="dialog")
    section = _changed_section(body)
    assert section is not None and len(section) <= blocks.SECTION_LIMIT
    lines = section.splitlines()[1:]
    assert lines and all(len(line) <= blocks.LIVE_LINE_LIMIT and line.endswith("…") for line in lines)
    assert not re.search(r"&(?!amp;)", section)  # never cut inside an entity
    assert len(body) <= 50
