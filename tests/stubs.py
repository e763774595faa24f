"""Small in-process stand-ins for unit tests (level 1): a Prometheus that answers from a dict, and a clock.

Real servers are used one level up (tests/test_handlers.py, tests/test_story.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from bot.infra.prom import QueryResult, RangeResult, Sample
from bot.slo import grouping
from bot.slo.policy import Policy
from bot.slo.policy_file import parse_policy


class StubProm:
    """Answers each query from `answers`: a tuple of floats, or an Exception text for a failed query."""

    def __init__(self, answers: dict[str, tuple[float, ...] | str] | None = None) -> None:
        self.answers = dict(answers or {})
        self.sent: list[str] = []

    def query_many(self, queries: Iterable[str], at: float | None = None) -> dict[str, QueryResult]:
        out = {}
        for q in dict.fromkeys(queries):
            self.sent.append(q)
            if q not in self.answers and (grouped := self._grouped(q)) is not None:
                out[q] = grouped
                continue
            answer = self.answers.get(q, ())
            out[q] = QueryResult(q, error=answer) if isinstance(answer, str) else QueryResult(q, tuple(answer))
        return out

    def _grouped(self, query: str) -> QueryResult | None:
        """A grouped query (bot.slo.grouping) over queries this stub answers: each member's values as series
        labelled with its value, the way Prometheus answers the grouped query."""
        samples: list[Sample] = []
        matched = False
        for member, answer in self.answers.items():
            try:
                shape = grouping.shape(member)
            except grouping.NotGroupable:
                continue
            values = grouping.grouped_values(query, shape.label)
            if not values or shape.value not in values or grouping.grouped_text(shape, values) != query:
                continue
            matched = True
            if isinstance(answer, str):
                return QueryResult(query, error=answer)
            samples += [Sample({shape.label: shape.value}, v) for v in answer]
        if not matched:
            return None
        return QueryResult(query, tuple(s.value for s in samples), samples=tuple(samples))

    def query(self, query: str) -> QueryResult:
        return self.query_many([query])[query]

    def query_range(self, query: str, start: float, end: float, step: float) -> RangeResult:
        """No history in a stub: the chart says so instead of drawing."""
        self.sent.append(query)
        return RangeResult(query, error="the stub Prometheus keeps no history")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> float:
        self.now += seconds
        return self.now


LATENCY = "p95_latency_query"
AUC = "auc_query"


def policy(*, for_: str = "3s", stable_for: str = "3s", within: str = "30s", healthy_for: str = "10s",
           model: str = "recommender") -> Policy:
    return parse_policy(f"""
evaluate_every: 1s
services:
  model-svc:
    channel: C0MODELSVC
    approvers: [U0APPROVER]
    model: {model}
    slos:
      - {{name: p95-latency, kind: latency, query: {LATENCY}, above: 0.25, for: {for_}}}
      - {{name: auc, kind: quality, query: {AUC}, below: 0.8, for: {for_}}}
    rollback:
      - mlflow_alias: {{model: {model}}}
    verify: {{every: 1s, within: {within}, stable_for: {stable_for}}}
    promote: {{from: candidate, to: champion, healthy_for: {healthy_for}}}
""")
