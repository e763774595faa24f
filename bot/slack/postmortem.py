"""The postmortem draft of an incident as a Markdown file: summary, impact window, times, SLO values before /
worst / after, the timeline, each step's change, the post-rollback checklist and empty "Root cause" and
"Follow-ups" sections for the team to fill in.

Called by bot.incidents.postmortem, which gathers the facts (the store, Prometheus) into `Facts` and uploads what
`render` returns. The file is not a Slack message: the timeline's texts are Slack mrkdwn (mentions, channel links,
&lt; &gt; &amp;), so `from_mrkdwn` turns them back into plain text (`<@U123>` reads `@U123`), and whatever came from
outside is neutralised where it would break the layout (a newline or `|` in a table cell, a line that would start
a heading, a list or a fence, an HTML tag that would hide the rest of the file). The times to detect, approve,
execute and recover are bot.slack.wording's `summary`, the same line the close posts in the thread.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bot.infra.store import Event, Incident
from bot.slack import wording
from bot.slack.blocks import status_line, trigger_text
from bot.slo.durations import format_duration

SUMMARY_SEPARATOR = " · "  # between the parts of wording.summary


@dataclass(frozen=True)
class SloValues:
    """One SLO's row: its healthy side, and the values before the breach, the worst during it and the last one;
    `note` says why a value is missing (the query failed, no data, a burn-rate SLO) or how it was read."""

    name: str
    healthy: str
    before: float | None = None
    worst: float | None = None
    after: float | None = None
    note: str = ""


@dataclass(frozen=True)
class StepFacts:
    """One run of one plan step, from the steps table and its stored outcome."""

    position: int
    executor: str
    status: str
    started_at: float
    finished_at: float | None
    summary: str | None
    changes: tuple[str, ...]
    error: str | None


@dataclass(frozen=True)
class Facts:
    """Everything the draft says, read once. `slos` is empty with `slo_problem` set when the SLOs could not be
    read at all (the service left the policy); `window` is the SLO range queries' [start, end]."""

    incident: Incident
    model: str | None
    target: float | None  # the service's recover target (targets.recover), seconds
    events: tuple[Event, ...]
    steps: tuple[StepFacts, ...]
    slos: tuple[SloValues, ...]
    window: tuple[float, float]
    generated_at: float
    slo_problem: str | None = None


def filename(incident_id: int) -> str:
    return f"postmortem-incident-{incident_id}.md"


def title(service: str, incident_id: int) -> str:
    return f"Postmortem draft: {service} incident #{incident_id}"


def impact_window(incident: Incident, now: float) -> tuple[float, str, float, str]:
    """(start, what started, end, what ended): the breach (else the warning) until recovery, else the close,
    else now for an incident still open."""
    if incident.breach_started_at is not None:
        start, started = incident.breach_started_at, "Breach started"
    else:
        start, started = incident.alerted_at, "Alerted (no breach start known)"
    if incident.recovered_at is not None:
        return start, started, incident.recovered_at, "Recovered"
    if incident.finished_at is not None:
        return start, started, incident.finished_at, f"Closed ({incident.state})"
    return start, started, now, "Still open at"


# -- Slack mrkdwn back to text, and Markdown made safe ---------------------------------------------------------

_SLACK_MARKUP = re.compile(r"<([@#!]?)([^<>|]*)(?:\|([^<>]*))?>")
_ENTITY = re.compile(r"&(lt|gt|amp);")
_ENTITIES = {"lt": "<", "gt": ">", "amp": "&"}
_TAG_START = re.compile(r"[A-Za-z/!?]")  # after `<`, what an HTML parser would read as a tag or a comment
_BLOCK_START = re.compile(r"^(\s*)(#{1,6}(?=\s|$)|>|[-+*](?=\s|$)|=+\s*$|-{3,}\s*$|\|)")
_ORDERED = re.compile(r"^(\s*\d{1,9})([.)])(?=\s|$)")
_FENCE = re.compile(r"^\s*(`{3,}[^`]*|~{3,}.*)$")


def _markup(match: re.Match[str]) -> str:
    sigil, target, label = match.group(1), match.group(2), match.group(3)
    if sigil == "@":
        return f"@{label.lstrip('@')}" if label else f"@{target}"
    if sigil == "#":
        return f"#{label}" if label else f"#{target}"
    if sigil == "!":
        if target.startswith("subteam^"):
            return f"@{label.lstrip('@')}" if label else f"@{target.removeprefix('subteam^')}"
        if label:  # <!date^...|fallback>
            return label
        return f"@{target}"  # <!here>, <!channel>
    if label:
        shown = label.replace("[", "\\[").replace("]", "\\]")
        return f"[{shown}](<{target}>)"
    return f"<{target}>"


def _entity(match: re.Match[str]) -> str:
    if match.group(1) == "lt" and _TAG_START.match(match.string, match.end()):
        return match.group()  # `<div`, `<!--`: kept as an entity, so it cannot become HTML that hides the file
    return _ENTITIES[match.group(1)]


def from_mrkdwn(text: str) -> str:
    """A timeline text (Slack mrkdwn) as plain text: `<@U123>` → `@U123`, `<#C1>` → `#C1`, `<!here>` → `@here`,
    `<url|label>` → a Markdown link; then &lt; &gt; &amp; read as < > &, except a `<` that would open an HTML tag."""
    return _ENTITY.sub(_entity, _SLACK_MARKUP.sub(_markup, text))


def plain(text: str) -> str:
    """Raw text from outside (an executor's summary, a Prometheus error): only a would-be HTML tag is defused."""
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)


def _line(text: str) -> str:
    """One line that cannot start a heading, a quote, a list, a rule, a table or a fence."""
    if _FENCE.match(text):
        return "\\" + text.lstrip()
    text = _BLOCK_START.sub(lambda m: f"{m.group(1)}\\{m.group(2)}", text)
    return _ORDERED.sub(lambda m: f"{m.group(1)}\\{m.group(2)}", text)


def one_line(text: str) -> str:
    """Text for one line of the file (a list item's tail): newlines become spaces."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def cell(text: str) -> str:
    """Text for a table cell: one line, `|` escaped."""
    return one_line(text).replace("|", "\\|")


def _item(head: str, text: str) -> str:
    """A list item whose later lines stay inside it (indented, hard line breaks)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [""]
    return "\n".join([f"- {head}{lines[0]}"] + [f"  {_line(line)}" for line in lines[1:]]).replace("\n", "  \n")


def _at(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts is not None else "—"


def _who(entity: str | None) -> str:
    if not entity:
        return "nobody"
    return f"@{entity}" if entity[:1] in "UWS" else entity  # a user or group id; else e.g. the automatic rollback


def _number(value: float | None) -> str:
    return f"{value:.4g}" if value is not None else "—"


# -- the sections --------------------------------------------------------------------------------------------


def _summary(facts: Facts) -> list[str]:
    i = facts.incident
    model = f" (model `{facts.model}`)" if facts.model else ""
    lines = ["## Summary", "",
             f"- **Service:** {i.service}{model}",
             f"- **Trigger:** {one_line(from_mrkdwn(trigger_text(i)))}",
             f"- **Outcome:** {one_line(from_mrkdwn(status_line(i)))} (state `{i.state}`)",
             f"- **Approved by:** {_who(i.approved_by)}"
             + (f" (first approval: {_who(i.first_approver)})" if i.first_approver else "")]
    if i.requested_by:
        lines.append(f"- **Requested by:** {_who(i.requested_by)}")
    if i.channel:
        lines.append(f"- **Thread:** #{i.channel}" + (f", message {i.message_ts}" if i.message_ts else ""))
    return lines


def _impact(facts: Facts) -> list[str]:
    start, started, end, ended = impact_window(facts.incident, facts.generated_at)
    return ["## Impact window", "", f"- **{started}:** {_at(start)}", f"- **{ended}:** {_at(end)}",
            f"- **Duration:** {format_duration(max(0.0, end - start))}"]


def _times(facts: Facts) -> list[str]:
    parts = wording.summary(facts.incident, facts.target).split(SUMMARY_SEPARATOR)[1:]
    lines = ["## Times", ""] + [f"- {one_line(from_mrkdwn(part))}" for part in parts]
    lines.append(f"- recover target: {format_duration(facts.target)}" if facts.target is not None
                 else "- recover target: none set (`targets.recover`)")
    return lines


def _slos(facts: Facts) -> list[str]:
    start, end = facts.window
    lines = ["## SLOs", ""]
    if facts.slo_problem:
        return lines + [cell(plain(facts.slo_problem))]
    lines += [f"From Prometheus over {_at(start)} – {_at(end)} (the breach − 10m to the end + 2m). Before: the last "
              "value before the breach; worst: the worst during the incident; after: the last value.", "",
              "| SLO | healthy | before | worst | after | note |", "|---|---|---|---|---|---|"]
    for slo in facts.slos:
        lines.append(f"| {cell(plain(slo.name))} | {cell(plain(slo.healthy))} | {_number(slo.before)} | "
                     f"{_number(slo.worst)} | {_number(slo.after)} | {cell(plain(slo.note))} |")
    return lines


def _timeline(events: Sequence[Event]) -> list[str]:
    lines = ["## Timeline", ""]
    if not events:
        return lines + ["No events recorded."]
    return lines + [_item(f"`{_at(e.at)}` ", from_mrkdwn(e.text)) for e in events]


def _steps(steps: Sequence[StepFacts]) -> list[str]:
    lines = ["## Steps", ""]
    if not steps:
        return lines + ["No rollback step ran."]
    for step in steps:
        took = (f" ({format_duration(step.finished_at - step.started_at)})"
                if step.finished_at is not None else "")
        lines += [f"### {step.position + 1}. `{step.executor}` — {step.status}", "",
                  f"- started {_at(step.started_at)}, finished {_at(step.finished_at)}{took}"]
        if step.summary:
            lines.append(f"- summary: {one_line(plain(step.summary))}")
        lines += [f"- change: {one_line(plain(change))}" for change in step.changes]
        if step.error:
            lines.append(f"- error: {one_line(plain(step.error))}")
        lines.append("")
    return lines[:-1]


def _checklist(events: Sequence[Event]) -> list[str]:
    lines = ["## Post-rollback checklist", ""]
    found = [e for e in events if e.kind == "checklist"]
    if not found:
        return lines + ["Not written yet: the checklist is written at the close."]
    text = from_mrkdwn(found[-1].text).splitlines()
    body = [line.strip() for line in text[1:] if line.strip()]  # the first line is the heading the thread shows
    return lines + [f"- {_line(line)}" for line in body]


def render(facts: Facts) -> str:
    """The whole draft, Markdown."""
    i = facts.incident
    head = [f"# {title(i.service, i.id)}", "",
            f"_Drafted by rollback-bot at {_at(facts.generated_at)} from the incident's stored timeline; "
            f"`/rollback postmortem {i.id}` drafts it again. Fill in the root cause and the follow-ups._"]
    if i.active:
        head += ["", f"> **Draft of an open incident** (state `{i.state}`): the story is not over yet; "
                     f"run `/rollback postmortem {i.id}` again after the close."]
    sections = [head, _summary(facts), _impact(facts), _times(facts), _slos(facts), _timeline(facts.events),
                _steps(facts.steps), _checklist(facts.events), ["## Root cause", ""], ["## Follow-ups", ""]]
    return "\n\n".join("\n".join(section) for section in sections).rstrip("\n") + "\n"
