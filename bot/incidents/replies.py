"""Reply: what the person who clicked or typed is told (ephemerally). Returned by bot.incidents.service and
bot.incidents.oncall, shown by handlers/."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    ok: bool
    text: str
    view: dict[str, Any] | None = None  # a modal for the handler to open (the typed confirmation), else nothing
