"""Benchmark 4, evaluation at scale: 1,000 services x 2 SLOs against a real Prometheus.

A child process (synthetic_exporter.py) exposes the model-service series of 1,000 services; a real Prometheus
scrapes it every second. The real bot.slo.evaluation.Evaluator (with a SQLite store, as `serve` uses) then runs
evaluation cycles for two policies over the same services in the same run:
  grouped: every service's SLOs share two query texts with `by: service` (what the README recommends);
  naive:   one query text per SLO per service (`{service="svc-0001"}` in each query).
Per cycle it counts the Prometheus queries sent and the bot process's CPU time (time.process_time, all
threads, so the query threads count too). It also runs the whole cycle `serve` runs (Detection.evaluate_once:
evaluation, the SLO metrics, the promotion gate of every service; `for` and `healthy_for` are 1 h, so no
incident or promotion happens). Targets: <= 5 queries and <= 1 s of CPU per cycle.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, Row, median, ms, need_prometheus, report
from mlflow.tracking import MlflowClient
from synthetic_exporter import service_name

from bot.app import wire
from bot.infra.prom import Prometheus
from bot.infra.scheduler import Scheduler
from bot.infra.store import Store
from bot.slack.slack_out import SlackOut, make_client
from bot.slo.evaluation import BREACH, Evaluator, Reading
from bot.slo.policy import Policy
from bot.slo.policy_file import parse_policy
from sandbox.servers import PrometheusServer, free_port

SERVICES = 1000
SLOW_EVERY = 10
CYCLES = 10
NAIVE_CYCLES = 3
LATENCY = "histogram_quantile(0.95, sum by (le, service) (rate(model_request_latency_seconds_bucket[5s])))"
AUC = "min by (service) (model_auc)"
NAIVE_LATENCY = ('histogram_quantile(0.95, sum by (le) (rate(model_request_latency_seconds_bucket'
                 '{{service="{name}"}}[5s])))')
NAIVE_AUC = 'min(model_auc{{service="{name}"}})'


def policy_text(naive: bool) -> str:
    lines = ["evaluate_every: 15s", "services:"]
    for index in range(SERVICES):
        name = service_name(index)
        lines += [f"  {name}:", "    channel: C0BENCHSVC", "    approvers: [U0APPROVER]", "    model: recommender",
                  "    rollback: [{mlflow_alias: {model: recommender}}]", "    promote: {healthy_for: 1h}", "    slos:"]
        if naive:
            lines += [f"      - {{name: p95-latency, query: '{NAIVE_LATENCY.format(name=name)}', above: 0.25, for: 1h}}",
                      f"      - {{name: auc, query: '{NAIVE_AUC.format(name=name)}', below: 0.8, for: 1h}}"]
        elif index == 0:
            lines += [f"      - &latency {{name: p95-latency, query: '{LATENCY}', by: service, above: 0.25, for: 1h}}",
                      f"      - &auc {{name: auc, query: '{AUC}', by: service, below: 0.8, for: 1h}}"]
        else:
            lines += ["      - *latency", "      - *auc"]
    return "\n".join(lines) + "\n"


def cycles(evaluator: Evaluator, prom: Prometheus, policy: Policy, count: int,
           before: object = None) -> list[tuple[int, float, float, dict[str, list[Reading]]]]:
    """Run `count` cycles; (queries sent, CPU seconds, wall seconds, readings) of each."""
    out = []
    for _ in range(count):
        if callable(before):
            before()
        sent, cpu, wall = prom.queries_sent, time.process_time(), time.perf_counter()
        readings = evaluator.evaluate(policy)
        out.append((prom.queries_sent - sent, time.process_time() - cpu, time.perf_counter() - wall, readings))
    return out


def statuses(readings: dict[str, list[Reading]]) -> dict[tuple[str, str], str]:
    return {(name, r.slo): r.status for name, rs in readings.items() for r in rs}


def main() -> None:
    binary = need_prometheus()
    port = free_port()
    exporter = subprocess.Popen([sys.executable, str(Path(__file__).with_name("synthetic_exporter.py")),
                                 "--services", str(SERVICES), "--slow-every", str(SLOW_EVERY), "--port", str(port)],
                                cwd=ROOT)
    try:
        with tempfile.TemporaryDirectory(prefix="rollback-bench-") as tmp, \
                PrometheusServer(Path(tmp) / "prom", targets=[f"127.0.0.1:{port}"], binary=binary) as server:
            deadline = time.monotonic() + 60
            while len([s for s in server.query(LATENCY) if s["value"][1] != "NaN"]) < SERVICES:
                if time.monotonic() > deadline:
                    raise SystemExit("Prometheus has not got the 1,000 services' series after 60 s")
                time.sleep(0.5)
            grouped_policy, naive_policy = parse_policy(policy_text(False)), parse_policy(policy_text(True))
            prom = Prometheus(server.url, timeout=30)

            grouped_store = Store(f"sqlite:///{tmp}/grouped.db")
            grouped = Evaluator(grouped_store, prom)
            first = cycles(grouped, prom, grouped_policy, 1)[0]
            steady = cycles(grouped, prom, grouped_policy, CYCLES)

            def change_every_state() -> None:  # outside the timed part: every SLO state differs from the reading
                with grouped_store.engine.begin() as conn:
                    conn.exec_driver_sql("UPDATE slo_state SET status = 'nodata'")
                grouped.forget_states()
            rewritten = cycles(grouped, prom, grouped_policy, 3, before=change_every_state)

            bot = wire(policy=grouped_policy, store=Store(f"sqlite:///{tmp}/serve.db"), prom=prom,
                       slack=SlackOut(make_client("xoxb-bench-0000", "http://127.0.0.1:9/api/")),
                       mlflow=MlflowClient(tracking_uri="http://127.0.0.1:9"), scheduler=Scheduler())
            full: list[tuple[int, float]] = []
            for _ in range(1 + CYCLES // 2):  # the first one stores the new states, then steady cycles
                sent, cpu_at = prom.queries_sent, time.process_time()
                bot.detection.evaluate_once()
                full.append((prom.queries_sent - sent, time.process_time() - cpu_at))
            full = full[1:]

            naive = Evaluator(Store(f"sqlite:///{tmp}/naive.db"), prom, group=False)  # the per-SLO floor
            naive_first = cycles(naive, prom, naive_policy, 1)[0]
            naive_steady = cycles(naive, prom, naive_policy, NAIVE_CYCLES)

            # The same per-service policy with automatic grouping (bot.slo.grouping), as `serve` runs it.
            auto = Evaluator(Store(f"sqlite:///{tmp}/auto.db"), prom)
            cycles(auto, prom, naive_policy, 1)
            auto_steady = cycles(auto, prom, naive_policy, CYCLES)
    finally:
        exporter.terminate()
        exporter.wait(10)

    grouped_states, naive_states = statuses(steady[-1][3]), statuses(naive_steady[-1][3])
    auto_states = statuses(auto_steady[-1][3])
    auto_queries = max(c[0] for c in auto_steady)
    auto_cpu = median([c[1] for c in auto_steady])
    breaches = sum(1 for s in grouped_states.values() if s == BREACH)
    agree = grouped_states == naive_states == auto_states
    queries = max(c[0] for c in steady)
    cpu = median([c[1] for c in steady])
    cpu_max = max(c[1] for c in steady + rewritten)
    naive_queries = median([float(c[0]) for c in naive_steady])
    naive_cpu = median([c[1] for c in naive_steady])
    rows = [
        Row("4 evaluation at scale", "Prometheus queries per cycle, 1,000 services x 2 SLOs, grouped", str(queries),
            "<= 5", queries <= 5),
        Row("4 evaluation at scale", "bot CPU per cycle, grouped (median; worst incl. every state rewritten)",
            f"{ms(cpu)}; {ms(cpu_max)}", "<= 1 s", cpu_max <= 1.0),
        Row("4 evaluation at scale", "whole serve cycle (evaluation, SLO metrics, promotion gate of 1,000 services): "
            "queries; CPU median / worst", f"{max(q for q, _ in full)}; {ms(median([c for _, c in full]))} / "
            f"{ms(max(c for _, c in full))}", "<= 5; <= 1 s",
            max(q for q, _ in full) <= 5 and max(c for _, c in full) <= 1.0),
        Row("4 evaluation at scale", "per-service queries (no `by:`), grouped automatically: queries; CPU per cycle "
            "median / worst", f"{auto_queries}; {ms(auto_cpu)} / {ms(max(c[1] for c in auto_steady))}",
            "<= 5; <= 1 s", auto_queries <= 5 and max(c[1] for c in auto_steady) <= 1.0),
        Row("4 evaluation at scale", "naive one-query-per-SLO, same run: queries / CPU per cycle (ratio)",
            f"{naive_queries:.0f} / {ms(naive_cpu)} ({naive_queries / max(queries, 1):.0f}x / "
            f"{naive_cpu / max(cpu, 1e-9):.0f}x)", "for comparison", None),
    ]
    notes = [
        f"grouped: first cycle (stores 2,000 new states) {ms(first[1])} CPU, {ms(first[2])} wall; steady cycles "
        f"{ms(min(c[1] for c in steady))}-{ms(max(c[1] for c in steady))} CPU, median wall "
        f"{ms(median([c[2] for c in steady]))}; with every state rewritten "
        f"{ms(median([c[1] for c in rewritten]))} CPU",
        f"naive: first cycle {ms(naive_first[1])} CPU; steady median wall {ms(median([c[2] for c in naive_steady]))}",
        f"{breaches} of {len(grouped_states)} SLOs breach (every {SLOW_EVERY}th service is slow); grouped and naive "
        f"and automatically grouped readings {'agree' if agree else 'DISAGREE'}",
    ]
    report("4 evaluation at scale", rows, notes)
    if not agree or breaches != 2 * SERVICES // SLOW_EVERY:
        raise SystemExit("grouped and naive evaluation disagree, or the breaches are not the slow services")


if __name__ == "__main__":
    main()
