"""Feature-flag rollback: set one ConfigMap key (e.g. FEATURE_ENABLE_NEW=false) and restart the workload.

Built by bot.incidents.runner from a policy step
`feature_flag: {configmap, namespace, key, value, restart: deployment/<name>}`. It sends what a human would
with kubectl: a merge patch `{"data":{KEY:VALUE}}` on the ConfigMap, then, like `kubectl rollout restart`,
a strategic merge patch setting the pod-template annotation `kubectl.kubernetes.io/restartedAt` on the
Deployment, and waits like `kubectl rollout status` until the new generation is rolled out. The value is
fixed by the policy, so there is nothing to pin.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from executors.base import Change, ExecutorError, StepContext, StepOutcome, StepPlan, TemporaryExecutorError
from executors.kube import MERGE_PATCH, STRATEGIC_MERGE_PATCH, Kube, Obj, Ref, Seconds
from executors.spec import Access, Clients, ExecutorSpec

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


class FeatureFlagConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    configmap: str = Field(min_length=1)
    namespace: str = Field(default="default", min_length=1)
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)
    value: str
    restart: str | None = None  # deployment/<name>
    timeout: Seconds = 300.0  # how long to wait for the restarted Deployment to roll out

    @field_validator("value", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if not isinstance(value, str):
            shown = str(value).lower() if isinstance(value, bool) else value
            raise ValueError(f"ConfigMap values are strings: quote it, value: \"{shown}\"")
        return value

    @field_validator("restart")
    @classmethod
    def _workload(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(deployment|deployments|deploy)/[a-z0-9]([-.a-z0-9]*[a-z0-9])?",
                                                  value):
            raise ValueError(f"expected deployment/<name> (the workload to restart), got {value!r}")
        return value

    @property
    def deployment(self) -> str | None:
        return self.restart.split("/", 1)[1] if self.restart else None


def _rollout_done(deployment: Obj, generation: int) -> str | None:
    """None when `kubectl rollout status` would say done for `generation`; otherwise why not yet."""
    status = deployment.get("status") or {}
    if int(status.get("observedGeneration") or 0) < generation:
        return f"observedGeneration {status.get('observedGeneration')} behind generation {generation}"
    for cond in status.get("conditions") or []:  # only about this generation once it is observed, as kubectl reads it
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            raise ExecutorError(f"Deployment {deployment['metadata']['namespace']}/{deployment['metadata']['name']} "
                                f"exceeded its progress deadline: {cond.get('message', '')}")
    want = int(deployment["spec"].get("replicas", 1))
    updated = int(status.get("updatedReplicas") or 0)
    if updated < want:
        return f"{updated} of {want} replicas updated"
    if int(status.get("replicas") or 0) > updated:
        return f"{int(status.get('replicas') or 0) - updated} old replicas pending termination"
    if int(status.get("availableReplicas") or 0) < updated:
        return f"{status.get('availableReplicas') or 0} of {updated} updated replicas available"
    return None


class FeatureFlag:
    """Flip a feature flag kept in a ConfigMap and restart the Deployment that reads it."""

    name: ClassVar[str] = "feature_flag"

    def __init__(self, config: FeatureFlagConfig, kube: Kube) -> None:
        self.config = config
        self.kube = kube
        self.configmap = Ref("configmaps", config.namespace, config.configmap)
        self.deployment = Ref("deployments", config.namespace, config.deployment) if config.deployment else None

    def plan(self, *, context: StepContext) -> StepPlan:
        cfg = self.config
        old = (self.kube.get(self.configmap).get("data") or {}).get(cfg.key)
        changes = [] if old == cfg.value else [
            Change(str(self.configmap), f"data.{cfg.key}", "unset" if old is None else old, cfg.value)]
        patch = json.dumps({"data": {cfg.key: cfg.value}}, separators=(",", ":"))
        commands = [f"kubectl patch configmap {cfg.configmap} -n {cfg.namespace} --type merge -p '{patch}'"]
        if self.deployment is not None:
            deployment = self.kube.get(self.deployment)
            annotations = ((deployment["spec"].get("template") or {}).get("metadata") or {}).get("annotations") or {}
            changes.append(Change(str(self.deployment), f"spec.template.metadata.annotations[{RESTARTED_AT}]",
                                  annotations.get(RESTARTED_AT, "unset"), "the time of the restart"))
            commands += [f"kubectl rollout restart deployment/{self.deployment.name} -n {cfg.namespace}",
                         f"kubectl rollout status deployment/{self.deployment.name} -n {cfg.namespace}"]
        restart = f", then restart {self.deployment} and wait for it" if self.deployment else ""
        return StepPlan(
            executor=self.name,
            summary=f"set {cfg.key}={cfg.value} in {self.configmap} (was {old if old is not None else 'unset'}){restart}",
            changes=tuple(changes), command=" && ".join(commands), noop=not changes,
            data={"configmap": cfg.configmap, "namespace": cfg.namespace, "key": cfg.key, "old": old,
                  "new": cfg.value, "restart": self.deployment.name if self.deployment else None},
        )

    def execute(self, *, plan: StepPlan, context: StepContext) -> StepOutcome:
        cfg, data = self.config, plan.data
        current = (self.kube.get(self.configmap).get("data") or {}).get(cfg.key)
        if current not in (data["old"], cfg.value):
            raise ExecutorError(f"{self.configmap} {cfg.key} changed to {current!r} since the plan (expected "
                                f"{data['old']!r}); refusing to overwrite a change made by someone else")
        sent = []
        if current != cfg.value:
            answer = self.kube.patch(self.configmap, {"data": {cfg.key: cfg.value}}, MERGE_PATCH)
            if (answer.get("data") or {}).get(cfg.key) != cfg.value:
                raise TemporaryExecutorError(f"{self.configmap} reads back {cfg.key}="
                                             f"{(answer.get('data') or {}).get(cfg.key)!r}, expected {cfg.value!r}")
            sent.append(f"{cfg.key}={cfg.value}")
        out: dict[str, Any] = dict(data, sent=sent)
        if self.deployment is not None:
            at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}}
            answer = self.kube.patch(self.deployment, body, STRATEGIC_MERGE_PATCH)
            generation = int(answer["metadata"].get("generation") or 0)
            sent.append(f"restart {self.deployment}")
            done = self.kube.wait_until(f"restart of {self.deployment}", self.deployment,
                                        lambda d: _rollout_done(d, generation), timeout=cfg.timeout)
            out.update(restarted_at=at, generation=generation,
                       available=(done.get("status") or {}).get("availableReplicas"))
        freeze_note = (f"{cfg.key} stays {cfg.value!r} in {self.configmap}; the bot never flips it back, a "
                              "person does once the new code path is fixed.")
        what = " and ".join(sent) or f"{cfg.key} was already {cfg.value!r}"
        rolled = f"; {self.deployment} rolled out generation {out['generation']}" if self.deployment else ""
        return StepOutcome(self.name, True, f"{self.configmap}: {what}{rolled}", plan.changes, data=out,
                           freeze_note=freeze_note)


def _build(config: FeatureFlagConfig, clients: Clients) -> FeatureFlag:
    return FeatureFlag(config, Kube(clients.kube))


def access(config: FeatureFlagConfig) -> tuple[Access, ...]:
    """What the requests above need: GET and merge-patch the one ConfigMap; with `restart:`, GET and
    strategic-merge-patch the one Deployment, whose read-back is GETs of it too (no ReplicaSet or Pod reads)."""
    grants = [Access("", "configmaps", config.namespace, ("get", "patch"), config.configmap)]
    if config.deployment is not None:
        grants.append(Access("apps", "deployments", config.namespace, ("get", "patch"), config.deployment))
    return tuple(grants)


SPEC = ExecutorSpec(name=FeatureFlag.name, config=FeatureFlagConfig, build=_build, access=access)
