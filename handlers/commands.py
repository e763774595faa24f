"""`/rollback` — parsed and answered here, carried out by bot.core.

`/rollback <service>` opens the warning-with-buttons flow in the service's channel; `/rollback help`
explains. Bad input (unknown service, extra words, odd characters) is answered in the ack, ephemerally,
and nothing runs.
"""

from __future__ import annotations

import re
from typing import Any

from slack_bolt import Ack, App
from slack_sdk import WebClient

from bot.core import RollbackBot
from handlers.reply import tell

SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_ECHO = 60

HELP = (
    "*/rollback* — roll back a model service that breaks its SLOs\n"
    "• `/rollback <service>` — post a rollback request with *Roll back*, *Dry run* and *Dismiss* buttons "
    "into the service's channel; an approver confirms it there\n"
    "• `/rollback help` — this message\n"
    "Known services: {known}"
)


def _echo(text: str) -> str:
    shown = text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "…"
    return shown.replace("`", "'")


def parse(text: str) -> tuple[str | None, str | None]:
    """(service, None) or (None, error text)."""
    words = text.split()
    if not words or words[0].lower() == "help":
        return None, None
    if len(words) > 1:
        return None, f"`/rollback` takes one service name; got {len(words)} words: `{_echo(text)}`."
    if not SERVICE_NAME.match(words[0]):
        return None, f"`{_echo(words[0])}` is not a service name (lowercase letters, digits, `-`, `_`, `.`)."
    return words[0], None


def register(app: App, bot: RollbackBot) -> None:
    @app.command("/rollback")
    def rollback(ack: Ack, command: dict[str, Any], client: WebClient) -> None:
        service, error = parse(command.get("text", ""))
        known = bot.known_services()
        if error:
            ack(text=f"{error}\nKnown services: {known}. Try `/rollback help`.")
            return
        if service is None:
            ack(text=HELP.format(known=known))
            return
        if bot.service(service) is None:
            ack(text=f"Unknown service `{service}`. Known services: {known}")
            return
        ack(text=f"Opening a rollback request for *{service}*…")
        reply = bot.request_rollback(service, command["user_id"], command["channel_id"])
        tell(client, command.get("channel_id"), command["user_id"], reply.text)
