"""Run the ten benchmarks one after the other and print their figures as the README's Markdown table.

`make bench` (or `.venv/bin/python benchmarks/run_all.py [NAME ...]`) runs each script as its own process,
shows its output, and collects the `RESULT {json}` line each prints last. Exits 1 if a script failed;
missed targets are reported in the table, not as a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("ack_latency", "detection_latency", "recovery_overhead", "evaluation_at_scale", "slack_budget", "footprint",
           "oversized_body", "approval_under_dry_runs", "serve_at_scale", "failover")


def run(name: str) -> dict[str, object] | None:
    print(f"--- {name} ---", flush=True)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(HERE / f"{name}.py")], cwd=HERE.parent, capture_output=True, text=True)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
        else:
            print(line)
    print(f"({time.monotonic() - started:.0f} s)", flush=True)
    if proc.returncode != 0 or result is None:
        print(proc.stderr[-3000:], file=sys.stderr)
        print(f"{name} FAILED (exit {proc.returncode})", file=sys.stderr)
        return None
    return result


def table(results: list[dict[str, object]]) -> str:
    lines = ["| # | measured | figure | target | met |", "|---|---|---|---|---|"]
    for result in results:
        for row in result["rows"]:  # type: ignore[attr-defined]
            met = {True: "yes", False: "**no**", None: "—"}[row["met"]]
            number = str(row["benchmark"]).split(" ", 1)[0]
            lines.append(f"| {number} | {row['figure']} | {row['value']} | {row['target']} | {met} |")
    return "\n".join(lines)


def main() -> int:
    names = sys.argv[1:] or list(SCRIPTS)
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(SCRIPTS)}", file=sys.stderr)
        return 2
    results = [run(name) for name in names]
    done = [r for r in results if r is not None]
    print("\n" + table(done))
    return 0 if len(done) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
