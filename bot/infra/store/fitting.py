"""What every write fits into: the column guards shared by all of the store's tables.

SQLite accepts anything; PostgreSQL refuses text longer than its String(n) column, NUL characters, lone
surrogates and JSON holding NaN or Infinity. `guard_columns` (called once by bot.infra.store.tables, after the
last Table) gives every String(n), Text and JSON column a type that fixes the value on its way in: text is cut
to its column (`fit`), JSON loses its non-finite floats (`finite_json`), and Text and JSON values lose their
credentials (bot.infra.redact). handlers.alertmanager shortens alert names with `fit`, and the SLO part
(bot.infra.store.slo_states) computes its lookup keys with it.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import JSON, MetaData, String, Text, TypeDecorator
from sqlalchemy.engine import Dialect

from bot.infra.redact import REDACTOR, redact


def fit(text: str, length: int | None = None) -> str:
    """`text` as the store writes it into a column of `length` characters (None: unbounded): NUL characters
    dropped and lone surrogates replaced (PostgreSQL and UTF-8 refuse them), and, when still too long, cut to
    `length` ending in "…" so a reader sees it was shortened. handlers.alertmanager shortens alert names with it."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    text = text.replace("\x00", "")
    if length is not None and len(text) > length:
        return text[: length - 1] + "…"
    return text


def finite_json(value: Any) -> Any:
    """`value` (a JSON value) with every non-finite float (NaN, +Inf, -Inf) replaced by None and its text
    cleaned like `fit`: PostgreSQL's json refuses NaN and Infinity, and Python writes them unquoted."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return fit(value)
    if isinstance(value, dict):
        return {fit(k) if isinstance(k, str) else k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


class _FittedString(TypeDecorator[str]):
    """A String(n) column's type as written: each value bound to it (insert, update, or compared in a WHERE,
    so a lookup finds what was stored) goes through `fit`. The DDL stays VARCHAR(n)."""

    impl = String
    cache_ok = True

    def __init__(self, length: int | None = None) -> None:
        super().__init__(length)
        self.length = length

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return fit(value, self.length) if isinstance(value, str) else value


class _FittedText(_FittedString):
    """A Text column's type as written: no length to fit, the same clean text, and no credentials (event texts,
    errors and reasons carry what executors and libraries said, URLs included; bot.infra.redact)."""

    impl = Text
    cache_ok = True  # as its base: the type holds no state that changes the SQL

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return redact(fit(value)) if isinstance(value, str) else value


class _FiniteJSON(TypeDecorator[Any]):
    """A JSON column's type as written: the value goes through `finite_json`, and its strings through bot.infra.redact."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return REDACTOR.deep(finite_json(value))


def guard_columns(meta: MetaData) -> None:
    """Give every String(n), Text and JSON column of the store's tables its fitted type, in this one place, so
    no write path (and no column added later) can hand PostgreSQL a value it refuses."""
    for table in meta.tables.values():
        for column in table.columns:
            kind = column.type
            if isinstance(kind, JSON):
                column.type = _FiniteJSON()
            elif isinstance(kind, Text):
                column.type = _FittedText()
            elif isinstance(kind, String):
                column.type = _FittedString(kind.length)
