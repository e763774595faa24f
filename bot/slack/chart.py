"""The incident chart: one PNG panel per SLO of the service, from a little before the breach to recovery, with
the threshold and vertical markers for breach, approval, execution and recovery.

The window starts at most MAX_LOOKBACK_SECONDS before the incident was opened (an Alertmanager alert may have
started days earlier; a moment before the window is named at the panel's left edge instead of drawn), and the
range queries' step is a whole number of seconds: Prometheus rejects a fractional step with a unit (`826.063s`).

Called by bot.incidents.close when an incident finishes (`post_chart`, which also uploads the PNG into the incident's
thread and never raises). The data comes from Prometheus range queries (bot.infra.prom `query_range`); matplotlib
is imported inside `render` with the Agg backend, so the bot's start-up and idle memory do not pay for it.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from bot.infra.prom import Prometheus, RangeResult
from bot.infra.store import Incident
from bot.slack.slack_out import SlackError, SlackOut
from bot.slo import burn
from bot.slo.durations import format_duration
from bot.slo.policy import Service, Slo

log = logging.getLogger(__name__)

LEAD_SECONDS = 60.0  # shown before the breach at least, so the chart starts from healthy values
MAX_LOOKBACK_SECONDS = 3600.0  # the chart starts no earlier than this before the incident was opened
MAX_POINTS = 300  # per series; the step grows with the incident's length
MARKERS = (("breach", "breach_started_at", "tab:red"), ("approved", "approved_at", "tab:blue"),
           ("executed", "executed_at", "tab:purple"), ("recovered", "recovered_at", "tab:green"))


class ChartError(Exception):
    """The chart cannot be drawn (Prometheus failed, nothing to draw); the message says why."""


def window(incident: Incident, now: float) -> tuple[float, float]:
    """Start and end of the chart: a lead before the breach (or the warning) until recovery or the end, but
    starting no earlier than MAX_LOOKBACK_SECONDS before the incident was opened (a breach or an alert that began
    days earlier would otherwise squeeze the incident itself into a few pixels)."""
    begin = incident.breach_started_at or incident.warned_at or incident.opened_at
    end = incident.recovered_at or incident.finished_at or now
    end = max(end, begin + 1)
    start = max(begin - max(LEAD_SECONDS, 0.2 * (end - begin)), incident.opened_at - MAX_LOOKBACK_SECONDS)
    end = max(end, start + 1)
    return start, end + min(30.0, 0.05 * (end - start) + 5)


def step_seconds(start: float, end: float) -> int:
    """The range queries' step: whole seconds (Prometheus parses `826s` but rejects `826.063s`), at most
    MAX_POINTS points per series."""
    return max(1, math.ceil((end - start) / MAX_POINTS))


def markers(incident: Incident) -> list[tuple[str, float, str]]:
    """(label, time, colour) of the moments the incident went through, in order."""
    found = [(label, getattr(incident, field), colour) for label, field, colour in MARKERS]
    return [(label, at, colour) for label, at, colour in found if at is not None]


@dataclass(frozen=True)
class Panel:
    """One SLO's panel: its lines (name, range result) and the threshold they must stay on one side of."""

    slo: Slo
    threshold: float | None
    lines: tuple[tuple[str, RangeResult], ...]


def queries(slo: Slo) -> tuple[list[tuple[str, str]], float | None]:
    """(line name, PromQL) to draw for an SLO, and its threshold. A burn-rate SLO is drawn as the burn rate
    over both windows of its first pair, against that pair's factor."""
    if slo.burn_rate is not None:
        pair, budget = slo.burn_rate.windows[0], burn.budget(slo.burn_rate)
        return [(f"burn rate over {format_duration(w)}", f"({burn.ratio_query(slo.burn_rate, w)}) / {budget:g}")
                for w in (pair.long, pair.short)], pair.factor
    return [(slo.name, slo.query or "")], slo.above if slo.above is not None else slo.below


def fetch(prom: Prometheus, service: Service, start: float, end: float) -> list[Panel]:
    """Each SLO's history over the window; ChartError naming the SLO when a query fails."""
    step = step_seconds(start, end)
    panels = []
    for slo in service.slos:
        wanted, threshold = queries(slo)
        lines = []
        for name, query in wanted:
            result = prom.query_range(query, start, end, step)
            if result.error is not None:
                raise ChartError(f"Prometheus range query for SLO {slo.name} failed: {result.error}")
            lines.append((name, result))
        panels.append(Panel(slo, threshold, tuple(lines)))
    return panels


def render(prom: Prometheus, incident: Incident, service: Service, *, now: float | None = None,
           dpi: int = 100) -> bytes:
    """The chart as PNG bytes. Raises ChartError when Prometheus cannot give the data."""
    start, end = window(incident, now or time.time())
    data = fetch(prom, service, start, end)

    import matplotlib

    matplotlib.use("Agg")  # no display; the Figure below is drawn by FigureCanvasAgg either way
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure

    def when(ts: float) -> datetime:
        return datetime.fromtimestamp(ts, timezone.utc)

    figure = Figure(figsize=(10, 2.6 * len(data) + 0.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(data), 1, sharex=True, squeeze=False)[:, 0]
    figure.suptitle(f"{service.name} — incident #{incident.id} ({incident.state})", fontsize=12)
    for ax, panel in zip(axes, data, strict=True):
        _draw(ax, panel, when)
        for label, at, colour in markers(incident):
            if at < start:  # before the window (an alert that started long ago): named at the left edge
                ax.annotate(f"{label} {format_duration(start - at)} earlier", xy=(0.0, 0.0),
                            xycoords="axes fraction", xytext=(3, 3), textcoords="offset points", va="bottom",
                            ha="left", fontsize=8, color=colour)
                continue
            ax.axvline(when(at), color=colour, linestyle="--", linewidth=1.2)
            ax.annotate(label, xy=(when(at), 1.0), xycoords=("data", "axes fraction"), rotation=90,
                        va="top", ha="right", fontsize=8, color=colour)
        ax.set_xlim(when(start), when(end))
        ax.grid(True, alpha=0.3)
    axes[-1].xaxis.set_major_formatter(DateFormatter("%H:%M:%S", tz=timezone.utc))
    axes[-1].set_xlabel("time (UTC)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _draw(ax: Any, panel: Panel, when: Callable[[float], datetime]) -> None:
    ax.set_title(f"{panel.slo.name} (healthy {panel.slo.target_text()})", fontsize=10, loc="left")
    drawn = False
    for line, result in panel.lines:
        for series in result.series:
            if series.points:
                labels = ",".join(f"{k}={v}" for k, v in sorted(series.labels.items()))
                ax.plot([when(t) for t, _ in series.points], [v for _, v in series.points], linewidth=1.5,
                        label=(f"{line} {{{labels}}}" if labels else line)[:60])
                drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
    if panel.threshold is not None:
        ax.axhline(panel.threshold, color="black", linestyle=":", linewidth=1.2, label=f"threshold {panel.threshold:g}")
    ax.legend(loc="upper left", fontsize=7)


def post_chart(prom: Prometheus, slack: SlackOut, incident: Incident, service: Service,
               now: float | None = None) -> str | None:
    """Draw the chart and upload it into the incident's thread. None when it was posted, else the reason
    (for the thread's timeline). Never raises: a missing chart must not stop the incident's finish step."""
    if not incident.channel or not incident.message_ts:
        return "no chart: the incident's warning was never posted, so there is no thread for it"
    try:
        png = render(prom, incident, service, now=now)
        slack.upload_file(incident.channel, incident.message_ts, png, f"incident-{incident.id}-slos.png",
                          f"{service.name} SLOs, incident #{incident.id}")
    except (ChartError, SlackError) as exc:
        # Prometheus or Slack failed: the reason goes into the thread instead of the chart.
        log.warning("incident %s: chart not posted: %s", incident.id, exc)
        return f"Chart not posted: {exc}"
    except Exception as exc:  # noqa: BLE001 - a drawing bug must not stop the freeze and summary after it
        log.exception("incident %s: chart drawing failed", incident.id)
        return f"Chart not posted: {type(exc).__name__}: {exc}"
    return None
