"""Benchmark 2, detection latency: from the simulated service starting to breach to the warning reaching the
fake Slack API, minus the policy's `for`.

A real `rollback-bot serve` watches 5 simulated services (evaluate_every 1 s, `for` 2 s, Prometheus
scraping every 1 s). One after the other, each service's champion alias is moved to the slow, low-AUC v2;
the simulator records the moment it starts serving v2, and the fake Slack API the moment the warning
arrives. Target: <= one evaluation interval + 1 s (the 1 s covers the scrape that makes a breach visible).
"""

from __future__ import annotations

import time

from _common import Row, Stage, median, report

SERVICES = 5
EVALUATE_EVERY = 1.0
FOR = 2.0


def main() -> None:
    samples: list[float] = []
    starts: dict[str, float] = {}
    with Stage(services=SERVICES, evaluate_every=f"{EVALUATE_EVERY:g}s", for_=f"{FOR:g}s") as stage:
        time.sleep(3)  # a few healthy cycles first
        for name in stage.names:
            started = starts[name] = stage.break_service(name)
            _, warned = stage.warning_for(name, timeout=60)
            samples.append(warned - started - FOR)
            time.sleep(1.3)  # the next breach starts at another point of the evaluation cycle
        incidents = {i["service"]: i for i in stage.incident_rows()}
    worst, target = max(samples), EVALUATE_EVERY + 1.0
    rows = [Row("2 detection latency", f"breach start -> warning at the fake Slack API, minus `for` ({SERVICES} "
                f"breaches; evaluate_every {EVALUATE_EVERY:g} s, scrape 1 s): median / worst",
                f"{median(samples):.2f} s / {worst:.2f} s", f"<= {target:g} s", worst <= target)]
    parts = []
    for name in stage.names:  # the bot's own timestamps: first breached reading, incident opened, warning posted
        i = incidents[name]
        parts.append(f"{i['breach_started_at'] - starts[name]:.2f} + {i['opened_at'] - i['breach_started_at'] - FOR:.2f}"
                     f" + {(i['warned_at'] or i['opened_at']) - i['opened_at']:.2f}")
    notes = ["each: " + ", ".join(f"{s:.2f}" for s in samples) + " s",
             "split (s): until the first breached reading (scrape + evaluation cycle) + sustained after `for` + "
             "incident opened until warning posted (plan baseline, Slack): " + "; ".join(parts)]
    report("2 detection latency", rows, notes)


if __name__ == "__main__":
    main()
