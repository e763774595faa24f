"""The Slack surface: slash commands, button actions and modal submissions. Each listener parses, acks,
and delegates to bot.incidents.service.IncidentService; none holds policy or assembles Block Kit itself.

Called by bot.app: `register_handlers(app, bot)`.
"""

from __future__ import annotations

from slack_bolt import App

from bot.incidents.service import IncidentService
from handlers import actions, commands, dedupe, views


def register_handlers(app: App, bot: IncidentService) -> None:
    dedupe.register(app, bot.store)
    commands.register(app, bot)
    actions.register(app, bot)
    views.register(app, bot)
