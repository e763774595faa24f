"""Benchmark 3, recovery overhead: Roll back click -> verified stable ("Recovered" in the thread), minus the
executor's time, minus `stable_for`, minus the time the metrics themselves needed to show the recovery.

A real `rollback-bot serve` watches 3 simulated services (verify every 1 s, `stable_for` 3 s). Each is
broken (champion -> slow v2), and when its warning is posted the approver clicks Roll back (a signed
request). While it recovers, the benchmark polls the real Prometheus every 50 ms with the policy's own
grouped queries; "metrics lag" is the time from the executor finishing (the alias flipped in MLflow) until
Prometheus answers every SLO within target (the simulator's alias poll, the scrape, and the 5 s rate window
of the p95 query: not the bot's doing). Executor time and step times come from the bot's database.
Target: overhead <= 1 s.
"""

from __future__ import annotations

import threading
import time

from _common import LATENCY_QUERY, Row, Stage, median, report

SERVICES = 3
STABLE_FOR = 3.0
AUC_QUERY = "min by (service) (model_auc)"


def poll_healthy(stage: Stage, name: str, stop: threading.Event, seen: list[float]) -> None:
    """Append the time of every poll at which Prometheus shows both SLOs of `name` within target."""
    while not stop.is_set():
        at = time.time()
        latency = {s["metric"].get("service"): float(s["value"][1]) for s in stage.prom.query(LATENCY_QUERY)}
        auc = {s["metric"].get("service"): float(s["value"][1]) for s in stage.prom.query(AUC_QUERY)}
        if latency.get(name, 1e9) <= 0.25 and auc.get(name, 0.0) >= 0.8:
            seen.append(at)
        time.sleep(0.05)


def main() -> None:
    results = []
    with Stage(services=SERVICES, for_="1s", stable_for=f"{STABLE_FOR:g}s", within="60s") as stage:
        for name in stage.names:
            stage.break_service(name)
            message, _ = stage.warning_for(name)
            stop, healthy = threading.Event(), []
            poller = threading.Thread(target=poll_healthy, args=(stage, name, stop, healthy), daemon=True)
            poller.start()
            clicked = stage.click(message, "rollback_approve")
            recovered = stage.slack.wait_for(lambda c, ts=message["ts"]: c.method == "chat.postMessage"
                                             and c.params.get("thread_ts") == ts
                                             and "Recovered:" in c.params.get("text", ""), timeout=90).at
            stop.set()
            poller.join(5)
            incident = next(i for i in stage.incident_rows() if i["service"] == name)
            steps = incident["steps"]
            executor = sum(s["finished_at"] - s["started_at"] for s in steps)
            executor_done = max(s["finished_at"] for s in steps)
            healthy_at = min(t for t in healthy if t >= executor_done)
            stable_at = max(e["at"] for e in incident["events"] if e["kind"] == "stable")
            recovered_at = max(e["at"] for e in incident["events"] if e["kind"] == "recovered")
            total = recovered - clicked
            metrics_lag = healthy_at - executor_done
            results.append({
                "total": total, "executor": executor, "metrics_lag": metrics_lag,
                "overhead": total - executor - STABLE_FOR - metrics_lag,
                "to_approved": incident["approved_at"] - clicked, "to_executor": steps[0]["started_at"] - clicked,
                "visible_to_recovered": recovered - healthy_at - STABLE_FOR,
                "to_stable": stable_at - healthy_at, "stable_overshoot": recovered_at - stable_at - STABLE_FOR,
                "posting": recovered - recovered_at,
            })
    overheads = [r["overhead"] for r in results]
    rows = [Row("3 recovery overhead", f"click -> verified stable minus executor, `stable_for` ({STABLE_FOR:g} s) and "
                f"metrics lag ({SERVICES} rollbacks; verify every 1 s): median / worst",
                f"{median(overheads):.2f} s / {max(overheads):.2f} s", "<= 1 s", max(overheads) <= 1.0)]
    def each(key: str) -> str:
        return ", ".join(f"{r[key]:.2f}" for r in results)

    notes = [f"click -> Recovered total {each('total')} s; executor {each('executor')} s; metrics lag (alias poll + "
             f"scrape + 5 s rate window) {each('metrics_lag')} s",
             f"overhead split: click -> executor started {each('to_executor')} s; healthy in Prometheus -> Recovered "
             f"posted, minus stable_for {each('visible_to_recovered')} s = healthy in Prometheus -> first stable "
             f"verify tick {each('to_stable')} s (up to one `verify.every`) + stable -> recovered beyond stable_for "
             f"{each('stable_overshoot')} s + recorded -> posted {each('posting')} s"]
    report("3 recovery overhead", rows, notes)


if __name__ == "__main__":
    main()
