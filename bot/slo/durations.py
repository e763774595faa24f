"""Durations as people write them in policy files (`15s`, `5m`, `1h30m`, `500ms`) and as the bot shows them.

parse_duration is called by bot.slo.policy for every duration field; format_duration by anything that puts a
duration in front of a human (Slack messages, cli output).
"""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"\d+(?:\.\d+)?|\.\d+"
_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
_WHOLE = re.compile(rf"(?:(?:{_NUMBER})(?:ms|s|m|h|d))+")
_ACCEPTED = "a number of seconds (30, 0.5) or amounts with units ms, s, m, h, d (500ms, 15s, 5m, 1h30m, 1d)"


def parse_duration(text: str | int | float) -> float:
    """Seconds in `text`: a bare number of seconds, or unit amounts like `500ms`, `15s`, `5m`, `1h30m`."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ValueError(f"expected a duration: {_ACCEPTED}; got {text!r}")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        value = text.strip()
        if re.fullmatch(_NUMBER, value):
            seconds = float(value)
        elif _WHOLE.fullmatch(value):
            seconds = sum(float(amount) * _UNITS[unit] for amount, unit in _PART.findall(value))
        else:
            raise ValueError(f"invalid duration {text!r}: use {_ACCEPTED}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {text!r}: must be zero or more; use {_ACCEPTED}")
    return seconds


def format_duration(seconds: float) -> str:
    """A short human form: `350ms` under a second, then `42s`, `1m12s`, `1h05m`, `2d03h`."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if 0 < round(seconds * 1000) < 1000:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"


def format_span(start: float | None, end: float | None) -> str:
    """How long from `start` to `end`, or "—" while either is unknown (the summary's and history's times)."""
    return format_duration(end - start) if start is not None and end is not None else "—"
