"""Readiness (bot.incidents.readiness) item by item, failing and passing, against real MLflow and Prometheus, the
Kubernetes fake, the fake helm, real git and the fake Slack Web API; its wording (bot.slack.checklist); the
`rollback-bot readiness` exit codes in a subprocess; and `/rollback readiness` over a signed request."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bot.incidents.approvers import Approvers
from bot.incidents.readiness import Item, Readiness, ReadinessReport
from bot.incidents.runner import Runner
from bot.infra.model_registry import ModelRegistry
from bot.infra.prom import Prometheus
from bot.infra.store import Store
from bot.slack import checklist
from bot.slack.slack_out import SlackOut, make_client
from bot.slo.policy import Service
from bot.slo.policy_file import parse_policy
from executors.registry import Clients, default_registry
from sandbox.model_service import ModelServiceSimulator, VersionProfile, seed_registry
from sandbox.servers import MlflowServer, PrometheusServer, free_port
from sandbox.slack_api import FakeSlackAPI
from tests import kube_env
from tests.handler_env import GROUP, GROUP_MEMBER, MODEL_SVC, OTHER_CHANNEL, HandlerEnv, seed_models, wait_until
from tests.helm_env import FakeHelm, revisions, standard_history
from tests.kube_env import KubeEnv
from tests.test_exec_git_revert import make_origin

kube_server, kube = kube_env.kube_server, kube_env.kube  # the shared fixtures (see tests/kube_env.py)

ROOT = Path(__file__).resolve().parent.parent
HEALTHY = VersionProfile(latency_seconds=0.05, auc=0.9, rmse=0.1, calibration_error=0.02, rejection_rate=0.01)
FULL, EMPTY, MISSING = "S0FULL", "S0EMPTY", "S0MISSING"
AUC = "min(model_auc{service=\"model-svc\"})"
LATENCY = "histogram_quantile(0.99, sum by (le) (rate(model_request_latency_seconds_bucket{service=\"model-svc\"}[1m])))"
SLOS = f"""\
      - {{name: auc, kind: quality, query: '{AUC}', below: 0.8}}
      - {{name: errors, burn_rate: {{errors: 'model_requests_total{{code="500"}}', total: model_requests_total,
          objective: 0.99}}}}
"""


def service(rollback: str, *, slos: str = SLOS, approvers: str = "[U0APPROVER]", extra: str = "",
            model: str = "m") -> Service:
    text = (f"services:\n  model-svc:\n    channel: C0MODELSVC\n    approvers: {approvers}\n    model: {model}\n"
            f"    slos:\n{slos}    rollback:\n{rollback}{extra}")
    return parse_policy(text).services["model-svc"]


def alias_step(model: str) -> str:
    return f"      - mlflow_alias: {{model: {model}, alias: champion, to: previous_champion}}\n"


def model_service(model: str, **kw: str) -> Service:
    """The service with svc.model = `model`: the step the promotion changes."""
    return service(alias_step(model), model=model, **kw)


# -- the servers -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, prometheus_bin: str) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping the simulated model service every second."""
    simulator = ModelServiceSimulator("model-svc", champion=lambda: "1", profiles={"1": HEALTHY}, default=HEALTHY)
    with simulator, PrometheusServer(tmp_path_factory.mktemp("readiness-prom"), [simulator.target], "1s",
                                     binary=prometheus_bin) as server:
        server.wait_for_series(AUC)
        server.wait_for_series("sum(rate(model_requests_total[5m])) > 0")
        yield server


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI(users_by_group={FULL: ["U0ONE", "U0TWO"], EMPTY: []}) as api:
        yield api


@dataclass
class Bench:
    prom: Prometheus
    slack: FakeSlackAPI
    mlflow: MlflowClient | None = None

    def readiness(self, *, kube: KubeEnv | None = None, prom: Prometheus | None = None) -> Readiness:
        clients = Clients(mlflow=self.mlflow, kube=kube.api_client if kube else None)
        runner = Runner(default_registry(), clients, Store("sqlite://"))
        approvers = Approvers(SlackOut(make_client("xoxb-test", self.slack.url)).usergroup_users)
        return Readiness(runner=runner, prom=prom or self.prom, approvers=approvers)

    def check(self, svc: Service, promoting: tuple[str, str | None] | None = None) -> ReadinessReport:
        return self.readiness().check(svc, promoting=promoting)


@pytest.fixture
def bench(prometheus: PrometheusServer, slack: FakeSlackAPI, mlflow_client: MlflowClient) -> Iterator[Bench]:
    prom = Prometheus(prometheus.url)
    try:
        yield Bench(prom, slack, mlflow_client)
    finally:
        prom.close()


def item(report: ReadinessReport, name: str) -> Item:
    found = report.item(name)
    assert found is not None, report
    return found


def registry(client: MlflowClient, model: str, *, champion: str | None = "2", previous: str | None = "1") -> None:
    seed_registry(client, model, versions=3)
    if champion:
        client.set_registered_model_alias(model, "champion", champion)
    if previous:
        client.set_registered_model_alias(model, "previous_champion", previous)


# -- baseline and dry run: MLflow ------------------------------------------------------------------------


def test_a_previous_champion_is_a_baseline_and_the_plan_dry_runs_clean(bench: Bench, unique_model: str) -> None:
    registry(bench.mlflow, unique_model)  # type: ignore[arg-type]
    report = bench.check(model_service(unique_model))
    assert item(report, "baseline") == Item("baseline", "ok", "1. mlflow_alias: champion v2 → v1")
    dry = item(report, "dry run")
    assert dry.status == "ok" and re.fullmatch(r"1 step planned in (\d+ ms|\d+\.\d s)", dry.detail)
    assert report.ready and report.failed == ()
    assert bench.mlflow.get_model_version_by_alias(unique_model, "champion").version == "2"  # type: ignore[union-attr]


def test_no_previous_champion_fails_baseline_and_dry_run(bench: Bench, unique_model: str) -> None:
    registry(bench.mlflow, unique_model, previous=None)  # type: ignore[arg-type]
    report = bench.check(model_service(unique_model))
    baseline, dry = item(report, "baseline"), item(report, "dry run")
    assert baseline.status == "failed" and "previous_champion" in baseline.detail
    assert dry.status == "failed" and dry.detail.startswith("0 of 1 step planned")
    assert not report.ready


def test_a_previous_champion_that_is_the_champion_has_nothing_to_go_back_to(bench: Bench, unique_model: str) -> None:
    registry(bench.mlflow, unique_model, champion="2", previous="2")  # type: ignore[arg-type]
    report = bench.check(model_service(unique_model))
    baseline = item(report, "baseline")
    assert baseline.status == "failed" and baseline.detail.startswith("1. mlflow_alias: nothing to go back to")
    assert item(report, "dry run").status == "ok"  # it plans; it just goes nowhere


def test_a_rollback_blocked_previous_champion_is_no_baseline(bench: Bench, unique_model: str) -> None:
    registry(bench.mlflow, unique_model)  # type: ignore[arg-type]
    ModelRegistry(bench.mlflow).block(unique_model, "1", incident_id=7)
    baseline = item(bench.check(model_service(unique_model)), "baseline")
    assert baseline.status == "failed" and "rollback_blocked=true" in baseline.detail


def test_only_a_champion_can_make_its_first_promotion(bench: Bench, unique_model: str) -> None:
    registry(bench.mlflow, unique_model, champion="1", previous=None)  # type: ignore[arg-type]
    svc = model_service(unique_model)
    assert not bench.check(svc).ready  # as it stands now there is no way back
    report = bench.check(svc, promoting=("2", "1"))
    assert item(report, "baseline") == Item("baseline", "ok", "1. mlflow_alias: champion v2 → v1")
    assert item(report, "dry run").status == "ok" and report.ready
    aliases = bench.mlflow.get_registered_model(unique_model).aliases  # type: ignore[union-attr]
    assert aliases == {"champion": "1"}  # checking moved nothing


@pytest.mark.parametrize(("outgoing", "expected"), [
    (None, "no outgoing champion"), ("2", "is the candidate itself"), ("1", "rollback_blocked=true")])
def test_before_a_promotion_the_outgoing_champion_must_be_a_way_back(
        bench: Bench, unique_model: str, outgoing: str | None, expected: str) -> None:
    registry(bench.mlflow, unique_model, champion="1", previous=None)  # type: ignore[arg-type]
    ModelRegistry(bench.mlflow).block(unique_model, "1", incident_id=3)
    report = bench.check(model_service(unique_model), promoting=("2", outgoing))
    baseline = item(report, "baseline")
    assert baseline.status == "failed" and expected in baseline.detail and not report.ready


def test_a_registry_that_cannot_be_read_is_failed_not_unknown(bench: Bench, unique_model: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = Bench(bench.prom, bench.slack, MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}"))
    report = down.check(model_service(unique_model))
    assert item(report, "baseline").status == "failed" and item(report, "dry run").status == "failed"
    assert f"reading {unique_model}@champion" in item(report, "baseline").detail


# -- baseline: helm, Argo Rollouts, git, Argo CD ----------------------------------------------------------


def test_helm_needs_a_revision_to_go_back_to(bench: Bench, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    step = "      - helm: {release: model-svc, namespace: prod}\n"
    FakeHelm.install(monkeypatch, tmp_path, {"prod/model-svc": revisions(("deployed", "1.0", "Install complete"))})
    one = item(bench.check(service(step)), "baseline")
    assert one.status == "failed" and "no deployed or superseded revision before" in one.detail
    FakeHelm.install(monkeypatch, tmp_path, {"prod/model-svc": standard_history()})
    two = item(bench.check(service(step)), "baseline")
    assert two.status == "ok" and two.detail.startswith("1. helm: ") and "3 → 2" in two.detail


def test_the_rollout_needs_a_stable_replicaset(bench: Bench, kube: KubeEnv) -> None:
    svc = service("      - argo_rollouts: {rollout: model-svc, namespace: prod}\n")
    kube.fake.seed_rollout("prod", "model-svc", ["model-svc:v1", "model-svc:v2", "model-svc:v3"], stable=2)
    ok = item(bench.readiness(kube=kube).check(svc), "baseline")
    assert ok.status == "ok" and ok.detail.startswith("1. argo_rollouts: ")
    rollout = kube.fake.get("rollouts", "prod", "model-svc")
    rollout["status"]["stableRS"] = "gone12345"
    kube.fake.put_object("rollouts", rollout)
    gone = item(bench.readiness(kube=kube).check(svc), "baseline")
    assert gone.status == "failed" and "no ReplicaSet matches status.stableRS 'gone12345'" in gone.detail


def test_the_argocd_app_must_exist(bench: Bench, kube: KubeEnv) -> None:
    svc = service("      - argocd: {app: model-svc}\n")
    missing = bench.readiness(kube=kube).check(svc)
    assert item(missing, "baseline").status == "failed" and item(missing, "dry run").status == "failed"
    kube.fake.seed_application("argocd", "model-svc")
    there = bench.readiness(kube=kube).check(svc)
    assert item(there, "baseline").status == "ok" and item(there, "dry run").status == "ok"


def test_the_commit_to_revert_must_resolve(bench: Bench, tmp_path: Path) -> None:
    origin = make_origin(tmp_path)
    origin.commit("add model-svc config", {"model.yaml": "version: 1\n"})
    origin.commit("bump model-svc to v2", {"model.yaml": "version: 2\n"})
    found = bench.check(service(f"      - git_revert: {{repo: '{origin.url}', commit: {{match: '^bump'}}}}\n"))
    assert item(found, "baseline").status == "ok" and "1. git_revert: " in item(found, "baseline").detail
    lost = bench.check(service(f"      - git_revert: {{repo: '{origin.url}', commit: {{match: '^no such'}}}}\n"))
    assert item(lost, "baseline").status == "failed" and item(lost, "dry run").status == "failed"
    assert item(lost, "dry run").detail.startswith("0 of 1 step planned")


# -- SLO data and kinds -----------------------------------------------------------------------------------

CLEAN = "      - argocd: {app: not-checked}\n"  # the SLO items do not depend on the plan


def test_every_slo_returns_data(bench: Bench) -> None:
    grouped = "      - {name: auc-by, kind: quality, query: 'max by (service) (model_auc)', by: service, below: 0.8}\n"
    data = item(bench.check(service(CLEAN, slos=SLOS + grouped)), "slo data")
    assert data == Item("slo data", "ok", "3 SLOs return data: auc, errors, auc-by")


def test_an_slo_without_data_fails_and_names_it(bench: Bench) -> None:
    none = ("      - {name: ghost, kind: latency, query: 'model_auc{service=\"nobody\"}', above: 1}\n"
            "      - {name: other-svc, query: 'max by (service) (model_auc)', by: service, match: other, below: 1}\n")
    data = item(bench.check(service(CLEAN, slos=SLOS + none)), "slo data")
    assert data == Item("slo data", "failed", "no data now: ghost, other-svc")


def test_prometheus_unreachable_fails_slo_data_with_the_error(bench: Bench) -> None:
    down = Prometheus(f"http://127.0.0.1:{free_port()}", timeout=2, retries=0)
    try:
        data = item(bench.readiness(prom=down).check(service(CLEAN)), "slo data")
    finally:
        down.close()
    assert data.status == "failed" and data.detail.startswith("Prometheus: auc: ConnectionError")


@pytest.mark.parametrize(("kinds", "missing"), [
    (("quality", "latency"), ()), (("other", "errors"), ("kind: quality",)),
    (("quality", "throughput"), ("kind: latency",)), (("other", "other"), ("kind: quality", "kind: errors"))])
def test_slo_kinds_want_quality_and_latency_or_errors(bench: Bench, kinds: tuple[str, str],
                                                      missing: tuple[str, ...]) -> None:
    slos = "".join(f"      - {{name: s{i}, kind: {kind}, query: '{AUC}', below: 0.8}}\n" for i, kind in enumerate(kinds))
    kind = item(bench.check(service(CLEAN, slos=slos)), "slo kinds")
    if not missing:
        assert kind == Item("slo kinds", "ok", "s0 (quality), s1 (latency)")
    else:
        assert kind.status == "failed" and all(m in kind.detail for m in missing)


def test_a_burn_rate_slo_counts_as_errors(bench: Bench) -> None:
    assert item(bench.check(service(CLEAN)), "slo kinds") == Item("slo kinds", "ok", "auc (quality), errors (errors)")


# -- approvers and the recover target ----------------------------------------------------------------------


@pytest.mark.parametrize(("approvers", "status", "detail"), [
    ("[U0APPROVER]", "ok", "1 person: U0APPROVER"),
    (f"[{FULL}]", "ok", f"2 people: {FULL} (2 members)"),
    (f"[U0APPROVER, {EMPTY}]", "ok", f"1 person: U0APPROVER, {EMPTY} (0 members)"),
    (f"[{EMPTY}]", "failed", f"nobody: {EMPTY} (0 members); add a user id or a group with members"),
    (f"[U0APPROVER, {MISSING}]", "failed", f"could not read user group {MISSING}: "),
])
def test_approvers_resolve_to_a_person(bench: Bench, approvers: str, status: str, detail: str) -> None:
    found = item(bench.check(service(CLEAN, approvers=approvers)), "approvers")
    assert found.status == status and found.detail.startswith(detail)
    if status == "failed" and MISSING in detail:
        assert "no_such_subteam" in found.detail


def test_a_recover_target_is_set(bench: Bench) -> None:
    assert item(bench.check(service(CLEAN)), "recover target") == Item("recover target", "ok", "5m")
    unset = item(bench.check(service(CLEAN, extra="    targets: {recover: null}\n")), "recover target")
    assert unset.status == "failed" and "targets: {recover: 5m}" in unset.detail


# -- the wording ------------------------------------------------------------------------------------------


def test_the_checklist_and_the_notice_name_the_failed_items_and_keep_outside_text_inert() -> None:
    report = ReadinessReport("model-svc", (
        Item("baseline", "failed", "1. helm: error <!channel>"), Item("dry run", "ok", "1 step planned in 0.1 s"),
        Item("slo data", "unknown", "a baseline-relative SLO"), Item("slo kinds", "failed", "missing quality")))
    assert report.ready is False and [i.name for i in report.failed] == ["baseline", "slo kinds"]
    assert checklist.checklist(report).splitlines() == [
        "*model-svc* is NOT ready to roll back: 2 items failed",
        ":x: *baseline*: 1. helm: error &lt;!channel&gt;",
        ":white_check_mark: *dry run*: 1 step planned in 0.1 s",
        ":grey_question: *slo data*: a baseline-relative SLO",
        ":x: *slo kinds*: missing quality"]
    assert checklist.not_ready_notice("model-svc", "6", report) == (
        "Not promoting v6 of model-svc: the way back is not ready — baseline: 1. helm: error &lt;!channel&gt;; "
        "slo kinds: missing quality. It is promoted once every item passes.")
    unknown_only = ReadinessReport("model-svc", (Item("slo data", "unknown", "not yet"),))
    assert unknown_only.ready and checklist.checklist(unknown_only).startswith("*model-svc* is ready to roll back\n")


# -- the CLI ------------------------------------------------------------------------------------------------


def cli(tmp_path: Path, policy: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "policy.yaml"
    path.write_text(policy)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "PROMETHEUS_", "MLFLOW_"))}
    return subprocess.run([sys.executable, "-m", "bot.cli", "readiness", "--policy", str(path), *args],
                          capture_output=True, text=True, cwd=ROOT, env={**base, **env}, timeout=120)


def policy_text(model: str, *, second: bool = False) -> str:
    text = "services:\n"
    for name, extra in [("model-svc", ""), *([("other-svc", "    targets: {recover: null}\n")] if second else [])]:
        text += (f"  {name}:\n    channel: C0MODELSVC\n    approvers: [U0APPROVER]\n    model: {model}\n"
                 f"    slos:\n{SLOS}    rollback:\n{alias_step(model)}{extra}")
    return text


def test_cli_exit_codes(bench: Bench, prometheus: PrometheusServer, mlflow_server: MlflowServer,
                        unique_model: str, tmp_path: Path) -> None:
    registry(bench.mlflow, unique_model)  # type: ignore[arg-type]
    env = {"PROMETHEUS_URL": prometheus.url, "MLFLOW_TRACKING_URI": mlflow_server.url}

    ready = cli(tmp_path, policy_text(unique_model), env=env)
    assert ready.returncode == 0, ready.stderr
    lines = ready.stdout.splitlines()
    assert lines[0].split(None, 3) == ["model-svc", "ok", "baseline", "1. mlflow_alias: champion v2 → v1"]
    assert len(lines) == 7 and lines[-1] == "ready"

    not_ready = cli(tmp_path, policy_text(unique_model, second=True), env=env)
    assert not_ready.returncode == 1, not_ready.stderr
    assert "other-svc  failed   recover target  no recover target" in not_ready.stdout
    assert not_ready.stdout.splitlines()[-1] == "NOT READY: 1 of 2 services"
    only = cli(tmp_path, policy_text(unique_model, second=True), "model-svc", env=env)
    assert only.returncode == 0 and "other-svc" not in only.stdout

    unknown = cli(tmp_path, policy_text(unique_model), "nope-svc", env=env)
    assert unknown.returncode == 2 and "unknown service 'nope-svc'; known services: model-svc" in unknown.stderr
    bad = cli(tmp_path, policy_text(unique_model).replace("below: 0.8", "below: high"), env=env)
    assert bad.returncode == 2 and f"{tmp_path / 'policy.yaml'}:" in bad.stderr and bad.stdout == ""
    unset = cli(tmp_path, policy_text(unique_model), env={"MLFLOW_TRACKING_URI": mlflow_server.url})
    assert unset.returncode == 2 and "missing environment variables: PROMETHEUS_URL" in unset.stderr


def test_cli_without_a_slack_token_fails_only_a_group(bench: Bench, prometheus: PrometheusServer,
                                                      mlflow_server: MlflowServer, unique_model: str,
                                                      tmp_path: Path) -> None:
    registry(bench.mlflow, unique_model)  # type: ignore[arg-type]
    policy = policy_text(unique_model).replace("[U0APPROVER]", f"[U0APPROVER, {FULL}]")
    run = cli(tmp_path, policy, env={"PROMETHEUS_URL": prometheus.url, "MLFLOW_TRACKING_URI": mlflow_server.url})
    assert run.returncode == 1, run.stderr
    approvers = next(line for line in run.stdout.splitlines() if "approvers" in line)
    assert approvers.split(None, 3)[1] == "failed" and "SLACK_BOT_TOKEN is not set" in approvers


# -- /rollback readiness ------------------------------------------------------------------------------------


def test_rollback_readiness_answers_the_checklist(tmp_path: Path, mlflow_server: MlflowServer,
                                                  mlflow_client: MlflowClient, unique_model: str) -> None:
    with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as api:
        env = HandlerEnv(tmp_path, api, mlflow_client, seed_models(mlflow_client, unique_model),
                         mlflow_url=mlflow_server.url).start()
        try:
            env.command(f"readiness {MODEL_SVC}", channel=OTHER_CHANNEL)
            call = wait_until(lambda: next((c for c in api.calls("chat.postEphemeral")
                                            if "ready to roll back" in c.params.get("text", "")), None),
                              "the readiness answer", timeout=30)
        finally:
            env.stop()
    text = html.unescape(str(call.params["text"]))
    lines = text.splitlines()
    # HandlerEnv has no Prometheus (a closed port) and its one SLO is of kind other: two items fail.
    assert lines[0] == f"*{MODEL_SVC}* is NOT ready to roll back: 2 items failed"
    assert ":white_check_mark: *baseline*: 1. mlflow_alias: champion v2 → v1" in lines
    assert any(line.startswith(":white_check_mark: *dry run*: 1 step planned in ") for line in lines)
    assert any(line.startswith(":x: *slo data*: Prometheus: auc: ") for line in lines)
    assert any(line.startswith(":x: *slo kinds*: missing a model-quality SLO") for line in lines)
    assert f":white_check_mark: *approvers*: 2 people: U0APPROVER, {GROUP} (1 member)" in lines
    assert ":white_check_mark: *recover target*: 5m" in lines
    assert call.params.get("user") == "U0APPROVER" and call.params.get("channel") == OTHER_CHANNEL


# -- the promotion gate ----------------------------------------------------------------------------------


def test_the_gate_holds_a_candidate_whose_way_back_is_not_ready_says_so_once_then_promotes(
        bench: Bench, unique_model: str, tmp_path: Path) -> None:
    from bot.slo.gate import Gate
    from tests.stubs import Clock

    registry(bench.mlflow, unique_model, champion="1", previous=None)  # type: ignore[arg-type]
    bench.mlflow.set_registered_model_alias(unique_model, "candidate", "2")  # type: ignore[union-attr]
    ModelRegistry(bench.mlflow).block(unique_model, "1", incident_id=3)  # the outgoing v1: no way back
    svc = model_service(unique_model, extra="    promote: {healthy_for: 10s}\n")
    clock, store = Clock(), Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    readiness = bench.readiness()
    gate = Gate(store, ModelRegistry(bench.mlflow), clock=clock, alias_ttl=0,
                readiness=lambda s, candidate, outgoing: readiness.check(s, promoting=(candidate, outgoing)))
    store.set_healthy_since(svc.name, clock.now - 60)

    held, again = gate.consider(svc), gate.consider(svc)
    assert not held.promoted and held.held == "readiness" and held.version == "2" and held.notify
    assert again.held == "readiness" and not again.notify  # one message per candidate, not one per cycle
    notice = checklist.not_ready_notice(svc.name, "2", held.readiness)  # what bot.incidents.detection posts
    assert notice.startswith("Not promoting v2 of model-svc: the way back is not ready")
    assert "baseline" in notice and "rollback_blocked" in notice
    assert bench.mlflow.get_model_version_by_alias(unique_model, "champion").version == "1"  # type: ignore[union-attr]

    ModelRegistry(bench.mlflow).unblock(unique_model, "1")  # someone fixed the way back
    clock.tick(61)  # past NOT_READY_RECHECK: readiness is asked again
    promoted = gate.consider(svc)
    assert promoted.promoted and (promoted.version, promoted.previous) == ("2", "1")
