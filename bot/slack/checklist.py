"""What a readiness check says: the checklist `/rollback readiness <service>` answers, and the notice the gate
posts once per candidate it does not promote because the way back is not ready.

Called by bot.incidents.oncall (checklist) and bot.incidents.detection (not_ready_notice), with a
bot.incidents.readiness ReadinessReport. Details come from executors, Prometheus and Slack: shown inert.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.slack.blocks import inert

if TYPE_CHECKING:
    from bot.incidents.readiness import ReadinessReport

ICONS = {"ok": ":white_check_mark:", "failed": ":x:", "unknown": ":grey_question:"}  # ✅ ❌ ❔


def _items(count: int) -> str:
    return f"{count} item" if count == 1 else f"{count} items"


def checklist(report: ReadinessReport) -> str:
    """e.g. "*model-svc* is NOT ready to roll back: 2 items failed", then one line per item."""
    failed = len(report.failed)
    if report.ready:
        head = f"*{inert(report.service)}* is ready to roll back"
    else:
        head = f"*{inert(report.service)}* is NOT ready to roll back: {_items(failed)} failed"
    lines = [f"{ICONS.get(item.status, ICONS['unknown'])} *{item.name}*: {inert(item.detail)}"
             for item in report.items]
    return "\n".join([head, *lines])


def not_ready_notice(svc_name: str, candidate: str, report: ReadinessReport) -> str:
    """e.g. "Not promoting v6 of model-svc: the way back is not ready — baseline: …; slo kinds: …. It is promoted
    once every item passes." """
    failed = "; ".join(f"{item.name}: {inert(item.detail)}" for item in report.failed)
    return (f"Not promoting v{inert(candidate)} of {inert(svc_name)}: the way back is not ready — {failed}. "
            "It is promoted once every item passes.")
