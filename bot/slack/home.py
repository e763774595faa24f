"""The app's Home tab: the Block Kit `home` view of every service's state, built from data.

Called by bot.incidents.home, which reads the store and the registry for one viewer and hands this the
`Overview`; the view goes out with SlackOut.publish_home (views.publish). Services are grouped by state, open
incidents first (each with a link to its thread), then breaching, frozen and healthy ones. A large policy lists
only the services that need attention and counts the quiet ones, so the view stays within Slack's 100 blocks
(MAX_BLOCKS). Text from outside (freeze reasons, registry errors, incident errors) arrives already inert or is
made inert here; every section is cut to Slack's limits by blocks.clip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bot.infra.store import Freeze, Incident
from bot.slack.answers import window_text
from bot.slack.blocks import clip, inert, mention, status_line
from bot.slo.windows import OpenWindow

HOME_CALLBACK = "rollback_home"
MAX_BLOCKS = 100  # Slack's limit for a home view
HEADER_LIMIT = 150  # a header block's plain text

HEALTHY, BREACHING, INCIDENT, FROZEN = "healthy", "breaching", "incident", "frozen"
# The groups, in the order the tab shows them: what needs someone first.
GROUPS = ((INCIDENT, ":rotating_light:", "Open incidents"), (BREACHING, ":red_circle:", "Breaching now"),
          (FROZEN, ":ice_cube:", "Frozen"), (HEALTHY, ":large_green_circle:", "Healthy"))


@dataclass(frozen=True)
class Breach:
    """One SLO breaching now, as the last evaluation stored it."""

    slo: str
    value: float | None
    target: str  # the healthy side, `> 0.8`
    since: float | None


@dataclass(frozen=True)
class ServiceView:
    """What the tab shows of one service."""

    name: str
    state: str  # INCIDENT | BREACHING | FROZEN | HEALTHY: the first that holds, in that order
    approver: bool  # the viewer is one of its approvers
    versions: str  # champion and baseline as /rollback status shows them (answers.aliases), or why not
    incident: Incident | None = None
    thread: str | None = None  # the link to the incident's thread, when it has been posted and linked
    freeze: Freeze | None = None
    breaches: tuple[Breach, ...] = ()
    window: OpenWindow | None = None


@dataclass(frozen=True)
class Overview:
    """Everything on one viewer's tab. `services` are the listed ones: all of them for a small policy, else
    only the busy ones (an incident, a breach or a freeze), at most a page."""

    viewer: str
    at: float
    services: tuple[ServiceView, ...]
    watched: int  # services in the policy
    busy: int  # of them, with an incident, a breach or a freeze
    yours: int  # of them, those the viewer approves
    quiet_yours: int  # of the quiet (unlisted) ones, those the viewer approves
    summarised: bool  # only the busy ones are listed
    org_freeze: Freeze | None = None
    org_window: OpenWindow | None = None


def when(ts: float | None) -> str:
    """`2026-12-02 12:01 UTC`: a freeze may be days old, so the date is shown too."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts)) if ts else "—"


def home_view(overview: Overview) -> dict[str, Any]:
    """The `home` view for views.publish."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Rollback status"[:HEADER_LIMIT]}},
        _context(_head(overview)),
    ]
    if overview.org_freeze is not None:
        f = overview.org_freeze
        blocks.append(_section(f":octagonal_sign: *Every service frozen* since {when(f.frozen_at)}{_by(f)}: "
                               f"{inert(f.reason)}. No promotion anywhere until `/rollback unfreeze --all`."))
    if overview.org_window is not None:
        blocks.append(_section(f":snowflake: {window_text(overview.org_window)}"))
    for state, icon, title in GROUPS:
        members = [s for s in overview.services if s.state == state]
        if not members:
            continue
        blocks.append({"type": "divider"})
        blocks.append(_section(f"{icon} *{title}* ({len(members)})"))
        blocks.extend(_section(service_text(s)) for s in members)
    tail = _tail(overview)
    if tail:
        blocks.extend([{"type": "divider"}, _context(tail)])
    if len(blocks) > MAX_BLOCKS:  # not reached with a page of services; a guard, so a publish never fails on it
        blocks = blocks[:MAX_BLOCKS - 1] + [_context("…more than this tab can show: `/rollback status`.")]
    return {"type": "home", "callback_id": HOME_CALLBACK, "blocks": blocks}


def service_text(s: ServiceView) -> str:
    """One service's section: its state, then a line for each thing behind it."""
    icon = next(i for state, i, _ in GROUPS if state == s.state)
    yours = " · _you approve it_" if s.approver else ""
    lines = [f"{icon} *{inert(s.name)}* — {s.state}{yours}"]
    if s.incident is not None:
        where = f"<{s.thread}|open the thread>" if s.thread else (
            f"in <#{s.incident.channel}>" if s.incident.channel else "not posted yet")
        lines.append(f"Incident #{s.incident.id}: {status_line(s.incident)} · {where}")
    for b in s.breaches:
        value = f"{b.value:.4g}" if b.value is not None else "firing"
        since = f" since {when(b.since)}" if b.since else ""
        lines.append(f"Breaching: *{inert(b.slo)}* is {value} (target {inert(b.target)}){since}")
    if s.freeze is not None:
        lines.append(f"Frozen since {when(s.freeze.frozen_at)}{_by(s.freeze)}: {inert(s.freeze.reason)}")
    if s.window is not None:
        lines.append(f":snowflake: {window_text(s.window)}")
    lines.append(f"Versions: {s.versions}")
    return "\n".join(lines)


def _head(o: Overview) -> str:
    yours = f", you approve {o.yours:,}" if o.yours else ", you approve none of them"
    return (f"As of {time.strftime('%H:%M:%S', time.gmtime(o.at))} UTC · {o.watched:,} "
            f"{'service' if o.watched == 1 else 'services'} watched{yours} · refreshed each time you open this tab")


def _tail(o: Overview) -> str:
    if not o.summarised:
        return ""
    unlisted_busy = o.busy - len(o.services)
    quiet = o.watched - o.busy
    parts = []
    if unlisted_busy > 0:
        parts.append(f"…and {unlisted_busy:,} more with an incident, a breach or a freeze")
    parts.append(f"{quiet:,} quiet {'service' if quiet == 1 else 'services'} (healthy, not frozen)"
                 + (f", {o.quiet_yours:,} of them yours" if o.quiet_yours else ""))
    return " · ".join(parts) + " · `/rollback status <service>` shows one service."


def _by(frozen: Freeze) -> str:
    return f" by {mention(frozen.actor)}" if frozen.actor.startswith(("U", "W")) else ""


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text)}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": clip(text)}]}

