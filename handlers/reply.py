"""Ephemeral answers to the person who acted. Used by the listeners after their ack, through bot.slack.slack_out's
SlackOut like every other outbound Slack call (metrics, retry policy, redaction and escaping in one place)."""

from __future__ import annotations

import logging

from bot.slack.slack_out import SlackError, SlackOut

log = logging.getLogger(__name__)


def tell(slack: SlackOut, channel: str | None, user: str, text: str) -> None:
    if not channel:
        return
    try:
        slack.ephemeral(channel, user, text)
    except SlackError as exc:
        # The action itself already happened or was refused and audited; only the courtesy note is lost.
        log.warning("could not tell %s in %s: %s", user, channel, exc)
