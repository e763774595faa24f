"""Shares as people write them in policy files (`3%`, `0.5%`, `10 %`) and as the bot shows them (`−3.5%`).

parse_percent is called by bot.slo.policy for `above_baseline:` / `below_baseline:`; format_change by anything that
shows a value's change against its baseline (the warning, /rollback policy, check-policy).
"""

from __future__ import annotations

import math
import re

_PERCENT = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*%")


def parse_percent(text: object) -> float:
    """The share in `text` as a fraction: "3%" is 0.03. A bare number is refused: 3 could mean 3% or 300%."""
    if isinstance(text, str):
        match = _PERCENT.fullmatch(text.strip())
        if match:
            share = float(match.group(1)) / 100
            if share <= 0 or not math.isfinite(share):
                raise ValueError(f"expected a share above 0%, e.g. '3%'; got {text!r}")
            return share
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        raise ValueError(f"write the allowed change with a percent sign, e.g. '3%' (got {text!r}: 3% or 300%?)")
    raise ValueError(f"expected a share with a percent sign, e.g. '3%' or '0.5%'; got {text!r}")


def format_percent(share: float) -> str:
    """0.03 -> "3%", 0.035 -> "3.5%", 0.0025 -> "0.25%"."""
    return f"{share * 100:.3g}%"


def format_change(change: float) -> str:
    """A signed change as a share, with a real minus sign: -0.035 -> "−3.5%", 0.1 -> "+10%", 0 -> "±0%"."""
    if change == 0:
        return "±0%"
    return ("+" if change > 0 else "−") + format_percent(abs(change))
