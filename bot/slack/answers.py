"""What `/rollback status | history | freeze | unfreeze (one service or --all) | policy | postmortem` answer, in
Slack mrkdwn.

Called by bot.incidents.oncall (and bot.incidents.postmortem), which read the store and the registry and decide;
this says it. Text from outside (reasons, registry errors) goes through blocks.inert.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from bot.infra.model_registry import Version
from bot.infra.store import Drill, Freeze, Incident
from bot.slack.blocks import clock, inert, mention, status_line
from bot.slack.reports import drill_result
from bot.slo.durations import format_duration, format_span
from bot.slo.policy import Policy, Service
from bot.slo.windows import OpenWindow


def aliases(to: str, previous: str, current: Version | None, before: Version | None) -> str:
    shown = f"@{to} v{current.version}" if current else f"@{to} not set"
    if current and current.blocked:
        shown += " (rollback_blocked!)"
    return shown + (f", baseline @{previous} v{before.version}" if before else f", no @{previous}")


def registry_unavailable(error: str) -> str:
    return f"registry unavailable ({inert(error)})"


def status_entry(name: str, aliases_text: str, active: Incident | None, frozen: Freeze | None,
                 window: OpenWindow | None = None) -> str:
    parts = [f"*{name}* — {aliases_text}",
             f"incident #{active.id}: {status_line(active)}" if active else "no open incident"]
    if frozen:
        parts.append(f":ice_cube: frozen since {clock(frozen.frozen_at)}{_by(frozen)} ({inert(frozen.reason)})")
    if window:
        parts.append(f":snowflake: {window_text(window)}")
    return " · ".join(parts)


def _by(frozen: Freeze) -> str:
    return f" by {mention(frozen.actor)}" if frozen.actor.startswith(("U", "W")) else ""


def window_text(window: OpenWindow) -> str:
    """e.g. "freeze window: weekend, until Mon 2026-12-07 09:00 UTC (cron 0 17 * * FRI, every service)"."""
    until = time.strftime("%a %Y-%m-%d %H:%M", time.gmtime(window.end))
    scope = "every service" if window.scope == "all" else "this service"
    return f"freeze window: {inert(window.reason)}, until {until} UTC (cron `{window.cron}`, {scope})"


def org_stop(frozen: Freeze | None) -> str:
    """The first line of /rollback status while every service is frozen at once."""
    if frozen is None:
        return ""
    return (f":octagonal_sign: *Every service frozen* since {clock(frozen.frozen_at)}{_by(frozen)} "
            f"({inert(frozen.reason)}): no promotion anywhere until `/rollback unfreeze --all`")


def org_window(window: OpenWindow | None) -> str:
    """The line of a large /rollback status (which lists only busy services) while a top-level window is open."""
    return f":snowflake: {window_text(window)}" if window else ""


def status(entries: Sequence[str], head: str = "") -> str:
    return "*Rollback status*\n" + (head + "\n" if head else "") + "\n".join(entries)


def status_of_many(entries: Sequence[str], *, watched: int, busy: int, open_incidents: int) -> str:
    """Status of a large policy: the services with an open incident or a freeze, and how many are quiet."""
    head = (f"*Rollback status* — {watched:,} services watched: {open_incidents:,} with an open incident, "
            f"{busy - open_incidents:,} more frozen, {watched - busy:,} quiet")
    more = f"\n…and {busy - len(entries):,} more with an incident or a freeze" if busy > len(entries) else ""
    return head + ("\n" + "\n".join(entries) if entries else "") + more + \
        "\n`/rollback status <service>` shows one service with its champion and baseline."


def _history_line(incident: Incident) -> str:
    outcome = {"recovered": ":white_check_mark: recovered", "verify_failed": ":x: not recovered",
               "failed": ":x: rollback failed", "dismissed": ":no_entry_sign: dismissed"}.get(incident.state,
                                                                                        incident.state)
    who = mention(incident.approved_by) if incident.approved_by and incident.approved_by[0] in "UW" \
        else (incident.approved_by or "nobody")
    return (f"#{incident.id} {clock(incident.opened_at)} {incident.trigger} — {outcome}; approved by {who}; "
            f"time to recover {format_span(incident.approved_at, incident.recovered_at)}")


def history(service: str, incidents: Sequence[Incident], drills: Sequence[Drill] = ()) -> str:
    """The service's last incidents, then its last drills (newest first)."""
    text = (f"*Last {len(incidents)} incidents of {service}*\n" + "\n".join(_history_line(i) for i in incidents)
            if incidents else f"*{service}* has had no incidents.")
    if drills:
        text += (f"\n*Last {len(drills)} {'drill' if len(drills) == 1 else 'drills'}*\n"
                 + "\n".join(_drill_line(d) for d in drills))
    else:
        text += "\nNo drill yet."
    return text


def _drill_line(drill: Drill) -> str:
    if drill.trigger == "promotion":
        why = f"after v{inert(drill.version or '?')}'s promotion"
    else:
        why = f"asked by {mention(drill.actor) if drill.actor[:1] in ('U', 'W') else inert(drill.actor)}"
    return f"drill {clock(drill.started_at)} {why} — {drill_result(drill)}"


def froze(user: str, service: str, why: str) -> str:
    return f":ice_cube: {mention(user)} froze auto-promotion for *{service}*: {inert(why)}"


def froze_reply(service: str) -> str:
    return f"Froze auto-promotion for *{service}*."


def froze_all(user: str, why: str) -> str:
    return (f":octagonal_sign: {mention(user)} froze auto-promotion of *every service*: {inert(why)}. Rollbacks "
            "stay allowed.")


def froze_all_reply(channels: int) -> str:
    return f"Froze auto-promotion of every service; said in {channels} channel(s). `/rollback unfreeze --all` lifts it."


def unfroze_all(user: str) -> str:
    return (f":sunny: {mention(user)} lifted the freeze of every service; services frozen on their own (after a "
            "rollback, or by hand) stay frozen.")


def unfroze_all_reply(lifted: bool) -> str:
    if not lifted:
        return "Not every service was frozen at once; nothing to lift (`/rollback status` shows each service's freeze)."
    return "Lifted the freeze of every service; services frozen on their own stay frozen."


def open_incident_first(service: str) -> str:
    return f"*{service}* has an open incident; finish it before unfreezing."


def could_not_unblock(lifted: bool, model: str, version: str, error: str) -> str:
    return f"{'Unfroze' if lifted else 'Was not frozen'}; could not unblock `{model}` v{version}: {inert(error)}"


def unblocked(model: str, version: str) -> str:
    return f"; `{model}` version {version} is no longer rollback_blocked"


def was_not_frozen(service: str) -> str:
    return f"*{service}* was not frozen."


def unfroze(user: str, service: str, note: str) -> str:
    return f":sunny: {mention(user)} unfroze auto-promotion for *{service}*{note}"


def unfroze_reply(service: str, note: str) -> str:
    return f"Unfroze *{service}*{note}."


def policy_summary(svc: Service, policy: Policy) -> str:
    triggers = "; ".join(f"{slo.name} {slo.target_text()} for {format_duration(slo.for_)}" for slo in svc.slos)
    actions = " → ".join(s.executor for s in svc.rollback)
    who = "two approvers (requester cannot approve)" if svc.two_person else "one approver"
    auto = f", automatic after {format_duration(svc.auto_rollback_grace)} unless stopped" if svc.auto_rollback else ""
    v, every = svc.verify, format_duration(policy.evaluate_every)
    text = (f"*{svc.name}* policy\n"
            f"• *Trigger*: any breach of {triggers} (checked every {every})\n"
            f"• *Action*: {actions} — confirmed by {who} ({svc.confirm}){auto}\n"
            f"• *Verification*: every SLO within target for {format_duration(v.stable_for)}, checked every "
            f"{format_duration(v.every)}, within {format_duration(v.within)}; then auto-promotion is frozen")
    if svc.promote:
        p = svc.promote
        compared = f", {p.compare.text(p.to)}" if p.compare else ""
        text += (f"\n• *Promotion*: @{p.from_} → @{p.to} once healthy for {format_duration(p.healthy_for)}{compared}"
                 + ("; baselines of relative SLOs recorded at each promotion"
                    if any(slo.relative and not slo.live_label for slo in svc.slos) else ""))
    return text


# -- /rollback postmortem <incident-id> and the close's draft (bot.incidents.postmortem) ------------------------


def postmortem_unknown(incident_id: int) -> str:
    return (f"There is no incident #{incident_id}. `/rollback history <service>` lists a service's incidents "
            "with their numbers.")


def postmortem_no_thread(incident_id: int) -> str:
    return (f"No postmortem draft: incident #{incident_id}'s warning was never posted, so there is no thread to "
            "put it in")


def postmortem_not_posted(error: str) -> str:
    return f"Postmortem draft not posted: {inert(error)}"


def postmortem_posted(incident: Incident, filename: str) -> str:
    where = f"incident #{incident.id}'s thread in <#{incident.channel}>"
    text = f"Postmortem draft `{filename}` uploaded into {where}."
    if incident.active:
        text += (f" Incident #{incident.id} is still open ({incident.state}): this is a draft of an open incident; "
                 f"`/rollback postmortem {incident.id}` again after the close tells the whole story.")
    return text
