"""Synthetic /metrics for many model services at once, for benchmarks/evaluation_at_scale.py and
benchmarks/serve_at_scale.py.

Run as a child process (`python benchmarks/synthetic_exporter.py --services 1000 --port N`) so serving the
metrics never counts as the bot's CPU. Every service exposes the series of the model-service simulator
(`model_request_latency_seconds` histogram, `model_auc` gauge) plus `model_requests_total{service,code}`
counters (code "200" and "500"), with deterministic values: every `--slow-every`th service answers in 0.45 s
with AUC 0.7 and `--error-ratio` of its requests answered 500 (breaching a p95-latency, an AUC and an error-rate
SLO), the others in 0.05 s with AUC 0.9 and no errors (their code="500" counter exists and stays at 0, so an
error ratio reads 0, not "no data"). Counters grow with wall time at `--rps` requests per second, so `rate()` works.

Fast enough for 10,000 services (200,000 series) on the benchmark machine, whose cores it shares with the bot
and Prometheus: the label part of every line is formatted once at start; a scrape only formats the ~20 numbers
of the two kinds of service and joins precomputed strings.
"""

from __future__ import annotations

import argparse
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0)
FAST_LATENCY, SLOW_LATENCY = 0.05, 0.45
FAST_AUC, SLOW_AUC = 0.9, 0.7
HEADER = ("# TYPE model_request_latency_seconds histogram\n# TYPE model_auc gauge\n"
          "# TYPE model_requests_total counter\n")


def service_name(index: int) -> str:
    return f"svc-{index:04d}"


def _label_parts(name: str) -> list[str]:
    """The line beginnings (metric name and labels, then a space) of one service, in a fixed order that
    `_values` follows."""
    label = f'service="{name}"'
    parts = [f'model_request_latency_seconds_bucket{{{label},le="{le}"}} ' for le in BUCKETS]
    parts += [f'model_request_latency_seconds_bucket{{{label},le="+Inf"}} ',
              f"model_request_latency_seconds_count{{{label}}} ", f"model_request_latency_seconds_sum{{{label}}} ",
              f"model_auc{{{label}}} ", f'model_requests_total{{{label},code="200"}} ',
              f'model_requests_total{{{label},code="500"}} ']
    return parts


def _values(count: float, latency: float, auc: float, error_ratio: float) -> list[str]:
    """The numbers of one kind of service at `count` requests served, each ending its line."""
    values = [count if latency <= le else 0.0 for le in BUCKETS]
    values += [count, count, count * latency, auc, count * (1 - error_ratio), count * error_ratio]
    return [f"{v!r}\n" for v in values]


class Exposition:
    """The text of every scrape, its labels formatted once."""

    def __init__(self, services: int, slow_every: int, error_ratio: float = 0.05) -> None:
        self.error_ratio = error_ratio
        self.parts = [_label_parts(service_name(i)) for i in range(services)]
        self.slow = [i % slow_every == 0 for i in range(services)]

    def render(self, count: float) -> bytes:
        fast = _values(count, FAST_LATENCY, FAST_AUC, 0.0)
        slow = _values(count, SLOW_LATENCY, SLOW_AUC, self.error_ratio)
        chunks = [HEADER]
        for parts, is_slow in zip(self.parts, self.slow, strict=True):
            chunks.append("".join(map(str.__add__, parts, slow if is_slow else fast)))
        return "".join(chunks).encode()


def exposition(services: int, slow_every: int, rps: float, elapsed: float, error_ratio: float = 0.05) -> bytes:
    """One scrape's text (formats the labels too: for one-off use; the server keeps an Exposition)."""
    return Exposition(services, slow_every, error_ratio).render(rps * elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--slow-every", type=int, default=10)
    parser.add_argument("--error-ratio", type=float, default=0.05, help="share of a slow service's requests that fail")
    parser.add_argument("--rps", type=float, default=20.0)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    text = Exposition(args.services, args.slow_every, args.error_ratio)
    started = time.time()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = text.render(args.rps * (time.time() - started))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # one line per scrape would drown the benchmark's output

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
