"""What on-call asks and does around rollbacks, besides rolling back: status, history, freeze / unfreeze (of a
service, or of all at once), a service's policy in three lines, its readiness, a drill, the report and an
incident's postmortem draft.

Called by handlers.commands (`/rollback status|history|freeze|unfreeze|policy|readiness|drill|report|postmortem`)
with plain values; returns Reply values worded by bot.slack.answers. Freeze and unfreeze are approver-only and
audited; unfreeze lifts a version's `rollback_blocked` tag only when asked to by name (`--unblock <version>`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bot.incidents.replies import Reply
from bot.infra.model_registry import ModelRegistry, RegistryError
from bot.infra.store import ALL, Freeze, Store
from bot.slack import answers, checklist
from bot.slo import windows
from bot.slo.policy import Policy, Service

if TYPE_CHECKING:
    from bot.incidents.drills import DrillRunner
    from bot.incidents.postmortem import Postmortems
    from bot.incidents.readiness import Readiness
    from bot.incidents.report import Reports

CheckApprover = Callable[[Service, str, str], Reply | None]  # None, or the (audited) refusal to show the person
CheckAdmin = Callable[[str, str], Reply | None]  # (user, action): None, or the (audited) refusal
Say = Callable[[str, str], None]  # a note in a channel


# `/rollback status` lists every service up to this many; above, only those with an open incident or a freeze.
STATUS_ALL = 10
STATUS_SHOWN = 20

class OnCall:
    def __init__(self, *, policy: Policy, store: Store, models: ModelRegistry, check_approver: CheckApprover,
                 say: Say, check_admin: CheckAdmin | None = None, readiness: Readiness | None = None,
                 drills: DrillRunner | None = None, reports: Reports | None = None,
                 postmortems: Postmortems | None = None, clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.store = store
        self.models = models
        self.check_approver = check_approver
        self.check_admin = check_admin
        self.say = say
        self.checker = readiness
        self.drills = drills
        self.reports = reports
        self.postmortems = postmortems
        self.clock = clock

    def aliases(self, svc: Service) -> str:
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
            head = answers.org_stop(self.store.frozen(ALL))
            return Reply(True, answers.status([self._entry(service, True, self.store.frozen(service))], head))
        active, frozen = self.store.active_services(), self.store.frozen_by_service()
        head = answers.org_stop(frozen.get(ALL))
        names = sorted(self.policy.services)
        if len(names) <= STATUS_ALL:
            return Reply(True, answers.status([self._entry(n, n in active, frozen.get(n)) for n in names], head))
        busy = [n for n in names if n in active or n in frozen]
        entries = [self._entry(n, n in active, frozen.get(n)) for n in busy[:STATUS_SHOWN]]
        many = answers.status_of_many(entries, watched=len(names), busy=len(busy),
                                      open_incidents=sum(1 for n in busy if n in active))
        head = "\n".join(filter(None, [head, answers.org_window(windows.policy_window(self.policy, self.clock()))]))
        return Reply(True, f"{head}\n{many}" if head else many)

    def _entry(self, name: str, active: bool, frozen: Freeze | None) -> str:
        """One service's status line; its incident is read only when it has an active one."""
        incident = self.store.active_incident(name) if active else None
        svc = self.policy.services[name]
        return answers.status_entry(name, self.aliases(svc), incident, frozen,
                                    windows.open_window(svc, self.policy, self.clock()))

    def history(self, service: str, limit: int = 10) -> Reply:
        """`/rollback history <service>`: its last incidents and its last drills."""
        return Reply(True, answers.history(service, self.store.recent_incidents(service, limit),
                                           self.store.recent_drills(service, limit=5)))

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

    def freeze_all(self, user: str, reason: str) -> Reply:
        """`/rollback freeze --all [reason]`: the org-wide stop (admins only), stored as the freezes row ALL; said
        once in each channel the policy's services use."""
        refusal = self.check_admin(user, "freeze_all") if self.check_admin else Reply(False, "no admins")
        if refusal:
            return refusal
        why = reason or "frozen by hand"
        self.store.freeze(service=ALL, reason=why, actor=user)
        self.store.audit(actor=user, action="freeze_all", result="ok", detail={"reason": why})
        channels = sorted({svc.channel for svc in self.policy.services.values()})
        for channel in channels:
            self.say(channel, answers.froze_all(user, why))
        return Reply(True, answers.froze_all_reply(len(channels)))

    def unfreeze_all(self, user: str) -> Reply:
        """`/rollback unfreeze --all`: lift the org-wide stop (admins only); each service's own freeze stays."""
        refusal = self.check_admin(user, "unfreeze_all") if self.check_admin else Reply(False, "no admins")
        if refusal:
            return refusal
        lifted = self.store.unfreeze(ALL)
        self.store.audit(actor=user, action="unfreeze_all", result="ok", detail={"lifted": lifted})
        if lifted:
            for channel in sorted({svc.channel for svc in self.policy.services.values()}):
                self.say(channel, answers.unfroze_all(user))
        return Reply(True, answers.unfroze_all_reply(lifted))

    def readiness(self, service: str) -> Reply:
        """`/rollback readiness <service>`: the way back as it stands now, item by item."""
        assert self.checker is not None, "OnCall was built without readiness"
        return Reply(True, checklist.checklist(self.checker.check(self.policy.services[service])))

    def drill(self, service: str, user: str) -> Reply:
        """`/rollback drill <service>` (approvers only): a drill now, its result posted in the service's channel."""
        svc = self.policy.services[service]
        refusal = self.check_approver(svc, user, "drill")
        if refusal:
            return refusal
        assert self.drills is not None, "OnCall was built without drills"
        return self.drills.on_command(svc, user)

    def report(self, service: str | None, days: int) -> Reply:
        """`/rollback report [service] [--days N]`."""
        assert self.reports is not None, "OnCall was built without reports"
        return self.reports.report(service, days)

    def postmortem(self, incident_id: int, user: str) -> Reply:
        """`/rollback postmortem <incident-id>` (anyone: the draft goes into the incident's own thread)."""
        assert self.postmortems is not None, "OnCall was built without postmortems"
        return self.postmortems.regenerate(incident_id, user)

    def policy_summary(self, service: str) -> Reply:
        return Reply(True, answers.policy_summary(self.policy.services[service], self.policy))
