"""The typed-confirmation modal (`confirm: typed`): the approver must type the service name.

A wrong name is answered inside the modal (response_action=errors) and nothing runs; the right one
approves through bot.incidents.service exactly like a dialog-confirmed click.
"""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App

from bot.incidents.service import IncidentService
from bot.slack import blocks
from handlers.reply import tell


def register(app: App, bot: IncidentService) -> None:
    @app.view(blocks.CONFIRM_VIEW)
    def confirm(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        user = body["user"]["id"]
        try:
            incident_id = int(view.get("private_metadata", ""))
        except ValueError:
            ack(response_action="errors", errors={blocks.CONFIRM_BLOCK: "This confirmation is not for a known incident."})
            return
        svc = bot.service_of(incident_id)
        typed = (((view.get("state") or {}).get("values") or {}).get(blocks.CONFIRM_BLOCK) or {}).get(
            blocks.CONFIRM_INPUT, {}).get("value") or ""
        if svc is None or typed.strip() != svc.name:
            expected = svc.name if svc else "the service name"
            ack(response_action="errors", errors={blocks.CONFIRM_BLOCK: f"Type {expected} exactly to confirm."})
            return
        ack()
        reply = bot.approve(incident_id, user)
        if not reply.ok:
            incident = bot.store.find_incident(incident_id)
            tell(bot.slack, incident.channel if incident else None, user, reply.text)
