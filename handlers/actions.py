"""Buttons on the warning: Roll back, Dry run, Dismiss; Retry step / Resume and Stop on a halted plan or an
automatic rollback. Ack first, then delegate to bot.incidents.service. Over HTTP a click is already acked by
handlers.slack_http; the ack() stays for Socket Mode, where it is the only one (handlers.slack_http says why).

With `confirm: dialog` Slack has already shown the Block Kit confirm before the click arrives; with
`confirm: typed` the click opens a modal (handlers.views takes its submission). Refusals are ephemeral.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App

from bot.incidents.replies import Reply
from bot.incidents.service import IncidentService
from bot.slack import blocks
from bot.slack.slack_out import SlackOut
from handlers.reply import tell

UNKNOWN = "This button does not belong to a known incident."


def _incident_id(body: dict[str, Any]) -> int | None:
    try:
        return int(body["actions"][0]["value"])
    except (KeyError, IndexError, ValueError):
        return None  # not a button we rendered: answered as an unknown incident


def _where(body: dict[str, Any]) -> str | None:
    return (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")


def register(app: App, incidents: IncidentService, slack: SlackOut) -> None:
    @app.action(blocks.APPROVE)
    def approve(ack: Ack, body: dict[str, Any]) -> None:
        ack()
        user, channel, incident_id = body["user"]["id"], _where(body), _incident_id(body)
        if incident_id is None:
            tell(slack, channel, user, UNKNOWN)
            return
        reply = incidents.press_approve(incident_id, user)
        if reply.view is not None:
            slack.open_view(body["trigger_id"], reply.view)
        elif not reply.ok:
            tell(slack, channel, user, reply.text)

    for action_id, act in ((blocks.DRY_RUN, incidents.dry_run), (blocks.DISMISS, incidents.dismiss),
                           (blocks.RETRY, incidents.retry), (blocks.STOP, incidents.stop)):
        app.action(action_id)(_delegate(act, slack))


def _delegate(act: Callable[[int, str], Reply], slack: SlackOut) -> Callable[..., None]:
    """A listener for a button whose value is the incident id: ack, act, and tell the clicker if refused."""

    def listener(ack: Ack, body: dict[str, Any]) -> None:
        ack()
        user, channel, incident_id = body["user"]["id"], _where(body), _incident_id(body)
        reply = act(incident_id, user) if incident_id is not None else Reply(False, UNKNOWN)
        if not reply.ok:
            tell(slack, channel, user, reply.text)

    return listener
