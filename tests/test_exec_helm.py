"""The helm executor against the fake `helm` on PATH (tests/bin/helm): exact argv, pinned revisions, read-back
of the new revision, and helm's own error text for failures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bot.slo.policy import RollbackStep
from executors import helm as helm_module
from executors.base import ExecutorError, StepContext, TemporaryExecutorError
from executors.helm import Helm, HelmConfig, go_duration
from executors.registry import Clients, Registry, default_registry
from tests.helm_env import FakeHelm, revisions, standard_history

RELEASE = "prod/model-svc"
HISTORY = ["history", "model-svc", "-n", "prod", "-o", "json"]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeHelm:
    return FakeHelm.install(monkeypatch, tmp_path, {RELEASE: standard_history()})


def _helm(**config: Any) -> Helm:
    spec = default_registry().get("helm")
    executor = spec.build(spec.config.model_validate({"release": "model-svc", "namespace": "prod", **config}),
                          Clients())
    assert isinstance(executor, Helm)
    return executor


def _upgrade(fake: FakeHelm, app_version: str) -> None:
    """Someone runs `helm upgrade`: the deployed revision is superseded by a new deployed one."""
    state = fake.read()
    rows = state["releases"][RELEASE]
    rows[-1]["status"] = "superseded"
    rows.append(dict(rows[-1], revision=len(rows) + 1, status="deployed", app_version=app_version,
                     chart=f"model-svc-0.{len(rows) + 1}.0", description="Upgrade complete"))
    fake.write(state)


def _ctx(pin: str | None = None) -> StepContext:
    return StepContext("model-svc", 1, pin)


def test_plan_resolves_previous_to_a_revision_number_and_changes_nothing(fake: FakeHelm) -> None:
    before = fake.read()
    plan = _helm().plan(context=_ctx())
    assert plan.pin == "2" and not plan.noop
    assert plan.command == "helm rollback model-svc 2 -n prod --wait --timeout 5m0s"
    assert [(c.field, c.old, c.new) for c in plan.changes] == [
        ("revision", "3", "2"), ("chart", "model-svc-0.3.0 app 1.2", "model-svc-0.2.0 app 1.1")]
    assert plan.data["from_revision"] == 3 and plan.data["to_revision"] == 2
    assert fake.calls() == [HISTORY]
    assert fake.read() == before


def test_previous_skips_failed_revisions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    history = revisions(("superseded", "1.0", "Install complete"), ("superseded", "1.1", "Upgrade complete"),
                        ("failed", "1.2", 'Upgrade "model-svc" failed: timed out waiting for the condition'),
                        ("deployed", "1.3", "Upgrade complete"))
    FakeHelm.install(monkeypatch, tmp_path, {RELEASE: history})
    plan = _helm().plan(context=_ctx())
    assert (plan.data["from_revision"], plan.pin) == (4, "2")


def test_execute_rolls_back_and_reads_the_new_revision_back(fake: FakeHelm) -> None:
    executor = _helm()
    plan = executor.plan(context=_ctx())
    outcome = executor.execute(plan=plan, context=_ctx(plan.pin))
    assert outcome.ok and outcome.data["new_revision"] == 4 and outcome.data["to_revision"] == 2
    assert "revision" not in outcome.data  # that key is a git revision for a later argocd step
    rows = fake.history(RELEASE)
    assert [(r["revision"], r["status"]) for r in rows] == [
        (1, "superseded"), (2, "superseded"), (3, "superseded"), (4, "deployed")]
    assert rows[-1]["description"] == "Rollback to 2" and rows[-1]["app_version"] == "1.1"
    assert fake.calls() == [HISTORY, HISTORY, ["rollback", "model-svc", "2", "-n", "prod", "--wait", "--timeout", "5m0s"],
                            HISTORY]


def test_a_second_run_is_a_noop_and_does_not_roll_back_again(fake: FakeHelm) -> None:
    executor = _helm()
    plan = executor.plan(context=_ctx())
    executor.execute(plan=plan, context=_ctx(plan.pin))
    again = executor.plan(context=_ctx(plan.pin))
    assert again.noop and again.pin == "2"
    outcome = executor.execute(plan=again, context=_ctx(plan.pin))
    assert outcome.ok and outcome.data["noop"] and outcome.data["new_revision"] == 4
    assert sum(call[0] == "rollback" for call in fake.calls()) == 1
    assert len(fake.history(RELEASE)) == 4


def test_pinned_revision_wins_over_a_later_upgrade(fake: FakeHelm) -> None:
    pin = _helm().plan(context=_ctx()).pin  # at incident open: previous = 2
    _upgrade(fake, "1.3")
    plan = _helm().plan(context=_ctx(pin))
    assert (plan.data["from_revision"], plan.data["to_revision"]) == (4, 2)
    assert _helm().plan(context=_ctx()).pin == "3"  # unpinned, `previous` would now mean 3


def test_integer_revision_kube_context_and_timeout_reach_helm(fake: FakeHelm) -> None:
    executor = _helm(revision=1, timeout="90s", kube_context="prod-eu")
    plan = executor.plan(context=_ctx())
    assert plan.command == "helm rollback model-svc 1 -n prod --kube-context prod-eu --wait --timeout 1m30s"
    executor.execute(plan=plan, context=_ctx(plan.pin))
    (rollback,) = [call for call in fake.calls() if call[0] == "rollback"]
    assert rollback == ["rollback", "model-svc", "1", "-n", "prod", "--kube-context", "prod-eu", "--wait",
                        "--timeout", "1m30s"]
    assert all(call[call.index("--kube-context") + 1] == "prod-eu" for call in fake.calls())
    assert fake.history(RELEASE)[-1]["description"] == "Rollback to 1"


def test_refuses_to_roll_back_over_a_change_made_since_the_plan(fake: FakeHelm) -> None:
    executor = _helm()
    plan = executor.plan(context=_ctx())
    _upgrade(fake, "1.3")
    with pytest.raises(ExecutorError, match="moved to revision 4 since the plan"):
        executor.execute(plan=plan, context=_ctx(plan.pin))
    assert not any(call[0] == "rollback" for call in fake.calls())


def test_unknown_release_carries_helms_error(fake: FakeHelm) -> None:
    with pytest.raises(ExecutorError) as caught:
        _helm(release="other-svc").plan(context=_ctx())
    assert "helm exited with status 1: Error: release: not found" in str(caught.value)
    assert not caught.value.retryable


def test_a_revision_outside_the_history_is_refused_before_helm_runs(fake: FakeHelm) -> None:
    with pytest.raises(ExecutorError, match=r"has no revision 9 \(history has 1..3\)"):
        _helm(revision=9).plan(context=_ctx())


def test_wait_timeout_is_a_temporary_error_and_helm_records_a_failed_revision(fake: FakeHelm) -> None:
    executor = _helm()
    plan = executor.plan(context=_ctx())
    fake.fail("rollback", error="timeout")
    with pytest.raises(TemporaryExecutorError) as caught:
        executor.execute(plan=plan, context=_ctx(plan.pin))
    assert "Error: release model-svc failed: timed out waiting for the condition" in str(caught.value)
    assert [(r["revision"], r["status"]) for r in fake.history(RELEASE)][-2:] == [(3, "deployed"), (4, "failed")]


def test_unreachable_cluster_is_temporary_and_custom_errors_keep_their_first_lines(fake: FakeHelm) -> None:
    fake.fail("history", error="unreachable", times=1)
    with pytest.raises(TemporaryExecutorError, match="Kubernetes cluster unreachable"):
        _helm().plan(context=_ctx())
    assert _helm().plan(context=_ctx()).pin == "2"  # the fault was for one call only
    fake.fail("history", stderr="Error: query: failed to query with labels: secrets is forbidden\nline 2\nline 3"
              "\nline 4\nline 5\nline 6 is not shown")
    with pytest.raises(ExecutorError) as caught:
        _helm().plan(context=_ctx())
    assert "secrets is forbidden\nline 2\nline 3\nline 4\nline 5" in str(caught.value)
    assert "line 6" not in str(caught.value) and not caught.value.retryable


def test_a_release_busy_with_another_operation_is_temporary(fake: FakeHelm) -> None:
    executor = _helm()
    plan = executor.plan(context=_ctx())
    fake.fail("rollback", error="busy")
    with pytest.raises(TemporaryExecutorError, match=r"another operation \(install/upgrade/rollback\) is in progress"):
        executor.execute(plan=plan, context=_ctx(plan.pin))


def test_a_pending_operation_in_the_history_is_temporary_and_nothing_runs(fake: FakeHelm) -> None:
    executor = _helm()
    plan = executor.plan(context=_ctx())
    _upgrade(fake, "1.3")
    state = fake.read()
    state["releases"][RELEASE][-1].update(status="pending-upgrade", description="Preparing upgrade")
    state["releases"][RELEASE][-2]["status"] = "deployed"
    fake.write(state)
    with pytest.raises(TemporaryExecutorError, match="is busy: revision 4 is pending-upgrade"):
        executor.execute(plan=plan, context=_ctx(plan.pin))
    assert not any(call[0] == "rollback" for call in fake.calls())


def test_helms_warnings_do_not_hide_its_error(fake: FakeHelm) -> None:
    fake.fail("history", stderr="WARNING: Kubernetes configuration file is group-readable. This is insecure.\n"
              "Error: Kubernetes cluster unreachable: the server has asked for the client to provide credentials")
    with pytest.raises(ExecutorError) as caught:
        _helm().plan(context=_ctx())
    assert str(caught.value).endswith("helm exited with status 1: Error: Kubernetes cluster unreachable: "
                                      "the server has asked for the client to provide credentials")


def test_missing_or_unrunnable_binary_is_a_clear_error(fake: FakeHelm, tmp_path: Path) -> None:
    config = HelmConfig(release="model-svc", namespace="prod")
    with pytest.raises(ExecutorError, match="the helm executable 'helm-not-installed' was not found"):
        helm_module.SPEC.build(config, Clients(helm="helm-not-installed")).plan(context=_ctx())
    not_executable = tmp_path / "helm"
    not_executable.write_text("#!/bin/sh\n")
    with pytest.raises(ExecutorError, match="cannot run"):
        Helm(config, str(not_executable)).plan(context=_ctx())


def test_output_that_is_not_helms_json_is_a_clear_error(tmp_path: Path) -> None:
    liar = tmp_path / "helm"
    liar.write_text("#!/usr/bin/env python3\nprint('REVISION UPDATED STATUS')\n")
    liar.chmod(0o755)
    with pytest.raises(ExecutorError, match="unexpected output from helm"):
        Helm(HelmConfig(release="model-svc", namespace="prod"), str(liar)).plan(context=_ctx())


@pytest.mark.parametrize(("config", "problem"), [
    ({"release": "model-svc", "namespace": "prod", "revison": 2}, "Extra inputs are not permitted"),
    ({"release": "model-svc", "namespace": "prod", "revision": "prev"}, "revision must be `previous` or a revision"),
    ({"release": "model-svc", "namespace": "prod", "revision": 0}, "revision must be `previous` or a revision"),
    ({"release": "model-svc", "namespace": "prod", "timeout": "soon"}, "expected a duration like 5m"),
    ({"release": "model-svc", "namespace": "prod", "timeout": "0s"}, "at least 1s"),
    ({"release": "Model_Svc", "namespace": "prod"}, "should match pattern"),
    ({"namespace": "prod"}, "release\n  Field required"),
])
def test_config_errors_name_the_field(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RollbackStep.model_validate({"helm": config}, context={"registry": Registry([helm_module.SPEC])})
    assert problem in str(caught.value)


def test_durations_reach_helm_in_gos_format() -> None:
    assert [go_duration(s) for s in (5, 90, 300, 3600, 5400)] == ["5s", "1m30s", "5m0s", "1h0m0s", "1h30m0s"]
    assert HelmConfig(release="a", namespace="b", timeout="1h30m").timeout == 5400
    assert HelmConfig(release="a", namespace="b", timeout="5m0s").timeout == 300
    assert HelmConfig(release="a", namespace="b", timeout=45).timeout == 45


def test_the_fake_rejects_a_timeout_without_unit_like_helm(fake: FakeHelm) -> None:
    """The fake checks what the executor sends: a bare number is not a Go duration."""
    executor = _helm()
    plan = executor.plan(context=_ctx())
    executor.command = lambda revision: ["rollback", "model-svc", str(revision), "-n", "prod", "--timeout", "300"]  # type: ignore[method-assign]
    with pytest.raises(ExecutorError, match='invalid argument "300" for "--timeout" flag: time: missing unit'):
        executor.execute(plan=plan, context=_ctx(plan.pin))


def test_registered_by_name() -> None:
    assert {"helm", "git_revert"} <= set(default_registry().names())


def test_finding14_the_fake_writes_helms_rollback_record_and_the_read_back_accepts_it(fake: FakeHelm) -> None:
    """Real helm (pkg/action/rollback.go) appends revision current+1, deployed, `Rollback to N`, with revision N's
    chart and app_version, and supersedes the revision that was deployed. The fake does the same, the executor's
    read-back takes that record as success, and a later plan sees the release already rolled back."""
    executor = _helm()
    plan = executor.plan(context=_ctx())
    outcome = executor.execute(plan=plan, context=_ctx(plan.pin))
    assert outcome.ok and outcome.data["new_revision"] == 4 and "noop" not in outcome.data
    rows = fake.history(RELEASE)
    assert [(r["revision"], r["status"], r["description"]) for r in rows[-2:]] == [
        (3, "superseded", "Upgrade complete"), (4, "deployed", "Rollback to 2")]
    assert (rows[-1]["chart"], rows[-1]["app_version"]) == ("model-svc-0.2.0", "1.1")  # revision 2's chart
    assert set(rows[-1]) == {"revision", "updated", "status", "chart", "app_version", "description"}
    again = _helm().plan(context=_ctx(plan.pin))
    assert again.noop and (again.data["from_revision"], again.pin) == (4, "2")


def test_finding14_a_history_written_by_real_helm_is_read_as_rolled_back(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    """A release rolled back by a real helm (`Rollback to 2`, or helm 4's `rollback_revision`) is already done: the
    plan is a no-op and execute runs no second rollback."""
    history = revisions(("superseded", "1.0", "Install complete"), ("superseded", "1.1", "Upgrade complete"),
                        ("superseded", "1.2", "Upgrade complete"), ("deployed", "1.1", "Rollback to 2"))
    fake = FakeHelm.install(monkeypatch, tmp_path, {RELEASE: history})
    plan = _helm().plan(context=_ctx("2"))
    assert plan.noop
    outcome = _helm().execute(plan=plan, context=_ctx("2"))
    assert outcome.ok and outcome.data["noop"] and outcome.data["new_revision"] == 4
    assert not any(call[0] == "rollback" for call in fake.calls())
    helm4 = dict(history[-1], description="rolled back by on-call", rollback_revision=2)
    assert helm_module.rolled_back_to(helm4, 2) and not helm_module.rolled_back_to(helm4, 3)
    assert not helm_module.rolled_back_to(dict(history[-1], description="Rolled back to 2"), 2)
