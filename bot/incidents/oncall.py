"""What on-call asks and does around rollbacks, besides rolling back: status, history, freeze / unfreeze and
a service's policy in three lines.

Called by handlers.commands (`/rollback status|history|freeze|unfreeze|policy`) with plain values; returns
Reply values worded by bot.slack.answers. Freeze and unfreeze are approver-only and audited; unfreeze lifts a
version's `rollback_blocked` tag only when asked to by name (`--unblock <version>`).
"""

from __future__ import annotations

from collections.abc import Callable

from bot.incidents.replies import Reply
from bot.infra.model_registry import ModelRegistry, RegistryError
from bot.infra.store import Freeze, Store
from bot.slack import answers
from bot.slo.policy import Policy, Service

CheckApprover = Callable[[Service, str, str], Reply | None]  # None, or the (audited) refusal to show the person
Say = Callable[[str, str], None]  # a note in a channel


# `/rollback status` lists every service up to this many; above, only those with an open incident or a freeze.
STATUS_ALL = 10
STATUS_SHOWN = 20

class OnCall:
    def __init__(self, *, policy: Policy, store: Store, models: ModelRegistry, check_approver: CheckApprover,
                 say: Say) -> None:
        self.policy = policy
        self.store = store
        self.models = models
        self.check_approver = check_approver
        self.say = say

    def _aliases(self, svc: Service) -> str:
        to, previous = (svc.promote.to, svc.promote.previous) if svc.promote else ("champion", "previous_champion")
        try:
            current = self.models.by_alias(svc.model, to)
            before = self.models.by_alias(svc.model, previous)
        except RegistryError as exc:
            return answers.registry_unavailable(str(exc))
        return answers.aliases(to, previous, current, before)

    def status(self, service: str | None) -> Reply:
        """Open incidents, frozen services (reason, since when), current champion / baseline per service. A policy
        of more than STATUS_ALL services lists only those with an open incident or a freeze (at most STATUS_SHOWN)
        and counts the rest: one answer stays readable, and costs two store reads, not a registry read per service."""
        if service:
            return Reply(True, answers.status([self._entry(service, True, self.store.frozen(service))]))
        active, frozen = self.store.active_services(), self.store.frozen_by_service()
        names = sorted(self.policy.services)
        if len(names) <= STATUS_ALL:
            return Reply(True, answers.status([self._entry(n, n in active, frozen.get(n)) for n in names]))
        busy = [n for n in names if n in active or n in frozen]
        entries = [self._entry(n, n in active, frozen.get(n)) for n in busy[:STATUS_SHOWN]]
        return Reply(True, answers.status_of_many(entries, watched=len(names), busy=len(busy),
                                                 open_incidents=sum(1 for n in busy if n in active)))

    def _entry(self, name: str, active: bool, frozen: Freeze | None) -> str:
        """One service's status line; its incident is read only when it has an active one."""
        incident = self.store.active_incident(name) if active else None
        return answers.status_entry(name, self._aliases(self.policy.services[name]), incident, frozen)

    def history(self, service: str, limit: int = 10) -> Reply:
        return Reply(True, answers.history(service, self.store.recent_incidents(service, limit)))

    def freeze(self, service: str, user: str, reason: str) -> Reply:
        svc = self.policy.services[service]
        refusal = self.check_approver(svc, user, "freeze")
        if refusal:
            return refusal
        why = reason or "frozen by hand"
        self.store.freeze(service=service, reason=why, actor=user)
        self.store.audit(actor=user, action="freeze", result="ok", detail={"service": service, "reason": why})
        self.say(svc.channel, answers.froze(user, service, why))
        return Reply(True, answers.froze_reply(service))

    def unfreeze(self, service: str, user: str, unblock: str | None) -> Reply:
        svc = self.policy.services[service]
        refusal = self.check_approver(svc, user, "unfreeze")
        if refusal:
            return refusal
        if self.store.active_incident(service):
            return Reply(False, answers.open_incident_first(service))
        lifted = self.store.unfreeze(service)
        note = ""
        if unblock:
            try:
                self.models.unblock(svc.model, unblock)
            except RegistryError as exc:
                return Reply(False, answers.could_not_unblock(lifted, svc.model, unblock, str(exc)))
            note = answers.unblocked(svc.model, unblock)
        self.store.audit(actor=user, action="unfreeze", result="ok", detail={"service": service, "unblock": unblock})
        if not lifted and not unblock:
            return Reply(True, answers.was_not_frozen(service))
        self.say(svc.channel, answers.unfroze(user, service, note))
        return Reply(True, answers.unfroze_reply(service, note))

    def policy_summary(self, service: str) -> Reply:
        return Reply(True, answers.policy_summary(self.policy.services[service], self.policy))
