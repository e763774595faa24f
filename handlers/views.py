"""The typed-confirmation modal (`confirm: typed`): the approver must type the service name.

A wrong name is answered inside the modal (response_action=errors) and nothing runs; the right one
approves through bot.incidents.service exactly like a dialog-confirmed click. The ack is the HTTP answer here:
handlers.slack_http runs submissions synchronously (after verifying them) so these errors reach the modal.
"""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App

from bot.incidents.service import IncidentService
from bot.slack import blocks
from bot.slack.slack_out import SlackOut
from handlers.reply import tell


def register(app: App, incidents: IncidentService, slack: SlackOut) -> None:
    @app.view(blocks.CONFIRM_VIEW)
    def confirm(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        user = body["user"]["id"]
        try:
            incident_id = int(view.get("private_metadata", ""))
        except ValueError:
            ack(response_action="errors", errors={blocks.CONFIRM_BLOCK: "This confirmation is not for a known incident."})
            return
        svc = incidents.service_of(incident_id)
        typed = (((view.get("state") or {}).get("values") or {}).get(blocks.CONFIRM_BLOCK) or {}).get(
            blocks.CONFIRM_INPUT, {}).get("value") or ""
        if svc is None or typed.strip() != svc.name:
            expected = svc.name if svc else "the service name"
            ack(response_action="errors", errors={blocks.CONFIRM_BLOCK: f"Type {expected} exactly to confirm."})
            return
        ack()
        reply = incidents.approve(incident_id, user)
        if not reply.ok:
            tell(slack, incidents.channel_of(incident_id), user, reply.text)
