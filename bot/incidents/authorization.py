"""The one authorization rule: who may move production, written once.

An executor runs only when one of these holds for the incident, as stored:

(a) a confirmed approval by an approver (`approved_by`), and with `two_person: true` a first approval
    (`first_approver`) by a *different* approver. The first approval is an approver's own `/rollback` request
    or the first confirmed Roll back click; a requester who is not an approver counts for nothing.
(b) the automatic mode, armed when the incident was opened by the bot's own detection or by an authenticated
    Alertmanager alert (`armed_by`), never by a person's request, and run by the bot when its grace period
    ran out with nobody pressing Stop.
(c) a staging drill (bot.incidents.drills, `may_drill`): only the policy's staging plan (`drill.rollback`), for an
    approver's /rollback drill or after a promotion the gate made.

Called by bot.incidents.service and bot.incidents.runs on every path that can reach an executor: `approval()`
decides what a click does, `may_run()` is checked again right before a plan (first run, Retry step or Resume)
reaches bot.incidents.runner, and `is_approver()` guards every other approver-only action (Dismiss, Stop, Retry,
and through IncidentService.check_approver, freeze, unfreeze and /rollback drill); `is_admin()` guards the
org-wide freeze (`/rollback freeze --all`, `unfreeze --all`), which never reaches an executor. Each refusal is
audited by the caller with the reason given here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.incidents.approvers import Approvers
from bot.infra.actors import AUTO_ACTOR
from bot.infra.store import Incident
from bot.slo.policy import Service

# Who may arm the automatic mode: the bot's own detection and an authenticated Alertmanager alert.
AUTO_SOURCES = ("detection", "alertmanager")


@dataclass(frozen=True)
class Decision:
    """What an approver's confirmed Roll back does: `run` the plan, record the `first` of two approvals, or
    `refuse` (with the reason, for the person and the audit log)."""

    outcome: str  # run | first | refuse
    reason: str = ""


class Authorization:
    def __init__(self, approvers: Approvers) -> None:
        self.approvers = approvers

    def is_approver(self, svc: Service, user: str) -> tuple[bool, str]:
        """(allowed, reason) for `user` on `svc`'s approvers (users and user groups, fail closed)."""
        return self.approvers.check(user, svc.approvers)

    def is_admin(self, admins: Sequence[str], user: str) -> tuple[bool, str]:
        """(allowed, reason) for `user` on the policy's top-level `admins:` (the org-wide freeze); fail closed."""
        if not admins:
            return False, ("the policy names no admins (top-level `admins:`), so nobody may freeze or unfreeze "
                           "every service at once")
        return self.approvers.check(user, admins)

    def approval(self, incident: Incident, svc: Service, user: str) -> Decision:
        """A confirmed Roll back by `user` on an open incident."""
        allowed, reason = self.is_approver(svc, user)
        if not allowed:
            return Decision("refuse", reason)
        if not svc.two_person:
            return Decision("run")
        if incident.first_approver is None:
            return Decision("first")
        if incident.first_approver == user:
            return Decision("refuse", "two_person")
        return Decision("run")

    def may_run(self, incident: Incident, svc: Service) -> tuple[bool, str]:
        """The rule itself, on the stored incident: may its plan reach an executor now?"""
        if incident.approved_by == AUTO_ACTOR:
            if incident.armed_by in AUTO_SOURCES and svc.auto_rollback:
                return True, "automatic rollback armed by " + str(incident.armed_by)
            return False, "an automatic run that detection or Alertmanager did not arm"
        if not incident.approved_by:
            return False, "nobody approved it"
        allowed, reason = self.is_approver(svc, incident.approved_by)
        if not allowed:
            return False, f"the approval is not by an approver ({reason})"
        if svc.two_person and (incident.first_approver is None or incident.first_approver == incident.approved_by):
            return False, "the two-person rule needs two different approvers"
        return True, "approved"

    def may_drill(self, svc: Service, actor: str) -> tuple[bool, str]:
        """(c) A staging drill (`drill.rollback`, the policy's staging plan, never the service's own `rollback:`)
        runs for an approver's `/rollback drill`, or by the bot after a promotion the gate made when the policy
        asks for drills on promotion."""
        if svc.drill.rollback is None:
            return False, "the policy has no staging plan (drill.rollback)"
        if actor == AUTO_ACTOR:
            if svc.drills_on_promotion:
                return True, "a drill after a promotion"
            return False, "drills after promotions are off (drill.on_promotion: false)"
        allowed, reason = self.is_approver(svc, actor)
        return (True, "an approver's /rollback drill") if allowed else (False, reason)


def arms_automatic(svc: Service, source: str) -> bool:
    """Whether an incident opened from `source` arms the automatic rollback (never a person's request)."""
    return svc.auto_rollback and source in AUTO_SOURCES
