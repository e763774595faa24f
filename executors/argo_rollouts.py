"""Argo Rollouts rollback: abort the canary and (for `undo`, the default) put the known-good pod template back.

Built by bot.incidents.runner from a policy step `argo_rollouts: {rollout, namespace, action: undo|abort, to_revision}`.
It sends exactly what the `kubectl argo rollouts` plugin sends:

- abort: merge patch `{"status":{"abort":true}}` on `rollouts/<name>/status` (the main resource on 404);
- undo: GET the Rollout, list its ReplicaSets by the Rollout's matchLabels, then a JSON Patch
  `[{"op":"replace","path":"/spec/template","value":<template of the target ReplicaSet without its
  rollouts-pod-template-hash label>}]` on the Rollout;
- promote --full: merge patch `{"status":{"promoteFull":true}}` on the status, only when the target is not
  the stable ReplicaSet (then the controller would walk the canary steps again), only once the controller
  has seen the undone template, and never while spec.template still holds the version being rolled back.

Then it reads the Rollout back until the stable ReplicaSet carries all traffic (canary weight 0) and, for
undo, the Rollout is Healthy on the target (phase trusted only when observedGeneration == generation).
The pin is the target's pod-template-hash (the stable one for abort): revision numbers move when a
ReplicaSet is revived, hashes do not. A pin of digits (`/rollback svc --to 3`) names a revision instead.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from executors.base import Change, ExecutorError, StepContext, StepOutcome, StepPlan
from executors.kube import JSON_PATCH, MERGE_PATCH, Kube, NotFoundError, Obj, Ref, Seconds, match_labels_selector
from executors.spec import Access, Clients, ExecutorSpec, Target

HASH_LABEL = "rollouts-pod-template-hash"
REVISION = "rollout.argoproj.io/revision"


class ArgoRolloutsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rollout: str = Field(min_length=1)
    namespace: str = Field(default="default", min_length=1)
    action: Literal["undo", "abort"] = "undo"
    to_revision: int | None = Field(default=None, ge=1)
    timeout: Seconds = 300.0  # how long the read-back waits for the controller

    @model_validator(mode="after")
    def _revision_needs_undo(self) -> ArgoRolloutsConfig:
        if self.action == "abort" and self.to_revision is not None:
            raise ValueError("to_revision only applies to action: undo (abort always goes back to the stable "
                             "ReplicaSet)")
        return self


def _clean(template: Obj | None) -> Obj:
    clean = copy.deepcopy(template or {})
    labels = clean.setdefault("metadata", {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
    return clean


def _same(a: Obj | None, b: Obj | None) -> bool:
    return _clean(a) == _clean(b)


def _revision(rs: Obj) -> int:
    try:
        return int((rs["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:  # a hand-edited annotation: treat like no revision, as the plugin does with errors
        return 0


def _hash(rs: Obj) -> str:
    return str((rs["metadata"].get("labels") or {}).get(HASH_LABEL, ""))


def _images(template: Obj | None) -> str:
    containers = ((template or {}).get("spec") or {}).get("containers") or []
    return ", ".join(str(c.get("image")) for c in containers) or "no containers"


def _weights(status: Obj) -> tuple[int | None, int | None]:
    weights = (status.get("canary") or {}).get("weights") or {}
    return (weights.get("canary") or {}).get("weight"), (weights.get("stable") or {}).get("weight")


def _observed(rollout: Obj) -> bool:
    """Whether the controller has seen the latest spec: only then is status.phase about it."""
    return str((rollout.get("status") or {}).get("observedGeneration")) == str(rollout["metadata"].get("generation"))


def live_text(ref: Ref, rollout: Obj, current: Obj | None, stable: Obj) -> str:
    """What the Rollout runs now: the canary's image(s) (spec.template's containers), its revision, since when and
    its share of traffic, and the stable revision beside it; the warning's "What changed" line, e.g. "`prod/model-svc`
    canary `model-svc:v3` is revision 3 (ReplicaSet created 2026-12-02 12:01 UTC), 20% of traffic; stable is
    revision 2 `model-svc:v2`"."""
    status = rollout.get("status") or {}
    where = f"`{ref.namespace}/{ref.name}`"
    images = f"`{_images(rollout['spec'].get('template'))}`"
    stable_images = f"`{_images(stable['spec'].get('template'))}`"
    if current is None:
        return (f"{where} spec.template holds {images}, no ReplicaSet for it yet; stable is revision "
                f"{_revision(stable)} {stable_images}")
    created = current["metadata"].get("creationTimestamp")
    since = f" (ReplicaSet created {_utc_minute(created)})" if created else ""
    if _hash(current) == _hash(stable):
        return f"{where} runs {images} as stable, revision {_revision(current)}{since}"
    canary, _ = _weights(status)
    share = ", aborted (all traffic on stable)" if status.get("abort") else (
        f", {canary}% of traffic" if canary is not None else "")
    return (f"{where} canary {images} is revision {_revision(current)}{since}{share}; stable is revision "
            f"{_revision(stable)} {stable_images}")


def _utc_minute(stamp: str) -> str:
    """A Kubernetes timestamp (RFC 3339, `Z`) as UTC to the minute; the raw text when it is not one."""
    try:
        return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (ValueError, TypeError):  # not RFC 3339: show what the API said rather than drop it
        return str(stamp)


class ArgoRollouts:
    """Abort a canary Rollout and, for undo, roll its pod template back to a known-good revision."""

    name: ClassVar[str] = "argo_rollouts"

    def __init__(self, config: ArgoRolloutsConfig, kube: Kube) -> None:
        self.config = config
        self.kube = kube
        self.ref = Ref("rollouts", config.namespace, config.rollout)

    # ---- reading ---------------------------------------------------------------------------------------
    def _state(self) -> tuple[Obj, list[Obj]]:
        """The Rollout and the ReplicaSets it controls, newest revision first (as the plugin finds them)."""
        rollout = self.kube.get(self.ref)
        selector = match_labels_selector(rollout["spec"].get("selector"), f"{self.ref} selector")
        uid = rollout["metadata"].get("uid")
        owned = [rs for rs in self.kube.list_replicasets(self.config.namespace, selector)
                 if any(ref.get("controller") and ref.get("uid") == uid
                        for ref in rs["metadata"].get("ownerReferences") or [])]
        return rollout, sorted(owned, key=_revision, reverse=True)

    def _target(self, rollout: Obj, rss: list[Obj], pin: str | None) -> Obj:
        known = ", ".join(f"{_revision(rs)} ({_images(rs['spec'].get('template'))})" for rs in rss) or "none"
        if pin is not None and not pin.isdigit():
            found = next((rs for rs in rss if _hash(rs) == pin), None)
            if found is None:
                raise ExecutorError(f"{self.ref}: the pinned ReplicaSet (pod-template-hash {pin}) no longer exists; "
                                    f"revisions now: {known}")
            return found
        wanted = int(pin) if pin is not None else self.config.to_revision
        if wanted is not None:
            found = next((rs for rs in rss if _revision(rs) == wanted), None)
            if found is None:
                raise ExecutorError(f"{self.ref}: unable to find revision {wanted} in history; revisions: {known}")
            return found
        if len(rss) < 2:
            raise ExecutorError(f"{self.ref}: no previous revision to undo to; revisions: {known}")
        return rss[1]  # the plugin's default: the second-newest revision

    # ---- plan ------------------------------------------------------------------------------------------
    def plan(self, *, context: StepContext) -> StepPlan:
        rollout, rss = self._state()
        status = rollout.get("status") or {}
        live = rollout["spec"].get("template")
        current = next((rs for rs in rss if _same(rs["spec"].get("template"), live)), None)
        stable = next((rs for rs in rss if _hash(rs) == status.get("stableRS")), None)
        if stable is None:
            raise ExecutorError(f"{self.ref}: no ReplicaSet matches status.stableRS {status.get('stableRS')!r}")
        from_revision = _revision(current) if current is not None else None
        data: dict[str, Any] = {
            "rollout": self.config.rollout, "namespace": self.config.namespace, "action": self.config.action,
            "from_revision": from_revision, "from_hash": _hash(current) if current is not None else None,
            "from_images": _images(live), "stable_hash": _hash(stable), "stable_revision": _revision(stable),
        }
        planned = (self._plan_abort(context, rollout, stable, data) if self.config.action == "abort"
                   else self._plan_undo(context, rollout, rss, stable, data))
        return replace(planned, live=live_text(self.ref, rollout, current, stable))

    def _plan_abort(self, context: StepContext, rollout: Obj, stable: Obj, data: dict[str, Any]) -> StepPlan:
        status = rollout.get("status") or {}
        if context.pin is not None and context.pin != _hash(stable):
            raise ExecutorError(f"{self.ref}: the stable ReplicaSet changed since the warning (was {context.pin}, now "
                                f"{_hash(stable)}, revision {_revision(stable)}); the bad version may have been "
                                "promoted, so an abort would not roll it back: use action: undo")
        if data["from_hash"] == _hash(stable):
            raise ExecutorError(f"{self.ref}: nothing to abort: revision {_revision(stable)} ({data['from_images']}) "
                                "is both desired and stable; use action: undo to roll it back")
        cmd = f"kubectl argo rollouts abort {self.config.rollout} -n {self.config.namespace}"
        images = _images(stable["spec"].get("template"))
        already = bool(status.get("abort"))
        return StepPlan(
            executor=self.name,
            summary=(f"abort {self.ref}: all traffic back to the stable revision {_revision(stable)} ({images}); "
                     f"revision {data['from_revision']} ({data['from_images']}) stays in spec.template, aborted"),
            changes=(Change(str(self.ref), "status.abort", str(already).lower(), "true"),),
            command=cmd, pin=_hash(stable), noop=already,
            data=dict(data, steps=[] if already else ["abort"], target_hash=_hash(stable),
                      target_revision=_revision(stable), target_images=images),
        )

    def _plan_undo(self, context: StepContext, rollout: Obj, rss: list[Obj], stable: Obj,
                   data: dict[str, Any]) -> StepPlan:
        status = rollout.get("status") or {}
        live = rollout["spec"].get("template")
        target = self._target(rollout, rss, context.pin)
        target_template = target["spec"].get("template")
        on_target = _same(live, target_template)
        if on_target and context.pin is None and _hash(target) != _hash(stable):
            raise ExecutorError(
                f"{self.ref}: revision {_revision(target)} ({_images(target_template)}) is what spec.template holds "
                "now, the version being rolled back; undo to it plus promote --full would promote it. Pick another "
                "to_revision")
        steps = []
        if not on_target and data["from_hash"] != _hash(stable) and not status.get("abort"):
            steps.append("abort")
        if not on_target:
            steps.append("undo")
        if _hash(target) != _hash(stable):
            steps.append("promote_full")
        _refuse_unsafe_promote(steps, on_target, self.ref)
        ns, name = self.config.namespace, self.config.rollout
        commands = {"abort": f"kubectl argo rollouts abort {name} -n {ns}",
                    "undo": f"kubectl argo rollouts undo {name} -n {ns} --to-revision={_revision(target)}",
                    "promote_full": f"kubectl argo rollouts promote {name} -n {ns} --full"}
        changes = {
            "abort": Change(str(self.ref), "status.abort", "false", "true"),
            "undo": Change(str(self.ref), "spec.template", f"revision {data['from_revision']} ({data['from_images']})",
                           f"revision {_revision(target)} ({_images(target_template)})"),
            "promote_full": Change(str(self.ref), "status.promoteFull", "false", "true"),
        }
        said = {
            "abort": "abort the canary (all traffic to the stable ReplicaSet at once)",
            "undo": (f"undo spec.template from revision {data['from_revision']} ({data['from_images']}) to revision "
                     f"{_revision(target)} ({_images(target_template)})"
                     + (", the stable ReplicaSet" if "promote_full" not in steps else "")),
            "promote_full": f"promote --full, since revision {_revision(target)} is not the stable ReplicaSet",
        }
        summary = f"{self.ref}: " + ", then ".join(said[s] for s in steps)
        if not steps:
            summary = f"{self.ref} already runs revision {_revision(target)} ({_images(target_template)}) as stable"
        return StepPlan(
            executor=self.name, summary=summary, changes=tuple(changes[s] for s in steps),
            command=" && ".join(commands[s] for s in steps) or f"kubectl argo rollouts status {name} -n {ns}",
            pin=_hash(target), noop=not steps,
            data=dict(data, steps=steps, target_hash=_hash(target), target_revision=_revision(target),
                      target_images=_images(target_template)),
        )

    # ---- execute ---------------------------------------------------------------------------------------
    def execute(self, *, plan: StepPlan, context: StepContext) -> StepOutcome:
        data = plan.data
        rollout, rss = self._state()
        target = next((rs for rs in rss if _hash(rs) == data["target_hash"]), None)
        if target is None:
            raise ExecutorError(f"{self.ref}: the target ReplicaSet {data['target_hash']} disappeared since the plan")
        live = rollout["spec"].get("template")
        live_rs = next((rs for rs in rss if _same(rs["spec"].get("template"), live)), None)
        if live_rs is None or _hash(live_rs) not in (data["from_hash"], data["target_hash"]):
            raise ExecutorError(f"{self.ref}: spec.template changed since the plan (now {_images(live)}); refusing to "
                                "overwrite a change made by someone else")
        sent: list[str] = []
        if data["action"] == "abort":
            stable_now = (rollout.get("status") or {}).get("stableRS")
            if stable_now != data["target_hash"]:
                raise ExecutorError(f"{self.ref}: the stable ReplicaSet changed since the plan ({data['target_hash']} -> "
                                    f"{stable_now}); an abort would not roll back, refusing")
            self._abort(rollout, sent)
            done = self._confirm_abort(data)
        else:
            if "abort" in data["steps"] and not (rollout.get("status") or {}).get("abort") \
                    and not _same(live, target["spec"].get("template")):
                self._abort(rollout, sent)
            if not _same(live, target["spec"].get("template")):
                self._undo(target, sent)
            if "promote_full" in data["steps"]:
                self._promote_full(target, sent)
            done = self._confirm_undo(data)
        status = done.get("status") or {}
        canary, stable_weight = _weights(status)
        note = (f"{self.ref} stays aborted (Degraded) with all traffic on revision {data['target_revision']}; "
                f"spec.template still holds {data['from_images']} and only `kubectl argo rollouts retry` would resume "
                "it, which the bot never does." if data["action"] == "abort" else
                f"{self.ref} runs revision {data['target_revision']} ({data['target_images']}) as stable; "
                f"{data['from_images']} is gone from spec.template, so only a new deploy brings it back.")
        what = ", ".join(sent) or "nothing to send (already there)"
        return StepOutcome(
            self.name, True,
            f"{self.ref}: {what}; stable revision {data['target_revision']} ({data['target_images']}) has "
            f"{stable_weight if stable_weight is not None else 100}% of traffic, phase {status.get('phase')}",
            plan.changes,
            data=dict(data, sent=sent, phase=status.get("phase"), canary_weight=canary, stable_weight=stable_weight),
            freeze_note=note, traffic_to_bad=canary,
        )

    def _abort(self, rollout: Obj, sent: list[str]) -> None:
        if (rollout.get("status") or {}).get("abort"):
            return
        body = {"status": {"abort": True}}
        try:
            self.kube.patch(self.ref, body, MERGE_PATCH, status=True)
        except NotFoundError:  # no status subresource (Rollouts < v0.10): the plugin then patches the main resource
            self.kube.patch(self.ref, body, MERGE_PATCH)
        sent.append("abort")

    def _undo(self, target: Obj, sent: list[str]) -> None:
        template = _clean(target["spec"].get("template"))
        self.kube.patch(self.ref, [{"op": "replace", "path": "/spec/template", "value": template}], JSON_PATCH)
        sent.append(f"undo to revision {_revision(target)}")

    def _promote_full(self, target: Obj, sent: list[str]) -> None:
        """promote --full, but only once the controller runs the target template; never on the bad version."""
        want = target["spec"].get("template")

        def seen(rollout: Obj) -> str | None:
            if not _same(rollout["spec"].get("template"), want):
                raise ExecutorError(f"{self.ref}: refusing promote --full: spec.template holds "
                                    f"{_images(rollout['spec'].get('template'))}, not the undo target "
                                    f"{_images(want)}; promoting now would promote the version being rolled back")
            status = rollout.get("status") or {}
            if not _observed(rollout) or status.get("currentPodHash") != _hash(target):
                return "the controller has not picked up the undone template yet"
            return None

        rollout = self.kube.wait_until("undo before promote --full", self.ref, seen, timeout=self.config.timeout)
        status = rollout.get("status") or {}
        if status.get("currentPodHash") == status.get("stableRS"):
            return  # the plugin sends nothing then: the target is stable already
        self.kube.patch(self.ref, {"status": {"promoteFull": True}}, MERGE_PATCH, status=True)
        sent.append("promote --full")

    def _confirm_abort(self, data: dict[str, Any]) -> Obj:
        def aborted(rollout: Obj) -> str | None:
            status = rollout.get("status") or {}
            canary, stable = _weights(status)
            if status.get("stableRS") != data["target_hash"]:
                return f"stableRS is {status.get('stableRS')}, expected {data['target_hash']}"
            if (canary, stable) not in ((0, 100), (None, None)):
                return f"canary weight {canary}, stable weight {stable}"
            if not status.get("abort"):
                return "status.abort is not set"
            if _observed(rollout) and status.get("phase") != "Degraded":
                return f"phase {status.get('phase')}, expected Degraded (aborted)"
            return None

        return self.kube.wait_until("abort", self.ref, aborted, timeout=self.config.timeout)

    def _confirm_undo(self, data: dict[str, Any]) -> Obj:
        def healthy(rollout: Obj) -> str | None:
            status = rollout.get("status") or {}
            canary, stable = _weights(status)
            if (canary, stable) not in ((0, 100), (None, None)):
                return f"canary weight {canary}, stable weight {stable}"
            if not _observed(rollout):
                return (f"observedGeneration {status.get('observedGeneration')} behind generation "
                        f"{rollout['metadata'].get('generation')}")
            if status.get("stableRS") != data["target_hash"] or status.get("currentPodHash") != data["target_hash"]:
                return (f"stableRS {status.get('stableRS')} / currentPodHash {status.get('currentPodHash')}, "
                        f"expected {data['target_hash']} (revision {data['target_revision']})")
            if status.get("phase") != "Healthy":
                return f"phase {status.get('phase')} ({status.get('message') or 'no message'})"
            return None

        return self.kube.wait_until("undo", self.ref, healthy, timeout=self.config.timeout)


def _refuse_unsafe_promote(steps: list[str], on_target: bool, ref: Ref) -> None:
    """promote --full promotes whatever spec.template holds: only with an undo, or once the undo is in."""
    if "promote_full" in steps and "undo" not in steps and not on_target:
        raise ExecutorError(f"{ref}: refusing a plan with promote --full while spec.template still holds the version "
                            "being rolled back")


def _build(config: ArgoRolloutsConfig, clients: Clients) -> ArgoRollouts:
    return ArgoRollouts(config, Kube(clients.kube))


def access(config: ArgoRolloutsConfig) -> tuple[Access, ...]:
    """What the requests above need: GET the Rollout (plan, execute, every read-back), list its ReplicaSets
    by label (not restrictable by name), merge-patch `rollouts/status` (abort, promote --full) and, for undo,
    the JSON Patch of spec.template on the Rollout itself. The abort fallback on the main resource is for
    Rollouts < v0.10 (no status subresource) and is not granted to `action: abort`: it is answered 403 there."""
    ns, name = config.namespace, config.rollout
    rollout = ("get", "patch") if config.action == "undo" else ("get",)
    return (Access("argoproj.io", "rollouts", ns, rollout, name),
            Access("argoproj.io", "rollouts/status", ns, ("patch",), name),
            Access("apps", "replicasets", ns, ("list",)))


SPEC = ExecutorSpec(name=ArgoRollouts.name, config=ArgoRolloutsConfig, build=_build, reports_traffic=True,
                    access=access,
                    target=Target(r"[0-9]{1,9}|[a-z0-9]{5,16}", "a Rollout revision number, e.g. `3`, or a "
                                  "ReplicaSet's pod-template-hash"))
