"""`/rollback` — parsed and answered here, carried out by bot.incidents.service and bot.incidents.oncall.

Bad input (unknown subcommand or service, extra words, odd characters, a missing value) is answered in the
ack, ephemerally, and nothing runs. Everything else is acked at once and answered ephemerally after. Over HTTP
handlers.slack_http has already acked with an empty 200 and posts the text given to ack() to the response_url;
in Socket Mode the ack itself carries it (handlers.slack_http says why every listener keeps its ack()).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from slack_bolt import Ack, App

from bot.incidents.oncall import OnCall
from bot.incidents.replies import Reply
from bot.incidents.service import IncidentService
from bot.slack import wording
from bot.slack.blocks import escape, inert
from bot.slack.slack_out import SlackOut
from handlers.reply import tell

log = logging.getLogger(__name__)

SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_ECHO = 60
MAX_REASON = 300

HELP = (
    "*/rollback* — roll back a model service that breaks its SLOs\n"
    "• `/rollback <service>` — post a rollback request with *Roll back*, *Dry run* and *Dismiss* buttons into "
    "the service's channel; an approver confirms it there. e.g. `/rollback model-svc`\n"
    "• `/rollback <service> --dry-run` — post the plan only; nothing changes\n"
    "• `/rollback <service> --to <version|revision>` — roll back to that baseline instead of the policy's, "
    "e.g. `/rollback model-svc --to 3`\n"
    "• `/rollback status [service]` — open incidents, frozen services, current champion and baseline\n"
    "• `/rollback history <service>` — the last incidents: trigger, approver, time to recover, outcome\n"
    "• `/rollback freeze <service> [reason]` — stop auto-promotion (approvers only)\n"
    "• `/rollback unfreeze <service> [--unblock <version>]` — allow auto-promotion again; `--unblock` also "
    "lifts rollback_blocked from that version (approvers only)\n"
    "• `/rollback freeze --all [reason]` / `/rollback unfreeze --all` — stop / allow auto-promotion of every "
    "service at once (the policy's admins only)\n"
    "• `/rollback policy <service>` — trigger, action and verification in three lines\n"
    "• `/rollback readiness <service>` — the way back checked now: baseline, dry run, SLO data and kinds, "
    "approvers, recover target\n"
    "• `/rollback drill <service>` — dry-run the whole rollback plan now (and a staging drill if the policy has "
    "one) and post the result (approvers only)\n"
    "• `/rollback report [service] [--days N]` — incidents, median and worst time to recover, share within "
    "target, last drill (default 30 days)\n"
    "• `/rollback postmortem <incident-id>` — draft the incident's postmortem again from its timeline and upload "
    "it into its thread, e.g. `/rollback postmortem 12`\n"
    "• `/rollback help` — this message\n"
    "Known services: {known}"
)

SUBCOMMANDS = ("help", "status", "history", "freeze", "unfreeze", "policy", "readiness", "drill", "report",
               "postmortem")
MAX_DAYS = 366
INCIDENT_ID = re.compile(r"^#?([0-9]{1,9})$")  # 9 digits: within every database's integer


@dataclass(frozen=True)
class Command:
    verb: str  # help | status | history | freeze | unfreeze | freeze_all | unfreeze_all | policy | readiness
    #            | drill | report | postmortem | rollback
    service: str | None = None
    reason: str = ""
    version: str | None = None
    dry_run: bool = False
    days: int = 30
    incident: int | None = None  # postmortem: the incident's number


class BadCommand(ValueError):
    """The text is not a command; the message says why, for the person who typed it."""


def _echo(text: str) -> str:
    """What the person typed, shown back inert (a `<!channel>` in it mentions nobody) and short."""
    shown = text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "…"
    return inert(shown.replace("`", "'"))


def _service(word: str) -> str:
    if not SERVICE_NAME.match(word):
        raise BadCommand(f"`{_echo(word)}` is not a service name (lowercase letters, digits, `-`, `_`, `.`).")
    return word


def _version(words: list[str], flag: str) -> str:
    if not words:
        raise BadCommand(f"`{flag}` needs a version or revision after it.")
    value = words.pop(0)
    if not VERSION.match(value):
        raise BadCommand(f"`{_echo(value)}` is not a version or revision.")
    return value


def parse(text: str) -> Command:
    words = text.split()
    if not words or words[0].lower() == "help":
        if len(words) > 1:
            raise BadCommand("`/rollback help` takes nothing after it.")
        return Command("help")
    verb = words.pop(0).lower()
    if verb == "status":
        if len(words) > 1:
            raise BadCommand(f"`/rollback status` takes at most one service; got `{_echo(' '.join(words))}`.")
        return Command("status", _service(words[0]) if words else None)
    if verb == "report":
        return _report(words)
    if verb == "postmortem":
        return _postmortem(words)
    if verb in ("freeze", "unfreeze") and words and words[0] == "--all":
        words.pop(0)
        if verb == "unfreeze":
            if words:
                raise BadCommand(f"`/rollback unfreeze --all` takes nothing after it; got `{_echo(' '.join(words))}`.")
            return Command("unfreeze_all")
        return Command("freeze_all", reason=_reason(words))
    if verb in ("history", "policy", "freeze", "unfreeze", "readiness", "drill"):
        if not words:
            raise BadCommand(f"`/rollback {verb}` needs a service: `/rollback {verb} <service>`.")
        service = _service(words.pop(0))
        if verb == "freeze":
            return Command("freeze", service, reason=_reason(words))
        if verb == "unfreeze":
            version = None
            if words and words[0] == "--unblock":
                words.pop(0)
                version = _version(words, "--unblock")
            if words:
                raise BadCommand(f"`/rollback unfreeze <service> [--unblock <version>]`; did not expect "
                                 f"`{_echo(' '.join(words))}`.")
            return Command("unfreeze", service, version=version)
        if words:
            raise BadCommand(f"`/rollback {verb}` takes one service; did not expect `{_echo(' '.join(words))}`.")
        return Command(verb, service)
    service = _service(verb)
    dry_run, version = False, None
    while words:
        flag = words.pop(0)
        if flag == "--dry-run" and not dry_run:
            dry_run = True
        elif flag == "--to" and version is None:
            version = _version(words, "--to")
        else:
            raise BadCommand(f"`/rollback <service> [--dry-run] [--to <version>]`; did not expect `{_echo(flag)}`.")
    return Command("rollback", service, version=version, dry_run=dry_run)


def _reason(words: list[str]) -> str:
    reason = " ".join(words)
    if len(reason) > MAX_REASON:
        raise BadCommand(f"The reason is {len(reason)} characters; keep it under {MAX_REASON}.")
    return reason


def _report(words: list[str]) -> Command:
    """`report [service] [--days N]`, in either order."""
    service, days = None, 30
    usage = "`/rollback report [service] [--days N]`"
    while words:
        word = words.pop(0)
        if word == "--days":
            value = words.pop(0) if words else ""
            if not value.isdigit() or not 1 <= int(value) <= MAX_DAYS:
                raise BadCommand(f"`--days` needs a whole number of days from 1 to {MAX_DAYS}; got "
                                 f"`{_echo(value) or 'nothing'}`.")
            days = int(value)
        elif service is None and not word.startswith("-"):
            service = _service(word)
        else:
            raise BadCommand(f"{usage}; did not expect `{_echo(word)}`.")
    return Command("report", service, days=days)


def _postmortem(words: list[str]) -> Command:
    """`postmortem <incident-id>`: a number, `#12` accepted as typed in the thread."""
    if len(words) != 1:
        got = f"; got `{_echo(' '.join(words))}`" if words else ""
        raise BadCommand(f"`/rollback postmortem <incident-id>` takes one incident number, e.g. "
                         f"`/rollback postmortem 12`{got}.")
    found = INCIDENT_ID.match(words[0])
    if not found:
        raise BadCommand(f"`{_echo(words[0])}` is not an incident number; e.g. `/rollback postmortem 12`.")
    return Command("postmortem", incident=int(found.group(1)))


def run(incidents: IncidentService, oncall: OnCall, command: Command, user: str, channel: str) -> Reply:
    """Carry out a parsed command whose service (if any) is known."""
    service = command.service or ""
    if command.verb == "status":
        return oncall.status(command.service)
    if command.verb == "history":
        return oncall.history(service)
    if command.verb == "policy":
        return oncall.policy_summary(service)
    if command.verb == "freeze":
        return oncall.freeze(service, user, command.reason)
    if command.verb == "unfreeze":
        return oncall.unfreeze(service, user, command.version)
    if command.verb == "freeze_all":
        return oncall.freeze_all(user, command.reason)
    if command.verb == "unfreeze_all":
        return oncall.unfreeze_all(user)
    if command.verb == "readiness":
        return oncall.readiness(service)
    if command.verb == "drill":
        return oncall.drill(service, user)
    if command.verb == "report":
        return oncall.report(command.service, command.days)
    if command.verb == "postmortem":
        assert command.incident is not None, "parse() gives every postmortem command its incident"
        return oncall.postmortem(command.incident, user)
    if command.dry_run:
        return incidents.plan_preview(service, user, to=command.version)
    return incidents.request_rollback(service, user, channel, to=command.version)


def register(app: App, incidents: IncidentService, oncall: OnCall, slack: SlackOut) -> None:
    @app.command("/rollback")
    def rollback(ack: Ack, command: dict[str, Any]) -> None:
        try:
            parsed = parse(command.get("text", ""))
        except BadCommand as exc:
            known = wording.known_services(incidents.policy.services)
            ack(text=escape(f"{exc}\nKnown services: {known}. Try `/rollback help`."))
            return
        if parsed.verb == "help":
            ack(text=escape(HELP.format(known=wording.known_services(incidents.policy.services))))
            return
        if parsed.service is not None and incidents.service(parsed.service) is None:
            ack(text=escape(wording.unknown_service(parsed.service, incidents.policy.services)))
            return
        opening = parsed.verb == "rollback" and not parsed.dry_run
        ack(text=f"Opening a rollback request for *{parsed.service}*…" if opening else "")
        try:
            reply = run(incidents, oncall, parsed, command["user_id"], command["channel_id"])
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the person who typed it gets an answer
            log.exception("/rollback %s failed", parsed.verb)
            reply = Reply(False, f"`/rollback {parsed.verb}` failed: {inert(type(exc).__name__)}: {inert(str(exc))}. "
                                 "Nothing was changed.")
        tell(slack, command.get("channel_id"), command["user_id"], reply.text)
