"""Prometheus reads for SLO evaluation and verification.

Called by bot.slo.evaluation. Each distinct query string is sent once per cycle however many SLOs use it, the
queries of one cycle run concurrently, and a failing query comes back as an error for that query only.
An empty result or NaN is "no data", never a number. bot.slack.chart reads each SLO's history with `query_range`.
Instant results keep each series' labels, so one query grouped by a label (`sum by (le, service) (...)`)
answers for many services at once (QueryResult.by_label).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry


@dataclass(frozen=True)
class Sample:
    """One series of an instant query's result: its labels and its (never NaN) value."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class QueryResult:
    """Values of one instant query: empty tuple = no data; error set = the query itself failed.

    `samples` holds the same values with their series' labels (empty when built from bare values).
    """

    query: str
    values: tuple[float, ...] = ()
    error: str | None = None
    samples: tuple[Sample, ...] = ()

    def only(self, label: str, value: str) -> QueryResult:
        """The same result with only the series whose `label` is `value` (one service's share of a grouped one)."""
        kept = tuple(s for s in self.samples if s.labels.get(label) == value)
        return QueryResult(self.query, tuple(s.value for s in kept), self.error, kept)

    def by_label(self, label: str) -> dict[str, tuple[float, ...]]:
        """The values grouped by the value of `label`; series without that label are left out."""
        out: dict[str, list[float]] = {}
        for sample in self.samples:
            key = sample.labels.get(label)
            if key is not None:
                out.setdefault(key, []).append(sample.value)
        return {key: tuple(values) for key, values in out.items()}


@dataclass(frozen=True)
class Series:
    """One series of a range query: its labels and its (unix time, value) points, NaNs left out."""

    labels: dict[str, str]
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class RangeResult:
    """Series of one range query; error set = the query itself failed (Prometheus down, bad PromQL)."""

    query: str
    series: tuple[Series, ...] = ()
    error: str | None = None


class Prometheus:
    def __init__(self, url: str, *, timeout: float = 5.0, retries: int = 1, workers: int = 8) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries
        # Our own retry loop below decides what is retried; the client's built-in one would back off for
        # seconds on a down Prometheus and stall the evaluation cycle.
        self._conn = PrometheusConnect(url=url, disable_ssl=False, retry=Retry(total=0, raise_on_status=False))
        self._session = requests.Session()  # instant queries (POST); range queries go through prometheus-api-client
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prom")
        self.queries_sent = 0

    def query(self, query: str, at: float | None = None) -> QueryResult:
        """One instant query, evaluated at unix time `at` (Prometheus's now when None). POSTed as a form, as the
        HTTP API allows: a grouped query over 10,000 services is a 100 KB regex, too long to trust to a URL."""
        form = {"query": query, **({"time": f"{at:.3f}"} if at is not None else {})}
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(0.2 * attempt)
            self.queries_sent += 1
            try:
                response = self._session.post(f"{self.url.rstrip('/')}/api/v1/query", data=form, timeout=self.timeout)
            except requests.RequestException as exc:
                # Prometheus down or slow: retried, then reported as this query's error.
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code != 200:
                # Prometheus answered with an error (bad PromQL, 5xx): a read, so retrying is safe.
                last_error = _api_error(response)
                if "bad_data" in last_error:
                    break  # a query that does not parse will not parse on the second try either
                continue
            try:
                data = response.json()["data"]["result"]
            except (ValueError, KeyError, TypeError):
                last_error = f"not a Prometheus answer: {response.text[:200]!r}"
                continue
            samples = _samples(data)
            return QueryResult(query, tuple(sample.value for sample in samples), samples=samples)
        return QueryResult(query, error=last_error[:500] or "query failed")

    def query_range(self, query: str, start: float, end: float, step: float) -> RangeResult:
        """A range query (bot.slack.chart draws the incident's SLOs with it); never raises, errors are returned."""
        self.queries_sent += 1
        try:
            data = self._conn.custom_query_range(
                query=query, start_time=datetime.fromtimestamp(start, timezone.utc),
                end_time=datetime.fromtimestamp(end, timezone.utc), step=f"{max(step, 0.001):g}s",
                timeout=self.timeout)
        except PrometheusApiClientException as exc:
            # Prometheus answered with an error (bad PromQL, too many points, 5xx): reported, not raised.
            return RangeResult(query, error=str(exc)[:500] or "range query failed")
        except requests.RequestException as exc:
            # Prometheus down or slow: the caller (a chart) reports it instead of failing the incident.
            return RangeResult(query, error=f"{type(exc).__name__}: {exc}"[:500])
        return RangeResult(query, tuple(_series(s) for s in data or [] if isinstance(s, dict)))

    def query_many(self, queries: Iterable[str], at: float | None = None) -> dict[str, QueryResult]:
        """Each query once, concurrently, all evaluated at the same instant `at`."""
        unique = list(dict.fromkeys(queries))
        return dict(zip(unique, self._pool.map(lambda q: self.query(q, at), unique), strict=True))

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._session.close()


def _api_error(response: requests.Response) -> str:
    """Prometheus's own words for a failed query ("bad_data: 1:5: parse error: ..."), with the HTTP status."""
    try:
        body = response.json()
        return f"HTTP {response.status_code}: {body.get('errorType', 'error')}: {body.get('error', '')}"
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code}: {response.text[:300]!r}"


def _series(raw: dict[str, object]) -> Series:
    points: list[tuple[float, float]] = []
    for pair in raw.get("values") or []:  # type: ignore[attr-defined]
        try:
            at, value = float(pair[0]), float(pair[1])
        except (TypeError, ValueError, IndexError):
            continue  # not a sample we can read: a gap in the line
        if not math.isnan(value):
            points.append((at, value))
    labels = raw.get("metric")
    return Series({str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}, tuple(points))


def _values(data: object) -> tuple[float, ...]:
    return tuple(sample.value for sample in _samples(data))


def _samples(data: object) -> tuple[Sample, ...]:
    """The readable samples of an instant query's `result` (a vector or a scalar); NaN ones are dropped."""
    out: list[Sample] = []
    if isinstance(data, list) and len(data) == 2 and not isinstance(data[0], dict):
        data = [{"value": data}]  # a scalar result: [timestamp, "value"]
    if isinstance(data, list):
        for series in data:
            if not isinstance(series, dict):
                continue  # not a series at all: counts as no data
            raw = (series.get("value") or [None, None])[1]
            try:
                value = float(raw)
            except (TypeError, ValueError):
                continue  # not a sample we can read: counts as no data for this series
            if not math.isnan(value):
                labels = series.get("metric")
                out.append(Sample(labels if isinstance(labels, dict) else {}, value))
    return tuple(out)
