"""Freeze windows: from every time a window's cron matches (UTC) for its `duration`, the gate promotes nothing.

Called by bot.slo.gate before a promotion and by bot.incidents.oncall for `/rollback status`. A window is a
service's own (`services.<name>.freeze_windows`) or the policy's (top-level `freeze_windows`, every service).
A duration longer than the cron's period overlaps the next occurrence: the window open now is the one that ends
last (the latest match). Rollbacks are never held by a window.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from croniter import croniter

from bot.slo.policy import FreezeWindow, Policy, Service


@dataclass(frozen=True)
class OpenWindow:
    reason: str
    start: float  # unix seconds, when this occurrence opened (the cron match)
    end: float  # start + duration
    cron: str
    scope: str  # "all" (policy top level) or the service's name


def _windows(svc: Service, policy: Policy | None) -> Iterator[tuple[FreezeWindow, str]]:
    for window in policy.freeze_windows if policy else ():
        yield window, "all"
    for window in svc.freeze_windows:
        yield window, svc.name


def _iterate(cron: str, at: float) -> croniter:
    return croniter(cron, datetime.fromtimestamp(at, tz=timezone.utc))


def _open(window: FreezeWindow, scope: str, now: float) -> OpenWindow | None:
    """The occurrence of `window` open at `now`, if any: the last match at or before now is the one that ends
    last (every occurrence lasts `duration`), so when it has closed, every earlier one has too."""
    start = float(_iterate(window.cron, now + 1e-3).get_prev(float))  # a match exactly at `now` has opened
    return OpenWindow(window.reason, start, start + window.duration, window.cron, scope) \
        if start + window.duration > now else None


def _latest(candidates: Iterator[tuple[FreezeWindow, str]], now: float) -> OpenWindow | None:
    found = [w for w in (_open(window, scope, now) for window, scope in candidates) if w is not None]
    return max(found, key=lambda w: w.end) if found else None


def open_window(svc: Service, policy: Policy | None, now: float) -> OpenWindow | None:
    """The freeze window open at `now` for `svc` (its own windows and the policy's); when several are open, the
    one that ends last."""
    return _latest(_windows(svc, policy), now)


def policy_window(policy: Policy, now: float) -> OpenWindow | None:
    """The policy's top-level window open at `now` (it holds every service): the head of a large /rollback status,
    which lists only the services that need attention."""
    return _latest(((window, "all") for window in policy.freeze_windows), now)


def next_window(svc: Service, policy: Policy | None, now: float) -> OpenWindow | None:
    """The next occurrence, of any of the service's windows, that opens after `now`."""
    upcoming = []
    for window, scope in _windows(svc, policy):
        start = float(_iterate(window.cron, now).get_next(float))
        upcoming.append(OpenWindow(window.reason, start, start + window.duration, window.cron, scope))
    return min(upcoming, key=lambda w: w.start) if upcoming else None
