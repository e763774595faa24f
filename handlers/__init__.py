"""The inbound adapters. For Slack there is one pipeline, described in full in handlers.slack_http; in short,
the path of a click (Roll back on a warning) from bytes to the domain call:

  waitress (body capped by handlers.bodies) → bot.app's WSGI app → handlers.slack_http.SlackRoute, which
  verifies the signature over the raw bytes (the only check: Bolt is built with
  request_verification_enabled=False; a bad signature is a 401 and reaches nothing), acks the click with an
  empty 200 and queues it → on a worker, Bolt (`App.dispatch`) → handlers.dedupe's middleware claims the
  request's key (a retry or a replay stops here, answered with a plain 200) → the listener in
  handlers.actions, which calls ack() and delegates: `incidents.press_approve(incident_id, user)` → its Reply opens
  the confirm modal or tells the clicker, through bot.slack (SlackOut) like every outbound Slack call.

Slash commands (handlers.commands) take the same path; their answer goes to the response_url. Modal
submissions (handlers.views) are run by SlackRoute on the HTTP thread, after the same verification, because
their ack carries the modal's validation errors. In Socket Mode (SLACK_APP_TOKEN) slack_bolt's
SocketModeHandler dispatches straight into the same Bolt app: no signatures, no SlackRoute, and the
listeners' ack() is the only acknowledgement Slack gets; that, and modal submissions, are why every listener
calls ack() (see handlers.slack_http). handlers.dedupe runs inside Bolt, so it covers both ways in, once.

handlers.alertmanager is the other inbound adapter (POST /alertmanager). Listeners parse and delegate to
bot.incidents.service.IncidentService; none holds policy or assembles Block Kit itself.

handlers.home answers the `app_home_opened` event: it publishes the app's Home tab (bot.incidents.home.Home, built
here from OnCall's reads, the approvers' rule and SlackOut).

Called by bot.app: `register_handlers(app, incidents, oncall, slack, store)` (the dedupe middleware first, then
the listeners). The listeners get the domain's front door (IncidentService), the on-call commands (OnCall) and
SlackOut for their replies; only the dedupe middleware gets the store (to claim request keys).
"""

from __future__ import annotations

from slack_bolt import App

from bot.incidents.home import Home
from bot.incidents.oncall import OnCall
from bot.incidents.service import IncidentService
from bot.infra.store import Store
from bot.slack.slack_out import SlackOut
from handlers import actions, commands, dedupe, home, views


def register_handlers(app: App, incidents: IncidentService, oncall: OnCall, slack: SlackOut, store: Store) -> None:
    dedupe.register(app, store)
    commands.register(app, incidents, oncall, slack)
    actions.register(app, incidents, slack)
    views.register(app, incidents, slack)
    home.register(app, Home(oncall=oncall, is_approver=lambda svc, user: incidents.authz.is_approver(svc, user)[0],
                            publish=slack.publish_home, permalink=slack.permalink))
