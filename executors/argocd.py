"""Argo CD rollback: turn auto-sync off and sync the Application to the known-good (or reverted) revision.

Built by bot.incidents.runner from a policy step `argocd: {app, namespace, sync, disable_auto_sync}`. Both go through
the Kubernetes API on the Application resource, as `kubectl patch` would send them:

- disable_auto_sync: merge patch `{"spec":{"syncPolicy":{"automated":null}}}`, so Argo CD cannot re-apply
  the bad commit (it also refuses its own rollbacks while auto-sync is on);
- sync: merge patch `{"operation":{"initiatedBy":{"username":"rollback-bot"},"sync":{"revision":REV}}}`,
  then the Application is read back until status.operationState is this operation's and Succeeded
  (Failed / Error are permanent failures).

REV is the `revision` in an earlier step's outcome data (git_revert puts the revert commit there), else the
pin, else spec.source.targetRevision as the plan found it when the incident opened.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from executors.base import Change, ExecutorError, StepContext, StepOutcome, StepPlan, TemporaryExecutorError
from executors.kube import MERGE_PATCH, Kube, Obj, Ref, Seconds
from executors.spec import Access, Clients, ExecutorSpec

DISABLE_AUTO_SYNC = {"spec": {"syncPolicy": {"automated": None}}}


class ArgoCdConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app: str = Field(min_length=1)
    namespace: str = Field(default="argocd", min_length=1)
    sync: bool = True
    disable_auto_sync: bool = True
    timeout: Seconds = 300.0  # how long to wait for the sync operation to finish

    @model_validator(mode="after")
    def _something(self) -> ArgoCdConfig:
        if not self.sync and not self.disable_auto_sync:
            raise ValueError("with sync: false and disable_auto_sync: false this step does nothing; drop it or "
                             "set one of them")
        return self


def _automated(app: Obj) -> Obj | None:
    """The automated sync policy when auto-sync is on (3.3+ may keep it with enabled: false), else None."""
    automated = ((app.get("spec") or {}).get("syncPolicy") or {}).get("automated")
    if automated is None or (isinstance(automated, dict) and automated.get("enabled") is False):
        return None
    return automated if isinstance(automated, dict) else {}


REVERT_COMMIT = "<the revert commit>"


def _earlier_revision(context: StepContext) -> tuple[str, str] | None:
    for outcome in reversed(context.earlier):
        revision = (outcome.data or {}).get("revision")
        if outcome.ok and revision:
            return str(revision), f"the revision {outcome.executor} produced"
    return None


class ArgoCd:
    """Disable an Application's auto-sync and sync it to a given revision."""

    name: ClassVar[str] = "argocd"

    def __init__(self, config: ArgoCdConfig, kube: Kube) -> None:
        self.config = config
        self.kube = kube
        self.ref = Ref("applications", config.namespace, config.app)

    def _source(self, app: Obj) -> Obj:
        spec = app.get("spec") or {}
        if "source" not in spec:
            raise ExecutorError(f"{self.ref} has no spec.source (multi-source applications are not supported)")
        return dict(spec["source"])

    def plan(self, *, context: StepContext) -> StepPlan:
        cfg = self.config
        app = self.kube.get(self.ref)
        source = self._source(app)
        earlier = _earlier_revision(context)
        ahead = earlier is None and "git_revert" in context.before
        if earlier is not None:
            revision, origin = earlier
        elif ahead:
            # Planned ahead (warning, dry run): the revert commit does not exist yet; the run syncs exactly it.
            revision, origin = REVERT_COMMIT, "pushed by the git_revert step before this one"
        elif context.pin is not None:
            revision, origin = context.pin, "the revision pinned when the incident opened"
        else:
            revision, origin = str(source.get("targetRevision") or "HEAD"), "spec.source.targetRevision"
        automated = _automated(app)
        synced = ((app.get("status") or {}).get("sync") or {}).get("revision") or "unknown"
        changes, commands = [], []
        kubectl = f"kubectl patch application {cfg.app} -n {cfg.namespace} --type merge -p"
        if cfg.disable_auto_sync and automated is not None:
            changes.append(Change(str(self.ref), "spec.syncPolicy.automated", json.dumps(automated, sort_keys=True),
                                  "removed"))
            commands.append(f"{kubectl} '{json.dumps(DISABLE_AUTO_SYNC, separators=(',', ':'))}'")
        if cfg.sync:
            changes.append(Change(str(self.ref), "status.sync.revision", synced, revision))
            commands.append(f"{kubectl} '{json.dumps(_operation(revision), separators=(',', ':'))}'")
        parts = []
        if cfg.disable_auto_sync:
            parts.append("turn auto-sync off" if automated is not None else "auto-sync is already off")
        if cfg.sync:
            parts.append(f"sync to {revision} ({origin}; synced now: {synced})")
        return StepPlan(
            executor=self.name, summary=f"{self.ref}: " + ", then ".join(parts), changes=tuple(changes),
            command=" && ".join(commands) or f"kubectl get application {cfg.app} -n {cfg.namespace}",
            pin=revision if earlier is None and not ahead else context.pin, noop=not changes,
            data={"app": cfg.app, "namespace": cfg.namespace, "sync_revision": revision,
                  "revision_from": origin, "synced_before": synced, "auto_sync_before": automated is not None},
        )

    def execute(self, *, plan: StepPlan, context: StepContext) -> StepOutcome:
        cfg, data = self.config, plan.data
        if cfg.sync and data["sync_revision"] == REVERT_COMMIT:
            raise ExecutorError(f"{self.ref}: the git_revert step before this one reported no revert commit, so "
                                "there is no revision to sync; nothing was changed")
        app = self.kube.get(self.ref)
        sent = []
        if cfg.disable_auto_sync and _automated(app) is not None:
            answer = self.kube.patch(self.ref, DISABLE_AUTO_SYNC, MERGE_PATCH)
            if _automated(answer) is not None:
                raise TemporaryExecutorError(f"{self.ref} still has spec.syncPolicy.automated after removing it")
            sent.append("auto-sync off")
        out: dict[str, Any] = {"app": cfg.app, "namespace": cfg.namespace, "sync_revision": data["sync_revision"],
                               "revision_from": data["revision_from"], "synced_before": data["synced_before"]}
        if cfg.sync:
            out.update(self._sync(app, data["sync_revision"]))
            sent.append(f"synced to {data['sync_revision']}")
        out["sent"] = sent
        freeze_note = (
            f"Auto-sync of {self.ref} stays off, so Argo CD will not re-apply the bad commit; turn it back on once "
            "the fix is merged." if cfg.disable_auto_sync else f"Auto-sync of {self.ref} was left as it was.")
        summary = f"{self.ref}: {', '.join(sent) or 'nothing to change'}"
        if cfg.sync:
            summary += f" (operation {out['phase']}, revision {out['synced_revision']})"
        return StepOutcome(self.name, True, summary, plan.changes, data=out, freeze_note=freeze_note)

    def _sync(self, app: Obj, revision: str) -> dict[str, Any]:
        before = (app.get("status") or {}).get("operationState")
        if app.get("operation") or (before or {}).get("phase") in ("Running", "Terminating"):
            raise TemporaryExecutorError(f"{self.ref}: another sync operation is in progress; try again when it ends")
        self.kube.patch(self.ref, _operation(revision), MERGE_PATCH)

        def finished(now: Obj) -> str | None:
            state = (now.get("status") or {}).get("operationState") or {}
            if now.get("operation") is not None or state == before:
                return "the sync operation has not started yet"
            if ((state.get("operation") or {}).get("sync") or {}).get("revision") != revision:
                return f"operationState is about another operation ({state.get('operation')})"
            phase = state.get("phase")
            if phase in ("Failed", "Error"):
                raise ExecutorError(f"{self.ref}: sync to {revision} ended {phase}: {state.get('message', '')}")
            if phase != "Succeeded":
                return f"sync phase {phase}: {state.get('message', '')}"
            return None

        done = self.kube.wait_until(f"sync of {self.ref}", self.ref, finished, timeout=self.config.timeout)
        state = (done.get("status") or {}).get("operationState") or {}
        return {"phase": state.get("phase"), "synced_revision": (state.get("syncResult") or {}).get("revision"),
                "sync_status": ((done.get("status") or {}).get("sync") or {}).get("status"),
                "finished_at": state.get("finishedAt")}


def _operation(revision: str) -> Obj:
    return {"operation": {"initiatedBy": {"username": "rollback-bot"}, "sync": {"revision": revision}}}


def _build(config: ArgoCdConfig, clients: Clients) -> ArgoCd:
    return ArgoCd(config, Kube(clients.kube))


def access(config: ArgoCdConfig) -> tuple[Access, ...]:
    """What the requests above need: GET and merge-patch the one Application (auto-sync off, the sync
    operation, and the read-back until operationState finishes), in the Application's namespace."""
    return (Access("argoproj.io", "applications", config.namespace, ("get", "patch"), config.app),)


SPEC = ExecutorSpec(name=ArgoCd.name, config=ArgoCdConfig, build=_build, access=access)
