"""What `/rollback report` answers, in Slack mrkdwn: one line per service with its incidents, median and worst
time to recover (alert to stable), the share within its recover target and its last drill.

Called by bot.incidents.report, which reads the store and counts; this says it. A drill's problems come from
executors reading git, helm, Kubernetes and MLflow: shown inert.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.infra.results import ServiceReport
from bot.infra.store import Drill
from bot.slack.blocks import inert
from bot.slack.drill_wording import took
from bot.slo.durations import format_duration

PROBLEMS_SHOWN = 300  # characters of a failed drill's problems in one line
_STATES = (("recovered", "recovered"), ("verify_failed", "not recovered"), ("failed", "rollback failed"),
           ("dismissed", "dismissed"))


def report(services: Sequence[ServiceReport], *, days: int, now: float, more: int) -> str:
    window = "last day" if days == 1 else f"last {days} days"
    if not services:
        return f"*Rollback report — {window}*\nNo incidents and no drills in the {window}."
    lines = [f"*Rollback report — {window}*"] + [service_line(s, now, window) for s in services]
    if more:
        lines.append(f"…and {more:,} more {'service' if more == 1 else 'services'} with incidents or drills; "
                     "`/rollback report <service>` shows one.")
    return "\n".join(lines)


def service_line(r: ServiceReport, now: float, window: str) -> str:
    parts = [f"*{r.service}* — {_incidents(r, window)}"]
    if r.median is not None and r.worst is not None:
        parts.append(f"time to recover median {format_duration(r.median)}, worst {format_duration(r.worst)}")
    if r.target is None:
        parts.append("no recover target")
    elif r.judged:
        parts.append(f"{r.within} of {r.judged} within the {format_duration(r.target)} target")
    parts.append(last_drill(r.last_drill, now))
    return " · ".join(parts)


def _incidents(r: ServiceReport, window: str) -> str:
    if not r.incidents:
        return f"no incidents in the {window}"
    counts = [f"{r.by_state[state]} {label}" for state, label in _STATES if r.by_state.get(state)]
    active = r.incidents - sum(r.by_state.get(state, 0) for state, _ in _STATES)
    if active:
        counts.append(f"{active} open")
    return f"{r.incidents} {'incident' if r.incidents == 1 else 'incidents'} ({', '.join(counts)})"


def last_drill(drill: Drill | None, now: float) -> str:
    """e.g. "last drill 2h ago: ok, dry run, 1 step planned in 0.4 s"; "no drill yet"."""
    if drill is None:
        return "no drill yet"
    return f"last drill {format_duration(round(max(0.0, now - drill.finished_at)))} ago: {drill_result(drill)}"


def drill_result(drill: Drill) -> str:
    mode = "staging" if drill.mode == "staging" else "dry run"
    steps = f"{drill.steps_planned} step" if drill.steps_planned == 1 else f"{drill.steps_planned} steps"
    if drill.ok:
        text = f"ok, {mode}, {steps} planned in {took(drill.planning_seconds)}"
        if drill.recover_seconds is not None:
            text += f", stable {format_duration(drill.recover_seconds)} after the first step"
        if drill.restored:
            text += ", staging restored"
        return text
    problems = [str(p) for p in drill.detail.get("problems") or []]
    staging = drill.detail.get("staging") or {}
    if isinstance(staging, dict) and staging.get("failed"):
        problems.append(f"staging: {staging['failed']}")
    why = "; ".join(problems) or f"{drill.steps_planned} of {drill.steps_total} steps planned"
    if len(why) > PROBLEMS_SHOWN:
        why = why[:PROBLEMS_SHOWN - 1] + "…"
    return f"failed ({mode}): {inert(why)}"


def bad_days(days: int) -> str:
    return f"`--days` must be at least 1; got {days}."


def unknown_service(service: str) -> str:
    return f"No service named `{inert(service)}` in the policy."
