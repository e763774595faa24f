"""Block Kit, built in one place from data: warnings, progress, plans, summaries, the typed-confirm modal.

Called by bot.slack.timeline and bot.slack.wording (messages into channels and threads) and by
bot.incidents.service (the typed-confirm modal, which handlers open). Nobody else assembles Slack JSON. Texts are
cut to Slack's limits here, so a long query or error never makes a post fail.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bot.infra.plans import Baseline, PlannedStep
from bot.infra.store import Incident
from bot.slo.durations import format_duration
from bot.slo.evaluation import BREACH, ERROR, NODATA, OK, Reading

APPROVE, DRY_RUN, DISMISS = "rollback_approve", "rollback_dry_run", "rollback_dismiss"
RETRY, STOP = "rollback_retry", "rollback_stop"
CONFIRM_VIEW = "rollback_confirm"
CONFIRM_BLOCK, CONFIRM_INPUT = "confirm_service", "typed_service"

SECTION_LIMIT = 3000
LIVE_LINE_LIMIT = 600  # one "What changed" line, so one long commit subject cannot crowd out the other layers
# How the warning names a rollback layer (executor name -> label); other executors by their name.
LAYER_LABELS = {"mlflow_alias": "MLflow", "helm": "Helm", "git_revert": "git", "argo_rollouts": "Argo Rollouts"}

_STATE_ICON = {OK: ":white_check_mark:", BREACH: ":red_circle:", NODATA: ":grey_question:", ERROR: ":warning:"}


# Slack's own markup, kept as is by `escape`: <@U..>, <#C..>, <!subteam^S..>, <https://..|label>, and entities.
_MARKUP = re.compile(r"<(?:[@#!]|https?://|mailto:)[^<>]*>|&(?:lt|gt|amp);")


def escape(text: str) -> str:
    """Escape &, < and > as Slack requires ("target < 0.25" would otherwise be read as markup), leaving the
    bot's own mentions, channel links and links alone. Escaping twice changes nothing."""
    out, last = [], 0
    for match in _MARKUP.finditer(text):
        out.append(_escape_plain(text[last:match.start()]))
        out.append(match.group())
        last = match.end()
    out.append(_escape_plain(text[last:]))
    return "".join(out)


def inert(text: object) -> str:
    """Text that came from outside (alerts, git, MLflow, helm, Kubernetes, people's free text) made inert:
    every &, < and > escaped, so `<!channel>`, `<@U…>` and `<https://…|label>` in it show as typed instead of
    mentioning or linking. Only mentions the bot writes itself (the approvers it names) stay live."""
    return _escape_plain(str(text))


def _escape_plain(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int = SECTION_LIMIT) -> str:
    """Escaped for Slack and cut to `limit` characters (never inside an entity it made)."""
    text = escape(text)
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&")
    if amp > limit - 7 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


def clock(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts)) + " UTC" if ts else "—"


def mention(entity: str) -> str:
    return f"<!subteam^{entity}>" if entity.startswith("S") else f"<@{entity}>"


def value_text(reading: Reading) -> str:
    if reading.status == NODATA:
        return reading.detail if reading.no_baseline and reading.detail else "no data"
    if reading.status == ERROR:
        return f"query error: {reading.error or 'unknown'}"
    if reading.detail:
        return reading.detail
    return f"{reading.value:.4g}" if reading.value is not None else "firing"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text)}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": clip(text)}]}


def _button(text: str, action_id: str, value: str, style: str | None = None,
            confirm: dict[str, Any] | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {"type": "button", "text": {"type": "plain_text", "text": text[:75]},
                              "action_id": action_id, "value": value[:2000]}
    if style:
        button["style"] = style
    if confirm:
        button["confirm"] = confirm
    return button


def confirm_dialog(service: str, baseline: str) -> dict[str, Any]:
    return {
        "title": {"type": "plain_text", "text": f"Roll back {service}?"[:100]},
        "text": {"type": "mrkdwn", "text": clip(f"This runs the rollback plan for *{service}* now: {baseline}.", 300)},
        "confirm": {"type": "plain_text", "text": "Roll back"},
        "deny": {"type": "plain_text", "text": "Cancel"},
        "style": "danger",
    }


def baseline_text(incident: Incident) -> str:
    base = Baseline.from_dict(incident.baseline)
    if base.error:
        return f"baseline not resolved yet ({inert(base.error)})"
    if base.model:
        run = f", run `{inert(base.model.run_id)}`" if base.model.run_id else ""
        serving = "rolled back from" if incident.state not in ("open", "executing", "halted") else "now serving"
        return (f"`{inert(base.model.model)}` version {inert(base.model.version)}{run} ({serving} version "
                f"{inert(base.bad_version)})")
    return "; ".join(inert(s.plan.summary) for s in base.steps if s.plan) or "the policy's rollback plan"


def trigger_text(incident: Incident) -> str:
    d = incident.detail
    if incident.trigger == "manual":
        return f"rollback requested by {mention(incident.requested_by or '?')}"
    value = d.get("value")
    fallback = "firing" if d.get("status") == "breach" else "no data"
    shown = d.get("words") or (f"{value:.4g}" if isinstance(value, (int, float)) else fallback)
    return f"*{inert(incident.trigger)}* is {inert(shown)}, target {inert(d.get('target', '?'))}"


def status_line(incident: Incident) -> str:
    s = incident.state
    who = mention(incident.approved_by) if incident.approved_by else "someone"
    if s == "open" and incident.auto_at:
        return f":robot_face: Rolling back automatically at {clock(incident.auto_at)} unless an approver presses *Stop*"
    if s == "open" and incident.first_approver:
        return f":hourglass: Approved by {mention(incident.first_approver)} — waiting for a second approver"
    if s == "open" and incident.requested_by:
        return f":hourglass: Requested by {mention(incident.requested_by)} — waiting for an approver"
    if s == "open":
        return ":hourglass: Waiting for an approver"
    if s == "executing":
        return f":arrows_counterclockwise: Rolling back — approved by {who}"
    if s == "verifying":
        return f":mag: Rolled back by {who} — verifying"
    if s == "recovered":
        took = format_duration((incident.recovered_at or 0) - (incident.approved_at or incident.opened_at))
        return f":white_check_mark: Recovered in {took} — rolled back by {who}; auto-promotion frozen"
    if s == "verify_failed":
        return f":x: Rolled back by {who}, but the SLOs did not recover in time — auto-promotion frozen"
    if s == "halted" and incident.halt_kind == "interrupted":
        return (f":warning: Interrupted by a bot restart before step {(incident.resume_from or 0) + 1} — "
                "*Resume* or *Stop*")
    if s == "halted":
        return f":x: Stopped at a failing step: {inert(incident.error or 'unknown error')} — *Retry step* or *Stop*"
    if s == "failed":
        return f":x: Rollback failed: {inert(incident.error or 'unknown error')}"
    if s == "dismissed":
        return f":no_entry_sign: Dismissed by {who}"
    return s


def what_changed(baseline: Baseline, extra: Mapping[str, str] | None = None) -> list[str]:
    """One mrkdwn line per rollback layer that says what is live on it and how it got there: each planned step's
    `live` text, then the caller's `extra` words for that layer (keyed by executor name, e.g. {"mlflow_alias":
    "promoted by the gate at 12:04 UTC"}). Both are made inert (no mention or link in them stays live); each line is
    cut to LIVE_LINE_LIMIT. Steps that say nothing (no plan, no `live`, no extra) get no line."""
    extra = extra or {}
    lines = []
    for step in baseline.steps:
        said = [text for text in (step.plan.live if step.plan else None, extra.get(step.executor)) if text]
        if said:
            label = LAYER_LABELS.get(step.executor, f"`{step.executor}`")
            lines.append(clip(f"• *{label}:* " + " — ".join(inert(text) for text in said), LIVE_LINE_LIMIT))
    return lines


def warning(incident: Incident, *, approvers: Sequence[str], confirm: str,
            changed: Mapping[str, str] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The alert message with its buttons; re-rendered in place as the incident moves on. Under the breach, "What
    changed": the layers' what_changed lines from the stored baseline, with `changed` (layer -> the domain's own
    words, e.g. the gate's promotion record) added to each layer's line."""
    svc = incident.service
    since = incident.breach_started_at
    held = f" (for {format_duration(time.time() - since)})" if since and incident.state == "open" else ""
    text = f":rotating_light: {svc}: {trigger_text(incident)}"
    blocks: list[dict[str, Any]] = [
        _section(f":rotating_light: *{svc}* — {trigger_text(incident)}"),
    ]
    lines = what_changed(Baseline.from_dict(incident.baseline), changed)
    if lines:
        blocks.append(_section("*What changed* (as found when the alert fired)\n" + "\n".join(lines)))
    blocks += [
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": clip(f"*Since*\n{clock(since or incident.opened_at)}{held}", 2000)},
            {"type": "mrkdwn", "text": clip(f"*Rolls back to*\n{baseline_text(incident)}", 2000)},
        ]},
        _section(status_line(incident)),
    ]
    buttons = _buttons(incident, confirm)
    if buttons:
        blocks.append({"type": "actions", "block_id": f"incident-{incident.id}", "elements": buttons})
    blocks.append(_context(f"Incident #{incident.id} · approvers: {', '.join(mention(a) for a in approvers)}"))
    return text, blocks


def _buttons(incident: Incident, confirm: str) -> list[dict[str, Any]]:
    value = str(incident.id)
    if incident.state == "open":
        dialog = confirm_dialog(incident.service, baseline_text(incident)) if confirm == "dialog" else None
        buttons = [_button("Roll back", APPROVE, value, style="danger", confirm=dialog),
                   _button("Dry run", DRY_RUN, value),
                   _button("Dismiss", DISMISS, value)]
        if incident.auto_at:
            buttons.insert(0, _button("Stop", STOP, value, style="primary"))
        return buttons
    if incident.state == "halted":
        label = "Resume" if incident.halt_kind == "interrupted" else "Retry step"
        return [_button(label, RETRY, value, style="primary"), _button("Stop", STOP, value, style="danger"),
                _button("Dry run", DRY_RUN, value)]
    return []


def step_label(position: int, total: int, executor: str) -> str:
    """`step 2/5 `helm``: how the thread names a plan's step (position counts from 1)."""
    return f"step {position}/{total} `{executor}`"


def step_names(steps: Sequence[Any]) -> list[str]:
    """step_label of each policy step, in order."""
    return [step_label(i, len(steps), s.executor) for i, s in enumerate(steps, 1)]


def progress(readings: Iterable[Reading], *, elapsed: float, stable_for: float, need_stable: float,
             within: float, done: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The single verification message, updated in place each tick."""
    lines = [f"{_STATE_ICON.get(r.status, '')} *{inert(r.slo)}*: {inert(value_text(r))} (target {inert(r.target)})"
             for r in readings]
    head = done or ":mag: Verifying"
    summary = (f"{head} — elapsed {format_duration(elapsed)} of {format_duration(within)}, "
               f"stable for {format_duration(stable_for)} of {format_duration(need_stable)}")
    return summary, [_section(summary), _section("\n".join(lines) or "no SLOs")]


def plan_text(title: str, steps: Sequence[PlannedStep]) -> str:
    """A plan (dry run or preview): each step with exactly what would change and the equivalent command."""
    lines = [title]
    for i, step in enumerate(steps, 1):
        if step.plan is None:
            lines.append(f"{i}. `{step.executor}` — could not plan: {inert(step.error)}")
            continue
        plan = step.plan
        changes = "; ".join(inert(c.describe()) for c in plan.changes)
        noop = " _(already in place: nothing to do)_" if plan.noop else ""
        lines.append(f"{i}. `{step.executor}` — {inert(plan.summary)}{noop}\n      {changes}\n"
                     f"      ```{inert(plan.command)}```")
    return "\n".join(lines)


def event_text(at: float, text: str) -> str:
    return clip(f"`{time.strftime('%H:%M:%S', time.gmtime(at))}` {text}", 3900)


def confirm_modal(*, incident_id: int, service: str, baseline: str) -> dict[str, Any]:
    """`confirm: typed`: the approver types the service name before anything runs."""
    return {
        "type": "modal",
        "callback_id": CONFIRM_VIEW,
        "private_metadata": str(incident_id),
        "title": {"type": "plain_text", "text": "Confirm rollback"},
        "submit": {"type": "plain_text", "text": "Roll back"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            _section(f"This rolls back *{service}*: {baseline}."),
            {"type": "input", "block_id": CONFIRM_BLOCK,
             "label": {"type": "plain_text", "text": f"Type {service} to confirm"[:2000]},
             "element": {"type": "plain_text_input", "action_id": CONFIRM_INPUT}},
        ],
    }
