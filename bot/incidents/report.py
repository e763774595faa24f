"""`/rollback report [service] [--days N]`: per service, the incidents of the last N days, the median and worst
time to recover (alert to stable, as in each incident's summary), the share within the service's recover target
and the last drill.

Called by bot.incidents.oncall (`OnCall.report`), built by bot.app. Two store reads whatever the number of
services (the window's incidents, each service's newest drill); worded by bot.slack.reports.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

from bot.incidents.replies import Reply
from bot.infra.results import ServiceReport
from bot.infra.store import Drill, Incident, Store
from bot.slack import reports
from bot.slo.policy import Policy

DAY = 86400.0
SHOWN = 20  # services in one answer; the rest are counted
JUDGED = ("recovered", "verify_failed", "failed")  # ended with a rollback: measured against the target


def service_report(service: str, incidents: Sequence[Incident], target: float | None,
                   last_drill: Drill | None) -> ServiceReport:
    """The numbers of one service from its incidents in the window."""
    times = [t for t in (i.alert_to_stable for i in incidents) if t is not None]
    by_state: dict[str, int] = {}
    for incident in incidents:
        by_state[incident.state] = by_state.get(incident.state, 0) + 1
    within = sum(1 for t in times if target is not None and t <= target)
    return ServiceReport(service=service, incidents=len(incidents), by_state=by_state,
                         median=statistics.median(times) if times else None, worst=max(times) if times else None,
                         judged=sum(1 for i in incidents if i.state in JUDGED), within=within, target=target,
                         last_drill=last_drill)


class Reports:
    def __init__(self, *, policy: Policy, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.store = store
        self.clock = clock

    def report(self, service: str | None, days: int = 30) -> Reply:
        """One service's report, or every service with an incident or a drill in the last `days` days (at most
        SHOWN of them, the busiest first; the rest counted)."""
        if days < 1:
            return Reply(False, reports.bad_days(days))
        now = self.clock()
        since = now - days * DAY
        if service is not None:
            svc = self.policy.services.get(service)
            if svc is None:
                return Reply(False, reports.unknown_service(service))
            drill = self.store.last_drills([service]).get(service)
            one = service_report(service, self.store.incidents_since(since, [service]), svc.targets.recover, drill)
            return Reply(True, reports.report([one], days=days, now=now, more=0))
        by_service: dict[str, list[Incident]] = {}
        for incident in self.store.incidents_since(since):
            if incident.service in self.policy.services:
                by_service.setdefault(incident.service, []).append(incident)
        drills = self.store.last_drills()
        names = sorted(name for name in self.policy.services
                       if name in by_service or (name in drills and drills[name].started_at >= since))
        names.sort(key=lambda name: -len(by_service.get(name, ())))  # stable: by name among equals
        shown = [service_report(name, by_service.get(name, []), self.policy.services[name].targets.recover,
                                drills.get(name)) for name in names[:SHOWN]]
        return Reply(True, reports.report(shown, days=days, now=now, more=len(names) - len(shown)))
