"""Synthetic /metrics for many model services at once, for benchmarks/evaluation_at_scale.py.

Run as a child process (`python benchmarks/synthetic_exporter.py --services 1000 --port N`) so serving the
metrics never counts as the bot's CPU. Every service exposes the same series as the model-service simulator
(`model_request_latency_seconds` histogram, `model_auc` gauge) with deterministic values: every `--slow-every`
th service answers in 0.45 s with AUC 0.7 (breaching both SLOs), the others in 0.05 s with AUC 0.9. Counters
grow with wall time at `--rps` requests per second, so `rate()` works.
"""

from __future__ import annotations

import argparse
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0)


def service_name(index: int) -> str:
    return f"svc-{index:04d}"


def exposition(services: int, slow_every: int, rps: float, elapsed: float) -> bytes:
    count = rps * elapsed
    lines = ["# TYPE model_request_latency_seconds histogram", "# TYPE model_auc gauge"]
    for index in range(services):
        name = service_name(index)
        slow = index % slow_every == 0
        latency = 0.45 if slow else 0.05
        for le in BUCKETS:
            lines.append(f'model_request_latency_seconds_bucket{{service="{name}",le="{le}"}} '
                         f"{count if latency <= le else 0.0}")
        lines.append(f'model_request_latency_seconds_bucket{{service="{name}",le="+Inf"}} {count}')
        lines.append(f'model_request_latency_seconds_count{{service="{name}"}} {count}')
        lines.append(f'model_request_latency_seconds_sum{{service="{name}"}} {count * latency}')
        lines.append(f'model_auc{{service="{name}"}} {0.7 if slow else 0.9}')
    return ("\n".join(lines) + "\n").encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--slow-every", type=int, default=10)
    parser.add_argument("--rps", type=float, default=20.0)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    started = time.time()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = exposition(args.services, args.slow_every, args.rps, time.time() - started)
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
