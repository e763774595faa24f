"""Readiness: is the way back there before anyone needs it? One check, item by item: every rollback step names
its baseline, the whole plan dry-runs clean, every SLO query returns data now, the SLOs watch quality and latency
or errors, the approvers resolve to a person, a recover target is set, and each relative SLO has the baseline it is
judged against (bot.slo.baselines; none yet is "unknown", which holds nothing back).

Called by bot.cli (`rollback-bot readiness`), bot.incidents.oncall (`/rollback readiness <service>`, worded by
bot.slack.checklist) and, through bot.app, the promotion gate (bot.slo.gate), which asks before each promotion
how the way back will stand after it (`promoting=`). Planning reads git, helm, Kubernetes and MLflow through the
executors (bot.incidents.runner) and changes nothing anywhere. `check` never raises: an item that cannot be
checked is failed with the reason.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bot.incidents.approvers import Approvers
from bot.incidents.runner import Runner
from bot.infra.plans import PlannedStep
from bot.infra.prom import Prometheus, QueryResult
from bot.slack import drill_wording
from bot.slack.drill_wording import step_text
from bot.slo import burn
from bot.slo.baselines import Baselines, per_moment
from bot.slo.durations import format_duration
from bot.slo.policy import Service, Slo

Status = Literal["ok", "failed", "unknown"]

BASELINE, DRY_RUN, SLO_DATA, SLO_KINDS, APPROVERS, RECOVER, SLO_BASELINES = (
    "baseline", "dry run", "slo data", "slo kinds", "approvers", "recover target", "slo baselines")


@dataclass(frozen=True)
class Item:
    """One line of the checklist. `detail` says why (failed) or what was seen (ok), e.g.
    "1. mlflow_alias: champion v5 → v4"; it holds text from outside (executors, Prometheus, Slack)."""

    name: str
    status: Status
    detail: str


@dataclass(frozen=True)
class ReadinessReport:
    service: str
    items: tuple[Item, ...]

    @property
    def ready(self) -> bool:
        """No item failed; an unknown item does not hold."""
        return not self.failed

    @property
    def failed(self) -> tuple[Item, ...]:
        return tuple(item for item in self.items if item.status == "failed")

    def item(self, name: str) -> Item | None:
        return next((item for item in self.items if item.name == name), None)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


class Readiness:
    def __init__(self, *, runner: Runner, prom: Prometheus, approvers: Approvers,
                 baselines: Baselines | None = None) -> None:
        self.runner = runner
        self.prom = prom
        self.approvers = approvers
        self.baselines = baselines

    def check(self, svc: Service, *, promoting: tuple[str, str | None] | None = None) -> ReadinessReport:
        """The way back as it stands now; with promoting=(candidate_version, outgoing_version_or_None), the way back
        as it will be after that promotion: the outgoing champion is the baseline."""
        baseline, dry_run = self._plan(svc, promoting)
        items = [baseline, dry_run]
        for name, judge in ((SLO_DATA, self._slo_data), (SLO_KINDS, _slo_kinds), (APPROVERS, self._approvers),
                            (RECOVER, _recover)):
            items.append(_guarded(name, judge, svc))
        if any(slo.relative for slo in svc.slos):
            items.append(_guarded(SLO_BASELINES, lambda s: self._slo_baselines(s, promoting), svc))
        return ReadinessReport(svc.name, tuple(items))

    # -- relative SLOs' baselines -------------------------------------------------------------------------
    def _slo_baselines(self, svc: Service, promoting: tuple[str, str | None] | None) -> Item:
        """ok when every relative SLO has its baseline (recorded for the champion, or, about to promote, data for
        the outgoing champion to record one from; a live one's previous series); unknown otherwise."""
        if self.baselines is None:
            return Item(SLO_BASELINES, "unknown", "baselines are not read here")
        versions = self.baselines.versions(svc)
        seen, missing = [], []
        for slo in (s for s in svc.slos if s.relative):
            if slo.live_label:
                result = self.prom.query(slo.query or "")
                if versions.previous and result.by_label(slo.live_label).get(versions.previous):
                    seen.append(f"{slo.name}: v{versions.previous}'s series")
                else:
                    missing.append(f"{slo.name}: {self.baselines.missing(svc, slo, versions)}")
            elif promoting is not None:
                window = svc.promote.healthy_for if svc.promote else 0.0
                now = time.time()
                points = per_moment(slo, svc, self.prom.query_range(slo.query or "", now - window, now,
                                                                    max(window / 60, 1.0)).series)
                if points and promoting[1]:
                    seen.append(f"{slo.name}: recorded from v{promoting[1]} at this promotion")
                else:
                    missing.append(f"{slo.name}: no data over the last {format_duration(window)} to record a "
                                   f"baseline from")
            else:
                base = self.baselines.recorded(svc, slo, versions.current)
                if base is not None:
                    seen.append(f"{slo.name}: {base.value:.4g} (v{base.version}, {base.source})")
                else:
                    missing.append(f"{slo.name}: {self.baselines.missing(svc, slo, versions)}")
        if missing:
            return Item(SLO_BASELINES, "unknown", "; ".join(missing + seen))
        return Item(SLO_BASELINES, "ok", "; ".join(seen))

    # -- baseline and dry run -----------------------------------------------------------------------------
    def _model_step(self, svc: Service) -> int | None:
        """The position of the mlflow_alias step that moves svc.model, the one a promotion changes."""
        return next((i for i, step in enumerate(svc.rollback) if step.executor == "mlflow_alias"
                     and getattr(step.config, "model", None) == svc.model), None)

    def _plan(self, svc: Service, promoting: tuple[str, str | None] | None) -> tuple[Item, Item]:
        pins: list[str | None] = [None] * len(svc.rollback)
        model_step = self._model_step(svc) if promoting is not None else None
        if promoting is not None and model_step is not None and promoting[1] is not None:
            pins[model_step] = promoting[1]  # after the promotion, the way back is the outgoing champion
        began = time.perf_counter()
        try:
            steps = self.runner.plan_all(svc, 0, pins)
        except Exception as exc:  # noqa: BLE001 - plan_all catches per step; anything else fails both items
            took = time.perf_counter() - began
            reason = f"planning failed: {type(exc).__name__}: {exc}"
            return Item(BASELINE, "failed", reason), Item(DRY_RUN, "failed", f"{reason} ({took:.1f} s)")
        took = time.perf_counter() - began
        targetable = self.runner.registry.targetable()
        seen, problems = [], []
        for i, step in enumerate(steps):
            label = f"{i + 1}. {step.executor}"
            if i == model_step and promoting is not None:
                problem, text = _after_promotion(step, *promoting)
            else:
                problem = step_problem(step, targetable)
                text = step_text(step.plan) if step.plan and problem is None else None
            if problem is not None:
                problems.append(f"{label}: {problem}")
            elif text is not None:
                seen.append(f"{label}: {text}")
        baseline = (Item(BASELINE, "failed", "; ".join(problems)) if problems
                    else Item(BASELINE, "ok", "; ".join(seen) or "no step has a target"))
        return baseline, _dry_run(steps, took)

    # -- SLO data -----------------------------------------------------------------------------------------
    def _slo_data(self, svc: Service) -> Item:
        queries = {slo.name: _data_query(slo) for slo in svc.slos}
        results = self.prom.query_many(queries.values())
        errors, empty = [], []
        for slo in svc.slos:
            result = results[queries[slo.name]]
            if result.error is not None:
                errors.append(f"{slo.name}: {result.error}")
            elif not _has_data(slo, svc, result):
                empty.append(slo.name)
        if errors or empty:
            parts = ([f"Prometheus: {'; '.join(errors)}"] if errors else []) + (
                [f"no data now: {', '.join(empty)}"] if empty else [])
            return Item(SLO_DATA, "failed", "; ".join(parts))
        names = ", ".join(slo.name for slo in svc.slos)
        return Item(SLO_DATA, "ok", f"{_plural(len(svc.slos), 'SLO')} return data: {names}")

    # -- approvers ----------------------------------------------------------------------------------------
    def _approvers(self, svc: Service) -> Item:
        people = {a for a in svc.approvers if not a.startswith("S")}
        problems, groups = [], []
        for group in (a for a in svc.approvers if a.startswith("S")):
            try:
                members = self.approvers.members(group)
            except Exception as exc:  # noqa: BLE001 - whatever kept the group from being read is the reason
                problems.append(f"could not read user group {group}: {exc}")
                continue
            groups.append(f"{group} ({_plural(len(members), 'member')})")
            people |= members
        if problems:
            return Item(APPROVERS, "failed", "; ".join(problems))
        if not people:
            return Item(APPROVERS, "failed", f"nobody: {', '.join(groups)}; add a user id or a group with members")
        seen = sorted(a for a in svc.approvers if not a.startswith("S")) + groups
        count = f"{len(people)} {'person' if len(people) == 1 else 'people'}"
        return Item(APPROVERS, "ok", f"{count}: {', '.join(seen)}")


def step_problem(step: PlannedStep, targetable: list[str]) -> str | None:
    """Why a planned step is no way back: its error, or nothing to go back to for a step with a target (also the
    judgement of a drill, bot.incidents.drills)."""
    if step.error:
        return step.error
    if step.noop and step.executor in targetable:
        return f"nothing to go back to ({step.plan.summary if step.plan else 'no plan'})"
    return None


def _guarded(name: str, judge: Callable[[Service], Item], svc: Service) -> Item:
    try:
        return judge(svc)
    except Exception as exc:  # noqa: BLE001 - check() never raises: an item that cannot be checked is failed
        return Item(name, "failed", f"could not check: {type(exc).__name__}: {exc}")


def _after_promotion(step: PlannedStep, candidate: str, outgoing: str | None) -> tuple[str | None, str | None]:
    """(problem, what is seen) for the model's alias step before a promotion: it was planned pinned to the outgoing
    champion, the alias has not moved yet (so the plan reads as a noop), and after the promotion it goes from the
    candidate back to the outgoing champion."""
    if outgoing is None:
        return "no outgoing champion to go back to after the promotion", None
    if step.error:
        return step.error, None
    if str(outgoing) == str(candidate):
        return f"the outgoing champion v{outgoing} is the candidate itself", None
    alias = step.plan.changes[0].resource.rsplit("@", 1)[-1] if step.plan and step.plan.changes else "champion"
    return None, f"{alias} v{candidate} → v{outgoing}"


def _dry_run(steps: list[PlannedStep], took: float) -> Item:
    errors = [f"{i + 1}. {s.executor}: {s.error}" for i, s in enumerate(steps) if s.error]
    planned = len(steps) - len(errors)
    if errors:
        return Item(DRY_RUN, "failed", f"{planned} of {_plural(len(steps), 'step')} planned in "
                                       f"{drill_wording.took(took)}: " + "; ".join(errors))
    return Item(DRY_RUN, "ok", f"{_plural(len(steps), 'step')} planned in {drill_wording.took(took)}")


def _data_query(slo: Slo) -> str:
    """What is sent to see whether the SLO has data: its query, or a burn rate's shortest-window ratio (no
    traffic is no data there, as in the evaluation)."""
    if slo.burn_rate is not None:
        shortest = min(seconds for pair in slo.burn_rate.windows for seconds in (pair.long, pair.short))
        return burn.ratio_query(slo.burn_rate, shortest)
    return slo.query or ""


def _has_data(slo: Slo, svc: Service, result: QueryResult) -> bool:
    """The service's series is there (for `by:` SLOs, the series whose label matches, as bot.slo.evaluation
    picks it) with a value that is a number."""
    if slo.by is not None:
        values = result.by_label(slo.by).get(slo.match or svc.name, ())
    else:
        values = result.values
    return any(not math.isnan(v) for v in values)


def _slo_kinds(svc: Service) -> Item:
    kinds = {slo.kind for slo in svc.slos}
    missing = []
    if "quality" not in kinds:
        missing.append("a model-quality SLO (declare it with `kind: quality`)")
    if not kinds & {"latency", "errors"}:
        missing.append("a latency or errors SLO (declare it with `kind: latency` or `kind: errors`)")
    if missing:
        return Item(SLO_KINDS, "failed", "missing " + " and ".join(missing))
    seen = ", ".join(f"{slo.name} ({slo.kind})" for slo in svc.slos if slo.kind != "other")
    return Item(SLO_KINDS, "ok", seen)


def _recover(svc: Service) -> Item:
    if svc.targets.recover is None:
        return Item(RECOVER, "failed", "no recover target: set `targets: {recover: 5m}`")
    return Item(RECOVER, "ok", format_duration(svc.targets.recover))
