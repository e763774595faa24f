"""The argocd executor against the fake Kubernetes API: auto-sync off and a sync operation on the Application,
the revision taken from an earlier git_revert step, the read-back of operationState, and errors."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from executors.argocd import ArgoCd, ArgoCdConfig
from executors.base import ExecutorError, StepContext, StepOutcome, TemporaryExecutorError
from tests import kube_env
from tests.kube_env import KubeEnv

kube_server, kube = kube_env.kube_server, kube_env.kube  # the shared fixtures (see tests/kube_env.py)

CTX = StepContext("model-svc", 1)
APP = "/apis/argoproj.io/v1alpha1/namespaces/argocd/applications/model-svc"
MERGE = "application/merge-patch+json"
REVERT = "4f1c2d9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e"
DISABLE = ("PATCH", APP, MERGE, {"spec": {"syncPolicy": {"automated": None}}})


def _sync(revision: str) -> tuple[str, str, str, Any]:
    return ("PATCH", APP, MERGE, {"operation": {"initiatedBy": {"username": "rollback-bot"},
                                                "sync": {"revision": revision}}})


def _executor(env: KubeEnv, **config: Any) -> ArgoCd:
    return ArgoCd(ArgoCdConfig.model_validate({"app": "model-svc", "timeout": "2s", **config}), env.client())


def _writes(env: KubeEnv) -> list[tuple[str, str, str | None, Any]]:
    return [(r.method, r.path, r.content_type, r.body) for r in env.fake.writes()]


def test_disables_auto_sync_then_syncs_the_revision_git_revert_pushed(kube: KubeEnv) -> None:
    kube.fake.seed_application("argocd", "model-svc", target_revision="main")
    reverted = StepOutcome("git_revert", True, "reverted", data={"revision": REVERT})
    context = StepContext("model-svc", 1, pin="main", earlier=(reverted,))
    executor = _executor(kube)
    plan = executor.plan(context=context)
    assert plan.data["sync_revision"] == REVERT and "git_revert" in plan.data["revision_from"]
    assert plan.command == (
        "kubectl patch application model-svc -n argocd --type merge -p '{\"spec\":{\"syncPolicy\":{\"automated\":null}}}'"
        " && kubectl patch application model-svc -n argocd --type merge -p "
        f"'{{\"operation\":{{\"initiatedBy\":{{\"username\":\"rollback-bot\"}},\"sync\":{{\"revision\":\"{REVERT}\"}}}}}}'")
    assert [(c.field, c.new) for c in plan.changes] == [("spec.syncPolicy.automated", "removed"),
                                                        ("status.sync.revision", REVERT)]

    outcome = executor.execute(plan=plan, context=context)

    assert _writes(kube) == [DISABLE, _sync(REVERT)]
    app = kube.fake.get("applications", "argocd", "model-svc")
    assert "automated" not in app["spec"]["syncPolicy"]
    assert app["spec"]["syncPolicy"]["syncOptions"] == ["CreateNamespace=true"]  # only automated is removed
    assert outcome.ok and outcome.data["phase"] == "Succeeded" and outcome.data["synced_revision"] == REVERT
    assert outcome.data["sync_status"] == "Synced"
    assert outcome.freeze_note and "stays off" in outcome.freeze_note
    assert "revision" not in outcome.data  # an argocd outcome never feeds a later sync


def test_planned_ahead_after_a_git_revert_step_it_names_the_revert_commit_not_the_branch(kube: KubeEnv) -> None:
    kube.fake.seed_application("argocd", "model-svc", target_revision="main")
    executor = _executor(kube)
    ahead = StepContext("model-svc", 1, before=("argo_rollouts", "git_revert"))
    plan = executor.plan(context=ahead)  # the warning / dry run: the revert does not exist yet
    assert plan.pin is None and "revert commit" in plan.summary and "git_revert" in plan.summary
    assert [(c.field, c.new) for c in plan.changes][-1] == ("status.sync.revision", "<the revert commit>")
    with pytest.raises(ExecutorError, match="no revert commit"):  # never syncs the placeholder
        executor.execute(plan=plan, context=ahead)
    assert _writes(kube) == []

    reverted = StepOutcome("git_revert", True, "reverted", data={"revision": REVERT})
    running = StepContext("model-svc", 1, earlier=(reverted,), before=("argo_rollouts", "git_revert"))
    executor.execute(plan=executor.plan(context=running), context=running)
    assert _writes(kube) == [DISABLE, _sync(REVERT)]


def test_without_an_earlier_revision_syncs_the_pinned_target_revision(kube: KubeEnv) -> None:
    kube.fake.seed_application("argocd", "model-svc", target_revision="release-1.4")
    executor = _executor(kube)
    opened = executor.plan(context=CTX)
    assert opened.pin == "release-1.4" and opened.data["revision_from"] == "spec.source.targetRevision"
    kube.fake.seed_application("argocd", "model-svc", target_revision="release-1.5")  # moved after the warning
    context = StepContext("model-svc", 1, pin=opened.pin)
    executor.execute(plan=executor.plan(context=context), context=context)
    assert _writes(kube)[-1] == _sync("release-1.4")


def test_auto_sync_already_off_sends_only_the_sync(kube: KubeEnv) -> None:
    kube.fake.seed_application("argocd", "model-svc", automated=False)
    executor = _executor(kube)
    plan = executor.plan(context=CTX)
    assert "auto-sync is already off" in plan.summary
    assert executor.execute(plan=plan, context=CTX).ok
    assert _writes(kube) == [_sync("main")]


def test_disable_only_sends_no_operation(kube: KubeEnv) -> None:
    kube.fake.seed_application("argocd", "model-svc")
    executor = _executor(kube, sync=False)
    outcome = executor.execute(plan=executor.plan(context=CTX), context=CTX)
    assert outcome.ok and _writes(kube) == [DISABLE]


def test_a_failed_sync_is_a_permanent_failure_with_argo_cds_message(kube: KubeEnv) -> None:
    kube.fake.seed_application("argocd", "model-svc")
    kube.fake.next_sync("argocd", "model-svc", "Failed", "one or more synchronization tasks completed unsuccessfully")
    executor = _executor(kube)
    with pytest.raises(ExecutorError) as raised:
        executor.execute(plan=executor.plan(context=CTX), context=CTX)
    assert not raised.value.retryable
    assert "sync to main ended Failed: one or more synchronization tasks" in str(raised.value)


def test_a_sync_that_never_finishes_times_out(kube: KubeEnv) -> None:
    kube.fake.seed_application("argocd", "model-svc")
    executor = _executor(kube, timeout="300ms")
    plan = executor.plan(context=CTX)
    with kube.fake.held_controllers(), pytest.raises(ExecutorError) as raised:
        executor.execute(plan=plan, context=CTX)
    assert "sync of Application argocd/model-svc: not confirmed within 0.3s" in str(raised.value)
    assert "has not started yet" in str(raised.value)


def test_an_operation_in_progress_is_a_temporary_refusal(kube: KubeEnv) -> None:
    kube.fake.seed_application("argocd", "model-svc", automated=False)
    app = kube.fake.get("applications", "argocd", "model-svc")
    app["operation"] = {"sync": {"revision": "other"}}
    kube.fake.put_object("applications", app)
    executor = _executor(kube)
    with pytest.raises(TemporaryExecutorError, match="another sync operation is in progress"):
        executor.execute(plan=executor.plan(context=CTX), context=CTX)
    assert kube.fake.writes() == []


def test_409_then_success_500_forever_and_404(kube: KubeEnv) -> None:
    kube.fake.seed_application("argocd", "model-svc")
    kube.fake.fail("PATCH", "/applications/model-svc$", 409, times=1)
    executor = _executor(kube)
    assert executor.execute(plan=executor.plan(context=CTX), context=CTX).ok
    assert _writes(kube)[:2] == [DISABLE, DISABLE]

    kube.fake.fail("PATCH", "/applications/model-svc$", 500, times=None)
    with pytest.raises(TemporaryExecutorError, match="patching Application argocd/model-svc: .*500.*gave up after 4"):
        executor.execute(plan=executor.plan(context=CTX), context=CTX)

    with pytest.raises(ExecutorError, match='reading Application argocd/gone: not found .*"gone" not found'):
        _executor(kube, app="gone").plan(context=CTX)


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValidationError, match="does nothing"):
        ArgoCdConfig.model_validate({"app": "m", "sync": False, "disable_auto_sync": False})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ArgoCdConfig.model_validate({"app": "m", "revision": "abc"})
    assert ArgoCdConfig.model_validate({"app": "m"}).namespace == "argocd"
