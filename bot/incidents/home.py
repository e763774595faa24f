"""The Home tab's state: for one viewer, every service of the policy with its state (an open incident, an SLO
breaching now, a freeze, or healthy), its champion and baseline, and the link to an open incident's thread.

Called by handlers.home when someone opens the app's Home tab (`open(user)`): read fresh each time (no cache
beyond the registry's and the approver groups' own), worded by bot.slack.home and published with the injected
`publish` (SlackOut.publish_home). The reads are OnCall's (bot.incidents.oncall): the same policy, store and
registry, the same champion / baseline text as `/rollback status`, and like it a policy of more than
oncall.STATUS_ALL services lists only the busy services (at most oncall.STATUS_SHOWN) and counts the rest. The
store is read three times whatever the policy's size (open incidents, freezes, SLO states); the registry once
per listed service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bot.incidents.oncall import STATUS_ALL, STATUS_SHOWN, OnCall
from bot.infra.store import ACTIVE_STATES, ALL, Freeze, Incident, SloState
from bot.slack.home import BREACHING, FROZEN, HEALTHY, INCIDENT, Breach, Overview, ServiceView, home_view
from bot.slack.slack_out import SlackError
from bot.slo import windows
from bot.slo.evaluation import BREACH
from bot.slo.policy import Service

log = logging.getLogger(__name__)

IsApprover = Callable[[Service, str], bool]  # Authorization.is_approver's verdict, without its reason
Publish = Callable[[str, dict[str, Any]], None]  # (user, home view): SlackOut.publish_home
Permalink = Callable[[str, str], str]  # (channel, ts) -> link; SlackOut.permalink, raises SlackError


class Home:
    def __init__(self, *, oncall: OnCall, is_approver: IsApprover, publish: Publish, permalink: Permalink) -> None:
        self.oncall = oncall
        self.is_approver = is_approver
        self.publish = publish
        self.permalink = permalink

    def open(self, user: str) -> bool:
        """`user` opened the Home tab: publish it as things stand now. False when Slack refused the view (logged:
        the viewer keeps the tab published last, and nothing else depends on it)."""
        view = home_view(self.overview(user))
        try:
            self.publish(user, view)
        except SlackError as exc:  # the tab is a read-only picture: the next opening publishes it again
            log.warning("the Home tab of %s was not published: %s", user, exc)
            return False
        return True

    def overview(self, user: str) -> Overview:
        policy, store = self.oncall.policy, self.oncall.store
        now = self.oncall.clock()
        active = {i.service: i for i in store.incidents_in(ACTIVE_STATES)}
        frozen = store.frozen_by_service()
        states = store.slo_states()
        names = sorted(policy.services)
        breaches = {n: self._breaches(policy.services[n], states) for n in names}
        busy = [n for n in names if n in active or n in frozen or breaches[n]]
        summarised = len(names) > STATUS_ALL
        shown = busy[:STATUS_SHOWN] if summarised else names
        yours = {n for n in names if self.is_approver(policy.services[n], user)}
        services = tuple(self._service(policy.services[n], n in yours, active.get(n), frozen.get(n), breaches[n], now)
                         for n in shown)
        return Overview(viewer=user, at=now, services=services, watched=len(names), busy=len(busy),
                        yours=len(yours), quiet_yours=len(yours - set(busy)), summarised=summarised,
                        org_freeze=frozen.get(ALL), org_window=windows.policy_window(policy, now))

    def _service(self, svc: Service, approver: bool, incident: Incident | None, freeze: Freeze | None,
                 breaches: tuple[Breach, ...], now: float) -> ServiceView:
        state = INCIDENT if incident else BREACHING if breaches else FROZEN if freeze else HEALTHY
        return ServiceView(name=svc.name, state=state, approver=approver, versions=self.oncall.aliases(svc),
                           incident=incident, thread=self._thread(incident), freeze=freeze, breaches=breaches,
                           window=windows.open_window(svc, None, now))

    def _breaches(self, svc: Service, states: dict[tuple[str, str], SloState]) -> tuple[Breach, ...]:
        """The service's SLOs whose last evaluation breached (as stored: see Store.slo_key)."""
        found = []
        for slo in svc.slos:
            state = states.get(self.oncall.store.slo_key(svc.name, slo.name))
            if state is not None and state.status == BREACH:
                found.append(Breach(slo.name, state.value, slo.target_text(), state.breach_since))
        return tuple(found)

    def _thread(self, incident: Incident | None) -> str | None:
        if incident is None or not incident.channel or not incident.message_ts:
            return None
        try:
            return self.permalink(incident.channel, incident.message_ts)
        except SlackError as exc:  # shown without the link ("in #channel"); the rest of the tab still goes out
            log.warning("no link to incident #%s's thread: %s", incident.id, exc)
            return None
