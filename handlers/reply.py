"""Ephemeral answers to the person who acted. Used by the listeners after their ack."""

from __future__ import annotations

import logging

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.blocks import escape
from bot.redact import redact

log = logging.getLogger(__name__)


def tell(client: WebClient, channel: str | None, user: str, text: str) -> None:
    if not channel:
        return
    try:
        client.chat_postEphemeral(channel=channel, user=user, text=redact(escape(text)))
    except SlackApiError as exc:
        # The action itself already happened or was refused and audited; only the courtesy note is lost.
        log.warning("could not tell %s in %s: %s", user, channel, exc.response.get("error"))
