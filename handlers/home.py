"""The `app_home_opened` event: someone opened the app (its Home tab, or its Messages tab).

Parsed, acked, delegated: the listener acks at once, and a lazy listener (Bolt runs it on its own thread, after
the ack) turns the event into a `HomeOpened` and hands it to bot.incidents.home.Home, which reads the state and
publishes the tab (views.publish). Only the Home tab is published: opening the Messages tab (`tab: "messages"`)
or an event without a user does nothing. Events arrive as JSON (`event_callback`), so handlers.slack_http runs
them through Bolt's own adapter after verifying their signature; Socket Mode dispatches them the same way.

Called by handlers.register_handlers with the Home service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slack_bolt import Ack, App

from bot.incidents.home import Home

EVENT = "app_home_opened"


@dataclass(frozen=True)
class HomeOpened:
    user: str


def parse(event: dict[str, Any]) -> HomeOpened | None:
    """The request when `event` is the Home tab opened by a user, else None (the Messages tab; no user)."""
    user = event.get("user")
    if event.get("tab") != "home" or not isinstance(user, str) or not user:
        return None
    return HomeOpened(user)


def register(app: App, home: Home) -> None:
    def ack_opened(ack: Ack) -> None:
        ack()

    def publish(event: dict[str, Any]) -> None:
        opened = parse(event)
        if opened is not None:
            home.open(opened.user)

    app.event(EVENT)(ack=ack_opened, lazy=[publish])
