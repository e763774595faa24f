"""Rollback drills: the way back tried before anyone needs it.

After each promotion the gate made (bot.incidents.detection calls `after_promotion`, which runs on a drill
thread) and on `/rollback drill <service>` (approvers only, through bot.incidents.oncall), the whole rollback plan
is dry-run against the release now served: the baseline is the version just replaced. Planning only reads (git,
helm, Kubernetes, MLflow); nothing changes anywhere. The drill records how long planning took and whether every
step planned, posts one line in the service's channel (a failing drill mentions the approvers) and is stored
(`/rollback history`, `/rollback report`, `rollback_drills_total`).

With `drill.rollback:` (a staging plan) a drill also runs that plan for real, once the one authorization rule
allows it (Authorization.may_drill), verifies `drill.slos` per `drill.verify`, records the time to recover, and
with `restore: true` moves each step back to where it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from bot.incidents.authorization import Authorization
from bot.incidents.readiness import step_problem
from bot.incidents.replies import Reply
from bot.incidents.runner import Runner
from bot.infra import metrics
from bot.infra.actors import AUTO_ACTOR
from bot.infra.prom import Prometheus
from bot.infra.results import Staging
from bot.infra.store import Drill, Store
from bot.slack import drill_wording
from bot.slo import evaluation
from bot.slo.evaluation import CYCLE_JITTER
from bot.slo.policy import Service
from executors.base import ExecutorError, StepContext, StepPlan

log = logging.getLogger(__name__)

DRILL_THREADS = 2


class DrillRunner:
    def __init__(self, *, store: Store, runner: Runner, prom: Prometheus, authz: Authorization,
                 say: Callable[[str, str], None], mention: Callable[[str], str],
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = store
        self.runner = runner
        self.prom = prom
        self.authz = authz
        self.say = say
        self.mention = mention  # the service's approvers as mentions
        self.clock = clock
        self.sleep = sleep
        self._threads = ThreadPoolExecutor(DRILL_THREADS, thread_name_prefix="drill")

    def after_promotion(self, svc: Service, version: str | None, previous: str | None) -> Future[Drill | None] | None:
        """The drill after a promotion the gate made, on a drill thread (the evaluation cycle goes on)."""
        if not svc.drills_on_promotion:
            return None
        return self._threads.submit(self._guarded, svc, "promotion", AUTO_ACTOR, version, previous)

    def on_command(self, svc: Service, user: str) -> Reply:
        """`/rollback drill <service>`, already checked to be by an approver: the drill now, posted in the channel."""
        drill = self.drill(svc, trigger="command", actor=user)
        return Reply(drill.ok, drill_wording.drill_reply(drill, svc.channel))

    def _guarded(self, svc: Service, trigger: str, actor: str, version: str | None,
                 previous: str | None) -> Drill | None:
        try:
            return self.drill(svc, trigger=trigger, actor=actor, version=version, baseline=previous)
        except Exception:  # noqa: BLE001 - a drill must never take a thread down silently
            log.exception("%s: the drill after the promotion of %s failed", svc.name, version)
            return None

    def drill(self, svc: Service, *, trigger: str, actor: str, version: str | None = None,
              baseline: str | None = None) -> Drill:
        """Dry-run the service's whole rollback plan (and run the staging plan, if any); store and post the result."""
        started = self.clock()
        began = time.perf_counter()
        steps = self.runner.plan_all(svc, 0)
        planning = time.perf_counter() - began
        targetable = self.runner.registry.targetable()
        problems = [f"{i + 1}. {step.executor}: {problem}" for i, step in enumerate(steps)
                    if (problem := step_problem(step, targetable)) is not None]
        planned = len(steps) - len(problems)
        pin = next((s.plan.model_pin for s in steps if s.plan and s.plan.model_pin), None)
        version = version or (pin.replaces if pin else None)
        baseline = baseline or (pin.version if pin else None)
        staging = self._staging(svc, actor) if svc.drill.rollback else None
        ok = not problems and (staging is None or staging.ok)
        mode = "staging" if staging is not None else "dry_run"
        summary = drill_wording.drill_line(
            svc, trigger=trigger, version=version, ok=ok, steps=steps, problems=problems, seconds=planning,
            staging=staging, mention=self.mention(svc.name) if not ok else "")
        drill = self.store.record_drill(
            service=svc.name, mode=mode, trigger=trigger, actor=actor, version=version, baseline=baseline, ok=ok,
            steps_planned=planned, steps_total=len(steps), planning_seconds=round(planning, 3), summary=summary,
            started_at=started, recover_seconds=staging.recover_seconds if staging else None,
            restored=staging.restored if staging else None,
            detail={"plan": [s.plan.summary if s.plan else f"error: {s.error}" for s in steps],
                    "problems": problems, **({"staging": staging.detail()} if staging else {})})
        metrics.DRILLS.labels(service=svc.name, mode=mode, result="ok" if ok else "failed").inc()
        self.store.audit(actor=actor, action="drill", result="ok" if ok else "failed",
                         detail={"service": svc.name, "drill": drill.id, "mode": mode, "trigger": trigger})
        self.say(svc.channel, summary)
        return drill

    # -- the staging drill -------------------------------------------------------------------------------
    def _staging(self, svc: Service, actor: str) -> Staging:
        """Run `drill.rollback` for real, verify `drill.slos`, and with `restore` move each step back."""
        result = Staging()
        allowed, why = self.authz.may_drill(svc, actor)
        if not allowed:
            result.failed = f"not run: {why}"
            return result
        staging = svc.model_copy(update={"rollback": svc.drill.rollback, "slos": svc.drill.slos or svc.slos,
                                         "verify": svc.drill.verify})
        began = time.monotonic()
        for i, step in enumerate(staging.rollback):
            try:
                executor = self.runner.executor(step)
                context = StepContext(staging.name, 0, None, before=tuple(s.executor for s in staging.rollback[:i]))
                plan = executor.plan(context=context)
                outcome = executor.execute(plan=plan, context=context)
                error = None if outcome.ok else (outcome.error or "the executor reported failure")
            except ExecutorError as exc:
                error = str(exc)
            except Exception as exc:  # noqa: BLE001 - a bug in an executor is this drill's failure, not a crash
                error = f"unexpected {type(exc).__name__}: {exc}"
            if error is not None:
                result.failed = f"{i + 1}. {step.executor}: {error}"
                break
            result.done.append(plan)
        if result.failed is None:
            result.recover_seconds = self._verify(staging, began)
            if result.recover_seconds is None:
                result.failed = (f"the staging SLOs were not within target for {staging.verify.stable_for:g} s "
                                 f"within {staging.verify.within:g} s")
        if svc.drill.restore and result.done:
            result.restore_failed = self._restore(staging, result.done)
            result.restored = result.restore_failed is None
        result.ok = result.failed is None and result.restore_failed is None
        return result

    def _verify(self, staging: Service, began: float) -> float | None:
        """Seconds from the first step until the SLOs had been within target for stable_for, or None."""
        verify = staging.verify
        stable_since: float | None = None
        while True:
            now = time.monotonic()
            readings = evaluation.read(self.prom, [staging])[staging.name]
            if readings and all(r.within_target for r in readings):
                stable_since = stable_since if stable_since is not None else now
                if now - stable_since >= verify.stable_for - CYCLE_JITTER * verify.every:
                    return now - began
            else:
                stable_since = None
            if now - began >= verify.within:
                return None
            self.sleep(verify.every)

    def _restore(self, staging: Service, done: list[StepPlan]) -> str | None:
        """Move each step that ran back to where it was (newest first); the first failure, or None."""
        registry = self.runner.registry
        for i in reversed(range(len(done))):
            step, plan = staging.rollback[i], done[i]
            target = registry.get(step.executor).target
            was = plan.data.get(target.was) if target and target.was else None
            if was is None:
                return f"{i + 1}. {step.executor}: its plan does not say where it was"
            try:
                executor = self.runner.executor(step)
                context = StepContext(staging.name, 0, str(was))
                back = executor.plan(context=context)
                outcome = executor.execute(plan=back, context=context)
                if not outcome.ok:
                    return f"{i + 1}. {step.executor}: {outcome.error or 'the executor reported failure'}"
            except Exception as exc:  # noqa: BLE001 - a failed restore is reported, and stops the restore
                return f"{i + 1}. {step.executor}: {exc}"
        return None

