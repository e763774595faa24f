"""Automatic query grouping: SLO queries written per service (`...{service="svc-0001"}...`) that are the same
expression except for the value of one label's equality matcher are evaluated as one grouped query, and the
result is split back per service.

Queries are parsed with a real PromQL parser (promql-parser, the Rust parser's bindings) and re-printed from the
AST, never rewritten as text. A query is grouped only when every node of it is a shape whose per-service values
the rewrite provably leaves unchanged (`SUPPORTED` below; the README lists them); anything else is evaluated
alone, with the reason. The rewrite of a group over label L with values v1..vn:

- every selector's `L="v"` becomes `L=~"v1|v2|...|vn"` (values regex-escaped; PromQL anchors regexes);
- every aggregation keeps L: `by (x)` becomes `by (x, L)`, no modifier becomes `by (L)`, `without (x)` stays
  (refused when it drops L); a vector/vector binary operator with `on (x)` becomes `on (x, L)`;
- each service then reads the series whose L equals its value (bot.slo.evaluation splits them).
"""

from __future__ import annotations

import functools
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import promql_parser as pp

# Functions whose result for a series depends only on that series (and scalar arguments).
PER_SERIES_FUNCTIONS = frozenset({
    "rate", "irate", "increase", "delta", "idelta", "deriv", "resets", "changes",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "quantile_over_time", "stddev_over_time", "stdvar_over_time", "present_over_time",
    "abs", "ceil", "floor", "round", "exp", "ln", "log2", "log10", "sqrt", "clamp", "clamp_min", "clamp_max",
    "histogram_quantile",
})
AGGREGATIONS = frozenset({"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar"})
SUPPORTED = ("selectors with = != =~ !~ matchers; range selectors under " + ", ".join(sorted(PER_SERIES_FUNCTIONS))
             + "; aggregations " + ", ".join(sorted(AGGREGATIONS)) + " with or without by/without; binary "
             "operators (arithmetic, comparison, bool) between such expressions and numbers, or between two such "
             "expressions matched one-to-one (with or without on(...)); parentheses and unary minus")
_MATCH_OPS = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~", "MatchOp.NotRe": "!~"}
_SET_OPS = frozenset({"and", "or", "unless"})


class NotGroupable(Exception):
    """This query is evaluated alone; the message says why (shown by `rollback-bot check-policy`)."""


@dataclass(frozen=True)
class Shape:
    """A query seen as a template over one label: the same `template` and `label` means the same expression."""

    template: str
    label: str
    value: str


@dataclass(frozen=True)
class Group:
    """One grouped query and, per original query text, the label value that picks its series."""

    query: str
    label: str
    members: dict[str, str]  # original query -> its value of `label`


@dataclass(frozen=True)
class Plan:
    groups: tuple[Group, ...]
    alone: dict[str, str]  # query -> why it is evaluated alone

    def for_query(self, query: str) -> tuple[str, str, str] | None:
        """(grouped query, label, value) when `query` is answered by a group."""
        group = self._index.get(query)
        return (group.query, group.label, group.members[query]) if group else None

    @property
    def _index(self) -> dict[str, Group]:
        index = self.__dict__.get("_by_query")
        if index is None:
            index = {q: g for g in self.groups for q in g.members}
            object.__setattr__(self, "_by_query", index)
        return index

    def summary(self, slos: int) -> str:
        """What check-policy prints: how many queries a cycle sends, and why each refused query goes alone."""
        sent = len(self.groups) + len(self.alone)
        refused = {q: why for q, why in self.alone.items() if why != SINGLE}
        text = (f"{slos} SLO queries in {sent} queries per cycle ({len(self.groups)} grouped, "
                f"{len(self.alone) - len(refused)} of a shape of their own)")
        if refused:
            text += f"; {len(refused)} evaluated alone: " + "; ".join(
                f"`{q}`: {why}" for q, why in sorted(refused.items()))
        return text


SINGLE = "no other query has its shape"
_PLACEHOLDER = "\x00"


def shape(query: str) -> Shape:
    """The query as a template over the one label whose equality matcher has the same value in every selector.
    Raises NotGroupable with the reason otherwise."""
    try:
        expr = pp.parse(query)
    except Exception as exc:  # noqa: BLE001 - the parser's own error: Prometheus would refuse it too
        raise NotGroupable(f"does not parse: {exc}") from exc
    selectors: list[dict[str, str]] = []
    _collect(expr, selectors)
    if not selectors:
        raise NotGroupable("has no series selector")
    common = set.intersection(*(set(s) for s in selectors))
    candidates = sorted(label for label in common if len({s[label] for s in selectors}) == 1)
    if not candidates:
        raise NotGroupable("no label is matched with = to one value in every selector")
    label = "service" if "service" in candidates else candidates[0]
    value = selectors[0][label]
    return Shape(_render(expr, label, _PLACEHOLDER, for_group=True), label, value)


@functools.lru_cache(maxsize=8)
def cached_plan(queries: tuple[str, ...]) -> Plan:
    """`plan` of a policy's queries, computed once per distinct set (a policy does not change between cycles)."""
    return plan(queries)


def plan(queries: Iterable[str]) -> Plan:
    """Group the queries that share a shape; a shape of one query, or a query that cannot be grouped, goes alone."""
    by_shape: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    alone: dict[str, str] = {}
    for query in dict.fromkeys(queries):
        try:
            s = shape(query)
        except NotGroupable as exc:
            alone[query] = str(exc)
            continue
        by_shape[(s.template, s.label)][query] = s.value
    groups = []
    for (template, label), members in by_shape.items():
        if len(members) < 2:
            for query in members:
                alone[query] = SINGLE
            continue
        groups.append(Group(grouped_text(Shape(template, label, ""), members.values()), label, dict(members)))
    return Plan(tuple(groups), alone)


def grouped_text(s: Shape, values: Iterable[str]) -> str:
    """The grouped query of a shape over these label values (sorted, regex-escaped, as one =~ matcher)."""
    return s.template.replace(_PLACEHOLDER, _quote("|".join(_re2_escape(v) for v in sorted(set(values)))))


def _re2_escape(value: str) -> str:
    """The value as a literal in Prometheus' RE2 syntax: only its metacharacters get a backslash."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", value)


def grouped_values(query: str, label: str) -> list[str] | None:
    """The label values a grouped query asks for (its `label=~"a|b"` matcher), None when it has none."""
    found: list[str] = []

    def visit(expr: object) -> None:
        if isinstance(expr, pp.VectorSelector):
            for m in expr.matchers.matchers:
                if m.name == label and str(m.op) == "MatchOp.Re" and not found:
                    found.extend(re.sub(r"\\(.)", r"\1", v) for v in re.split(r"(?<!\\)\|", m.value))
        for child in ("vector_selector", "expr", "lhs", "rhs"):
            if hasattr(expr, child) and getattr(expr, child) is not None:
                visit(getattr(expr, child))
        for arg in getattr(expr, "args", None) or ():
            visit(arg)

    try:
        visit(pp.parse(query))
    except Exception:  # noqa: BLE001 - not PromQL: not a grouped query either
        return None
    return found or None


# -- the AST -------------------------------------------------------------------------------------------------
def _collect(expr: object, out: list[dict[str, str]]) -> None:
    """Every vector selector's equality matchers, checking on the way that each node is a supported shape."""
    if isinstance(expr, pp.VectorSelector):
        if expr.offset is not None or expr.at is not None:
            raise NotGroupable("uses offset or @")
        if expr.matchers.or_matchers:
            raise NotGroupable("uses `or` inside a selector")
        out.append({m.name: m.value for m in expr.matchers.matchers if str(m.op) == "MatchOp.Equal"})
    elif isinstance(expr, pp.MatrixSelector):
        _collect(expr.vector_selector, out)
    elif isinstance(expr, pp.Call):
        if expr.func.name not in PER_SERIES_FUNCTIONS:
            raise NotGroupable(f"calls {expr.func.name}(), which is not evaluated per series")
        for arg in expr.args:
            _collect(arg, out)
    elif isinstance(expr, pp.AggregateExpr):
        if str(expr.op) not in AGGREGATIONS or expr.param is not None:
            raise NotGroupable(f"aggregates with {expr.op}, which can mix series of different services")
        _collect(expr.expr, out)
    elif isinstance(expr, pp.BinaryExpr):
        if str(expr.op) in _SET_OPS:
            raise NotGroupable(f"uses the set operator {expr.op}")
        bin_mod = expr.modifier
        if bin_mod is not None and (str(bin_mod.card) != "VectorMatchCardinality.OneToOne"
                                    or (bin_mod.matching is not None
                                        and str(bin_mod.matching.type) != "LabelModifierType.Include")):
            raise NotGroupable("matches vectors with ignoring(), group_left or group_right")
        _collect(expr.lhs, out)
        _collect(expr.rhs, out)
    elif isinstance(expr, (pp.ParenExpr, pp.UnaryExpr)):
        _collect(expr.expr, out)
    elif isinstance(expr, pp.NumberLiteral):
        return
    else:
        raise NotGroupable(f"uses {type(expr).__name__}, which grouping does not rewrite")


def _render(expr: object, label: str, value: str, *, for_group: bool) -> str:
    """PromQL text of `expr`; with `for_group`, the label's equality matchers become `label=~<value>` and every
    aggregation and vector matching keeps `label`."""
    def r(e: object) -> str:
        return _render(e, label, value, for_group=for_group)

    if isinstance(expr, pp.VectorSelector):
        parts = []
        for m in expr.matchers.matchers:
            if for_group and m.name == label and str(m.op) == "MatchOp.Equal":
                parts.append(f"{label}=~{value}")
            else:
                parts.append(f"{m.name}{_MATCH_OPS[str(m.op)]}{_quote(m.value)}")
        return (expr.name or "") + "{" + ",".join(parts) + "}"
    if isinstance(expr, pp.MatrixSelector):
        return f"{r(expr.vector_selector)}[{pp.display_duration(expr.range)}]"
    if isinstance(expr, pp.Call):
        return f"{expr.func.name}({', '.join(r(a) for a in expr.args)})"
    if isinstance(expr, pp.AggregateExpr):
        op, modifier = str(expr.op), expr.modifier
        if modifier is None:
            grouping = f" by ({label})" if for_group else ""
        elif str(modifier.type) == "AggModifierType.Without":
            if for_group and label in modifier.labels:
                raise NotGroupable(f"aggregates without ({label}), which drops the label it is grouped by")
            grouping = f" without ({', '.join(modifier.labels)})"
        else:
            labels = list(modifier.labels) + ([label] if for_group and label not in modifier.labels else [])
            grouping = f" by ({', '.join(labels)})"
        return f"{op}{grouping} ({r(expr.expr)})"
    if isinstance(expr, pp.BinaryExpr):
        matching, text = expr.modifier, ""
        if matching is not None:
            if matching.return_bool:
                text += " bool"
            if matching.matching is not None:
                labels = list(matching.matching.labels)
                if for_group and label not in labels:
                    labels.append(label)
                text += f" on ({', '.join(labels)})"
        return f"{r(expr.lhs)} {expr.op}{text} {r(expr.rhs)}"
    if isinstance(expr, pp.ParenExpr):
        return f"({r(expr.expr)})"
    if isinstance(expr, pp.UnaryExpr):
        return f"-{r(expr.expr)}"
    if isinstance(expr, pp.NumberLiteral):
        v = expr.val
        return "NaN" if math.isnan(v) else ("Inf" if v == math.inf else "-Inf" if v == -math.inf else repr(v))
    raise NotGroupable(f"uses {type(expr).__name__}, which grouping does not rewrite")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render(query: str) -> str:
    """The query re-printed from its AST (no grouping): used by tests to check the printer round-trips."""
    return _render(pp.parse(query), "", "", for_group=False)
