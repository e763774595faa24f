"""What on-call asks and does around rollbacks, besides rolling back: status, history, freeze / unfreeze and
a service's policy in three lines.

Called by handlers.commands (`/rollback status|history|freeze|unfreeze|policy`) with plain values; returns
Reply texts in Slack mrkdwn. Freeze and unfreeze are approver-only and audited; unfreeze lifts a version's
`rollback_blocked` tag only when asked to by name (`--unblock <version>`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.incidents.replies import Reply
from bot.infra.model_registry import RegistryError
from bot.infra.store import Incident
from bot.slack import blocks
from bot.slo.durations import format_duration
from bot.slo.policy import Service

if TYPE_CHECKING:
    from bot.incidents.service import IncidentService


def _span(a: float | None, b: float | None) -> str:
    return format_duration(b - a) if a is not None and b is not None else "—"


def _aliases(bot: IncidentService, svc: Service) -> str:
    to, previous = (svc.promote.to, svc.promote.previous) if svc.promote else ("champion", "previous_champion")
    try:
        current = bot.gate.registry.by_alias(svc.model, to)
        before = bot.gate.registry.by_alias(svc.model, previous)
    except RegistryError as exc:
        return f"registry unavailable ({blocks.inert(str(exc))})"
    shown = f"@{to} v{current.version}" if current else f"@{to} not set"
    if current and current.blocked:
        shown += " (rollback_blocked!)"
    return shown + (f", baseline @{previous} v{before.version}" if before else f", no @{previous}")


def status(bot: IncidentService, service: str | None) -> Reply:
    """Open incidents, frozen services (reason, since when), current champion / baseline per service."""
    names = [service] if service else sorted(bot.policy.services)
    lines = []
    for name in names:
        svc = bot.policy.services[name]
        active = bot.store.active_incident(name)
        frozen = bot.store.frozen(name)
        parts = [f"*{name}* — {_aliases(bot, svc)}"]
        parts.append(f"incident #{active.id}: {blocks.status_line(active)}" if active else "no open incident")
        if frozen:
            parts.append(f":ice_cube: frozen since {blocks.clock(frozen.frozen_at)} by {blocks.mention(frozen.actor)}"
                         f" ({blocks.inert(frozen.reason)})" if frozen.actor.startswith(("U", "W"))
                         else f":ice_cube: frozen since {blocks.clock(frozen.frozen_at)} ({blocks.inert(frozen.reason)})")
        lines.append(" · ".join(parts))
    return Reply(True, "*Rollback status*\n" + "\n".join(lines))


def _history_line(incident: Incident) -> str:
    outcome = {"recovered": ":white_check_mark: recovered", "verify_failed": ":x: not recovered",
               "failed": ":x: rollback failed", "dismissed": ":no_entry_sign: dismissed"}.get(incident.state,
                                                                                        incident.state)
    who = blocks.mention(incident.approved_by) if incident.approved_by and incident.approved_by[0] in "UW" \
        else (incident.approved_by or "nobody")
    return (f"#{incident.id} {blocks.clock(incident.opened_at)} {incident.trigger} — {outcome}; approved by {who}; "
            f"time to recover {_span(incident.approved_at, incident.recovered_at)}")


def history(bot: IncidentService, service: str, limit: int = 10) -> Reply:
    incidents = bot.store.recent_incidents(service, limit)
    if not incidents:
        return Reply(True, f"*{service}* has had no incidents.")
    return Reply(True, f"*Last {len(incidents)} incidents of {service}*\n"
                  + "\n".join(_history_line(i) for i in incidents))


def freeze(bot: IncidentService, service: str, user: str, reason: str) -> Reply:
    svc = bot.policy.services[service]
    refusal = bot.check_approver(svc, user, "freeze")
    if refusal:
        return refusal
    why = reason or "frozen by hand"
    bot.store.freeze(service=service, reason=why, actor=user)
    bot.store.audit(actor=user, action="freeze", result="ok", detail={"service": service, "reason": why})
    bot._say(svc.channel, f":ice_cube: {blocks.mention(user)} froze auto-promotion for *{service}*: "
                          f"{blocks.inert(why)}")
    return Reply(True, f"Froze auto-promotion for *{service}*.")


def unfreeze(bot: IncidentService, service: str, user: str, unblock: str | None) -> Reply:
    svc = bot.policy.services[service]
    refusal = bot.check_approver(svc, user, "unfreeze")
    if refusal:
        return refusal
    if bot.store.active_incident(service):
        return Reply(False, f"*{service}* has an open incident; finish it before unfreezing.")
    lifted = bot.store.unfreeze(service)
    note = ""
    if unblock:
        try:
            bot.gate.registry.unblock(svc.model, unblock)
        except RegistryError as exc:
            return Reply(False, f"{'Unfroze' if lifted else 'Was not frozen'}; could not unblock "
                                 f"`{svc.model}` v{unblock}: {blocks.inert(str(exc))}")
        note = f"; `{svc.model}` version {unblock} is no longer rollback_blocked"
    bot.store.audit(actor=user, action="unfreeze", result="ok", detail={"service": service, "unblock": unblock})
    if not lifted and not unblock:
        return Reply(True, f"*{service}* was not frozen.")
    bot._say(svc.channel, f":sunny: {blocks.mention(user)} unfroze auto-promotion for *{service}*{note}")
    return Reply(True, f"Unfroze *{service}*{note}.")


def policy_summary(bot: IncidentService, service: str) -> Reply:
    svc = bot.policy.services[service]
    triggers = "; ".join(f"{slo.name} {slo.target_text()} for {format_duration(slo.for_)}" for slo in svc.slos)
    actions = " → ".join(s.executor for s in svc.rollback)
    who = "two approvers (requester cannot approve)" if svc.two_person else "one approver"
    auto = f", automatic after {format_duration(svc.auto_rollback_grace)} unless stopped" if svc.auto_rollback else ""
    v, every = svc.verify, format_duration(bot.policy.evaluate_every)
    return Reply(True, f"*{service}* policy\n"
                        f"• *Trigger*: any breach of {triggers} (checked every {every})\n"
                        f"• *Action*: {actions} — confirmed by {who} ({svc.confirm}){auto}\n"
                        f"• *Verification*: every SLO within target for {format_duration(v.stable_for)}, checked every "
                        f"{format_duration(v.every)}, within {format_duration(v.within)}; then auto-promotion is frozen")
