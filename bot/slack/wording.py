"""What the bot says about incidents, in Slack mrkdwn: thread lines, channel notes and the replies people get.

Called by bot.incidents (the state machine decides what happened; this says it). Text from outside (SLO names,
alert names, error messages, values) goes through blocks.inert, so nothing it holds becomes a mention or a link.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Iterable, Sequence
from urllib.parse import quote

from bot.infra.plans import PlannedStep
from bot.infra.store import Incident, RecordedBaseline
from bot.slack.blocks import clock, inert, mention, plan_text, value_text
from bot.slo.compare import WORSE, Comparison
from bot.slo.durations import format_duration, format_span
from bot.slo.evaluation import Reading
from bot.slo.policy import Service

# -- opening -------------------------------------------------------------------------------------------------


def detected(reading: Reading) -> str:
    return (f"Detected: {inert(reading.slo)} = {inert(value_text(reading))} (target {inert(reading.target)}), "
            f"breaching since {clock(reading.breach_since)}")


def requested(user: str | None, *, first_approval: bool, two_person: bool) -> str:
    line = f"Rollback requested by {mention(user or '?')}"
    if first_approval:
        return line + "; that counts as the first approval (two-person rule): a second approver runs it"
    if two_person:
        return line + "; two approvers must confirm it (two-person rule)"
    return line


# -- escalation ----------------------------------------------------------------------------------------------


def escalated(approvers: str, after: float, *, paging: bool, configured: bool) -> str:
    """Nobody acted on the warning for `escalate.after`: the approvers again, and whether PagerDuty is paged."""
    page = (" Paging the on-call through PagerDuty." if paging else
            "" if configured else " PagerDuty is not configured (PAGERDUTY_ROUTING_KEY), so nobody is paged.")
    return (f":rotating_light: No approver has acted on this warning for {format_duration(after)}. {approvers} please "
            f"look: *Roll back*, *Dry run* or *Dismiss* above.{page}")


def paged(dedup_key: str) -> str:
    return f"Paged PagerDuty (dedup key `{inert(dedup_key)}`); an approver's action acknowledges it."


def page_followed(action: str) -> str:
    return {"acknowledge": "PagerDuty alert acknowledged: an approver acted.",
            "resolve": "PagerDuty alert resolved."}.get(action, f"PagerDuty {action} sent.")


def page_failed(action: str, message: str) -> str:
    return (f":warning: PagerDuty did not take the {action}: {inert(message[:300])}. The rollback goes on without "
            f"it; page the on-call another way if nobody is here.")


def page_summary(incident: Incident, value: object) -> str:
    """The PagerDuty event's summary (plain text: PagerDuty shows it as is)."""
    shown = f" is {value}" if value is not None else ""
    what = f"{incident.trigger}{shown}" if incident.trigger != "manual" else "a rollback was requested"
    return (f"{incident.service}: {what} - rollback incident #{incident.id} waits for an approver in Slack "
            f"({incident.channel})")


def promoted_by_gate(at: float) -> str:
    """The MLflow layer's "what changed": the bot's own promotion record."""
    return f"promoted by rollback-bot's gate {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(at))}"


def auto_armed(at: float, grace: float) -> str:
    return (f":robot_face: Automatic rollback at {clock(at)} (in {format_duration(grace)}) unless an approver "
            "presses *Stop*")


# Up to this many services are named in a help text or an unknown-service answer; a larger policy gets the closest
# names to what was typed (or the first ones) and a count, which keeps the answer within what Slack shows.
KNOWN_LISTED = 30


def known_services(names: Iterable[str], near: str | None = None) -> str:
    ordered = sorted(names)
    if len(ordered) <= KNOWN_LISTED:
        return ", ".join(f"`{n}`" for n in ordered)
    shown = difflib.get_close_matches(near, ordered, n=10, cutoff=0.5) if near else []
    what = "closest" if shown else "first"
    shown = shown or ordered[:10]
    return (f"{len(ordered):,} services; {what}: {', '.join(f'`{n}`' for n in shown)} "
            "(`/rollback status` shows those with an incident or a freeze)")


def unknown_service(service: str, known: Iterable[str]) -> str:
    """Escaped by whoever shows it (a command's answer, an ephemeral reply), like every Reply text."""
    return f"Unknown service `{service}`. Known services: {known_services(known, near=service)}"


def already_open(service: str, incident_id: int, status: str, channel: str | None) -> str:
    return f"*{service}* already has incident #{incident_id} open ({status}) in <#{channel}>."


def request_posted(service: str, incident_id: int, *, here: bool, channel: str) -> str:
    where = "here" if here else f"in <#{channel}> (the service's channel)"
    return (f"Rollback request for *{service}* posted {where} as incident #{incident_id}: an approver confirms it "
            "with the *Roll back* button.")


def promoted(svc: Service, version: str | None, previous: str | None, comparisons: Sequence[Comparison] = (),
             baselines: Sequence[RecordedBaseline] = ()) -> str:
    """The gate's promotion, with the comparison that let it through and the baselines it recorded."""
    if not svc.promote:
        return ""
    text = (f":rocket: `{svc.model}` version {version} promoted to @{svc.promote.to} for *{svc.name}* (SLOs healthy; "
            f"previous @{svc.promote.to} version {previous} kept as @{svc.promote.previous})")
    if comparisons:
        text += (f"\nCompared with v{inert(previous or '?')} over the last {format_duration(svc.promote.healthy_for)} "
                 f"(Mann-Whitney U, one-sided):" + "".join(f"\n• {inert(c.words())}" for c in comparisons))
    if baselines:
        text += (f"\nBaselines recorded from v{inert(baselines[0].version)} over the last "
                 f"{format_duration(baselines[0].window_seconds)}: "
                 + ", ".join(f"{inert(b.slo)} {b.value:.4g} ({b.samples} samples)" for b in baselines))
    return text


def held_by_comparison(svc: Service, version: str | None, comparisons: Sequence[Comparison]) -> str:
    """The gate holding back a candidate on promote.compare's verdict (said once per candidate and verdict)."""
    if not svc.promote:
        return ""
    worse = any(c.verdict == WORSE for c in comparisons)
    champion = inert(comparisons[0].champion) if comparisons else "?"
    window = format_duration(svc.promote.healthy_for)
    head = (f":no_entry: Not promoting `{svc.model}` version {inert(version or '?')} for *{svc.name}*: significantly "
            f"worse than @{svc.promote.to} v{champion} over the last {window}" if worse else
            f":hourglass_flowing_sand: Not promoting `{svc.model}` version {inert(version or '?')} for *{svc.name}* "
            f"yet: no verdict against @{svc.promote.to} v{champion} over the last {window}")
    tail = ("It stays @" + svc.promote.from_ + "; promote it by hand only if you know better." if worse else
            "It is compared again as samples arrive.")
    return (f"{head} (Mann-Whitney U, one-sided):" + "".join(f"\n• {inert(c.words())}" for c in comparisons)
            + f"\n{tail}")


def held_by_window(svc: Service, version: str | None, reason: str, end: float) -> str:
    """The gate holding back a ready candidate because of a freeze window (said once per candidate and window)."""
    until = time.strftime("%a %Y-%m-%d %H:%M", time.gmtime(end))
    return (f":snowflake: Not promoting `{svc.model}` version {inert(version or '?')} for *{svc.name}*: freeze window "
            f"({inert(reason)}) until {until} UTC. It is promoted after the window if it is still healthy.")


# -- Alertmanager -------------------------------------------------------------------------------------------


def alert_firing(name: str, since: float, value: float | None, summary: str, source_url: str) -> str:
    shown = f" (value {value:.4g})" if value is not None else ""
    link = f" <{_link_target(source_url)}|source>" if source_url.startswith(("http://", "https://")) else ""
    return (f"Alertmanager: {inert(name)} firing since {clock(since)}{shown}" + (f": {inert(summary)}" if summary else "")
            + link)


def _link_target(url: str) -> str:
    """A URL from outside as the target of a link the bot writes: the characters that would end the link or
    start its label (< > | and spaces) are percent-encoded, so the label stays the bot's own."""
    return quote(url, safe=":/?#[]@!$&'()*+,;=%-._~")


def opened_from(line: str) -> str:
    return f"Opened from {line}"


def alert_resolved(name: str, at: float) -> str:
    return f"Alertmanager: {inert(name)} resolved at {clock(at)}"


# -- --to <version> ------------------------------------------------------------------------------------------


def no_targetable_step(svc: Service, targetable: Sequence[str]) -> str:
    return (f"`--to` needs a step that can go to a named version ({', '.join(targetable)}); *{svc.name}* has "
            f"{', '.join(s.executor for s in svc.rollback)}.")


def step_name(position: int, executor: str) -> str:
    return f"step {position + 1} `{executor}`"


def wrong_kind(to: str, step: str, service: str, accepts: str) -> str:
    return f"`--to {inert(to)}` does not fit {step} of *{service}*: it accepts {accepts}."


def cannot_go_to(service: str, to: str, step: str, error: str) -> str:
    return f"Cannot roll *{service}* back to `{inert(to)}` ({step}): {inert(error)}"


def already_there(service: str, to: str, step: str) -> str:
    return (f"Cannot roll *{service}* back to `{inert(to)}` ({step}): that is what it runs now, the version being "
            "rolled back from.")


# -- dry runs ------------------------------------------------------------------------------------------------


def service_dry_run(service: str, user: str, steps: Sequence[PlannedStep]) -> str:
    return plan_text(f"Dry run of `/rollback {service}` by {mention(user)} — nothing was changed. The plan:", steps)


def incident_dry_run(user: str, steps: Sequence[PlannedStep]) -> str:
    return plan_text(f"Dry run requested by {mention(user)} — nothing was changed. The plan:", steps)


def plan_posted(service: str, channel: str) -> str:
    return f"Plan for *{service}* posted in <#{channel}>; nothing was changed."


DRY_RUN_POSTED = "Dry run posted in the incident thread."

# -- decisions -----------------------------------------------------------------------------------------------


def no_incident(incident_id: int) -> str:
    return f"Incident #{incident_id} does not exist."


def not_in_policy(service: str) -> str:
    return f"Service `{inert(service)}` is no longer in the policy."


def refused(action: str, reason: str, approvers: Sequence[str]) -> str:
    what = "Not rolled back" if action == "approve" else f"Not done ({action})"
    return f"{what}: {reason}. Ask one of: {', '.join(mention(a) for a in approvers)}."


def second_approver_needed(approvers: str) -> str:
    return ("Not rolled back: two-person rule — you gave the first approval, so another approver must confirm it "
            f"({approvers}).")


def first_approval(user: str, approvers: str) -> str:
    return f"Approved by {mention(user)} — waiting for a second approver (two-person rule): {approvers}"


FIRST_APPROVAL_REPLY = "Approved. Two-person rule: a second approver must confirm it."


def approved(user: str, first: str | None) -> str:
    second = f" (second approval; first by {mention(first)})" if first else ""
    return f"Approved by {mention(user)}{second}; running the plan"


def rolling_back(service: str, incident_id: int) -> str:
    return f"Rolling back *{service}* (incident #{incident_id})."


def past_approval(incident_id: int, status: str) -> str:
    return f"Incident #{incident_id} is already past approval: {status}"


def incident_status(incident_id: int, status: str) -> str:
    return f"Incident #{incident_id}: {status}"


AUTO_APPROVED = "Grace period over with no *Stop*: rolling back automatically"


def dismissed(user: str) -> str:
    return f"Dismissed by {mention(user)}; nothing was changed"


def dismissed_reply(incident_id: int) -> str:
    return f"Dismissed incident #{incident_id}."


def cannot_dismiss(incident_id: int, status: str) -> str:
    return f"Incident #{incident_id} can no longer be dismissed: {status}"


def auto_stopped(user: str) -> str:
    return f"Automatic rollback stopped by {mention(user)}; an approver decides with the buttons"


AUTO_STOPPED_REPLY = "Automatic rollback stopped; nothing was changed."


def no_auto_to_stop(incident_id: int) -> str:
    return f"Incident #{incident_id} has no automatic rollback to stop."


def nothing_to(what: str, incident_id: int, status: str) -> str:
    return f"Incident #{incident_id}: {status} — nothing to {what}."


def stopped(user: str, error: str | None) -> str:
    return f"Stopped by {mention(user)} with the plan incomplete: {inert(error or 'unknown error')}"


def stopped_reply(incident_id: int) -> str:
    return f"Stopped incident #{incident_id}."


def retried(verb: str, position: int, user: str) -> str:
    return f"{verb} from step {position} by {mention(user)}"


def retried_reply(verb: str, incident_id: int, position: int) -> str:
    return f"{verb} incident #{incident_id} from step {position}."


# -- plan runs -----------------------------------------------------------------------------------------------


def run_failed(failed: str | None, error: str | None, done: Sequence[str], not_run: Sequence[str],
               approvers: str) -> str:
    return (f":x: Rollback stopped at {failed}: {inert(error or '')}. Done: {', '.join(done) or 'none'}. Not run: "
            f"{', '.join(not_run) or 'none'}. *Retry step* runs it again and goes on; *Stop* ends the incident as "
            f"failed. {approvers}")


def halted(before_step: int, error: str, approvers: str) -> str:
    return (f":x: Rollback halted before step {before_step}: {inert(error)}. *Retry step* runs the plan on from "
            f"there; *Stop* ends the incident as failed. {approvers}")


def executed(took: float, svc: Service) -> str:
    v = svc.verify
    return (f"Plan executed in {format_duration(took)}; verifying the SLOs (every {format_duration(v.every)}, "
            f"stable for {format_duration(v.stable_for)}, within {format_duration(v.within)})")


def step_started(label: str, summary: str) -> str:
    return f"Started {label}: {inert(summary)}"


def step_failed(label: str, took: float, error: str) -> str:
    return f"Failed {label} after {format_duration(took)}: {inert(error)}"


def step_done(label: str, took: float, summary: str) -> str:
    return f"Done {label} in {format_duration(took)}: {inert(summary)}"


# -- verification --------------------------------------------------------------------------------------------


def _values(readings: Sequence[Reading]) -> str:
    return ", ".join(f"{r.slo} {value_text(r)} (target {r.target})" for r in readings)


def stable(readings: Sequence[Reading], holding: float) -> str:
    return f"All SLOs within target: {_values(readings)}; holding for {format_duration(holding)}"


def unstable(readings: Sequence[Reading]) -> str:
    return "SLOs left target again: " + _values(readings)


def recovered(stable_for: float, readings: Sequence[Reading]) -> str:
    return f"Recovered: every SLO within target for {format_duration(stable_for)} ({_values(readings)})"


def verify_failed(stable_for: float, within: float, readings: Sequence[Reading], approvers: str) -> str:
    return (f"Verification failed: the SLOs were not within target for {format_duration(stable_for)} within "
            f"{format_duration(within)} ({_values(readings)}). {approvers} please take a look.")


def in_progress_freeze(incident_id: int) -> str:
    return f"rollback incident #{incident_id} in progress"


# -- restart pick-up -----------------------------------------------------------------------------------------

VERIFICATION_CONTINUES = "Bot restarted: verification continues"
CLOSING_NOW = "Bot restarted before this incident was closed: closing it now"


def interrupted(done: Sequence[str], running: tuple[int, str] | None, not_done: Sequence[str], resume_from: int,
                approvers: str) -> str:
    was_running = (f" Step {running[0] + 1} (`{running[1]}`) was running when it stopped: its effect is unknown, "
                   "so Resume plans it again from what is there now." if running else "")
    return (f":warning: The bot restarted in the middle of the plan. Done: {', '.join(done) or 'none'}.{was_running} "
            f"Not done: {', '.join(not_done) or 'none'}. Nothing was re-run: an approver chooses *Resume* (from step "
            f"{resume_from + 1}) or *Stop*. {approvers}")



# -- the close -----------------------------------------------------------------------------------------------
YES, NO, UNKNOWN = ":white_check_mark:", ":x:", ":grey_question:"


def frozen(model: str, blocked: str | None, problems: Sequence[str]) -> str:
    line = "Auto-promotion disabled for this service (frozen)"
    if blocked:
        line += f"; `{model}` version {blocked} tagged rollback_blocked=true"
    if problems:
        line += f" — but tagging failed: {'; '.join(problems)}"
    return line


def freeze_notes(notes: Sequence[str]) -> str:
    """One line each: the notes are whole sentences (with their own periods and semicolons), so joining them
    with "; " read as ".; " in the thread."""
    return "".join(f"\n• {note}" for note in dict.fromkeys(notes))


def slos_line(recovered: bool, why: str) -> str:
    return (f"{YES} SLOs back in target (held for the verification's stable_for)" if recovered
            else f"{NO} SLOs back in target: not confirmed ({why})")


def traffic_line(status: str, weight: float | None) -> str:
    if status == "done" and weight == 0:
        return f"{YES} Traffic to the bad version: 0% (stable ReplicaSet holds 100%)"
    if status == "done" and weight is None:
        return f"{UNKNOWN} Traffic to the bad version: the Rollout step did not report the canary weight"
    return f"{NO} Traffic to the bad version: {weight if weight is not None else 'unknown'}% (Rollout step {status})"


def backlog_line(value: float | None, limit: float, problem: str | None) -> str:
    if problem:
        return f"{UNKNOWN} Backlog drained: {problem}"
    assert value is not None
    mark = YES if value <= limit else NO
    return f"{mark} Backlog drained: {value:.4g} queued (at most {limit:g} expected)"


def promotion_line(frozen_reason: str | None) -> str:
    return (f"{YES} Auto-promotion disabled (frozen: {frozen_reason})" if frozen_reason is not None
            else f"{NO} Auto-promotion is NOT disabled")


NOTES_LINE = ":memo: Incident notes: reply in this thread (what changed, why it broke, follow-ups)"


def checklist(lines: Sequence[str | None]) -> str:
    return "*Post-rollback checklist*\n" + "\n".join(line for line in lines if line)


def summary(incident: Incident, target: float | None) -> str:
    """The close's last line: the times to detect, approve, execute and recover, and the verdict against the
    service's recover target (`targets.recover`, seconds; None: no target, no verdict)."""
    outcome = {"recovered": "Recovered", "verify_failed": "Not recovered", "failed": "Rollback failed"}
    i = incident
    stable = i.alert_to_stable
    verdict = target_verdict(i, target)
    return (f"*Summary — {outcome.get(i.state, i.state)}* · time to detect {format_span(i.breach_started_at, i.warned_at)}"
            f" · to approve {format_span(i.warned_at, i.approved_at)} · to execute "
            f"{format_span(i.approved_at, i.executed_at)} · to recover {format_span(i.executed_at, i.recovered_at)} · "
            f"alert to stable {format_duration(stable) if stable is not None else '—'}"
            + (f" · {verdict}" if verdict else ""))


def target_verdict(incident: Incident, target: float | None) -> str | None:
    """ "within the 5m target", "over the 5m target by 1m12s", "not recovered: over the 5m target"; None without
    a target."""
    if target is None:
        return None
    named = f"the {format_duration(target)} target"
    stable = incident.alert_to_stable
    if stable is None:
        return f"not recovered: over {named}"
    if stable <= target:
        return f"within {named}"
    return f"over {named} by {format_duration(stable - target)}"
