"""Benchmark 5, Slack API budget: Web API calls per incident, the busiest chat.update rate during verification,
and what the bot does with 429s.

One incident from breach to "Recovered" against a real `rollback-bot serve` (verify every 1 s, `stable_for`
9 s, so the progress message has many ticks to be edited on). Once verification has started, the fake Slack
API answers the next 2 chat.update calls and the next chat.postMessage with HTTP 429 and Retry-After: 1.
Every call the fake received is recorded with its time. Targets: at most one chat.update per 3 s per
incident while verifying, and no 429 storm (each retry only after Retry-After).
"""

from __future__ import annotations

import time
from collections import Counter

from _common import Row, Stage, report

from sandbox.slack_api import Call

RETRY_AFTER = 1
UPDATE_WINDOW = 3.0


def busiest(times: list[float], window: float) -> int:
    """The most calls within any `window` seconds."""
    return max((sum(1 for t in times if start <= t < start + window) for start in times), default=0)


def retries_after(calls: list[Call], method: str, since: float, answered_429: int) -> list[float]:
    """Gaps between the first `answered_429 + 1` calls of `method` after `since`: each follows a 429."""
    times = [c.at for c in calls if c.method == method and c.at >= since][: answered_429 + 1]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def main() -> None:
    with Stage(services=1, for_="1s", stable_for="9s", within="60s") as stage:
        name = stage.names[0]
        stage.break_service(name)
        message, warned = stage.warning_for(name)
        stage.click(message, "rollback_approve")
        stage.slack.wait_for(lambda c: c.method == "chat.postMessage" and "Verifying" in c.params.get("text", ""),
                             timeout=30)
        injected = time.time()
        stage.slack.fail_next("chat.update", status=429, retry_after=RETRY_AFTER, times=2)
        stage.slack.fail_next("chat.postMessage", status=429, retry_after=RETRY_AFTER, times=1)
        stage.slack.wait_for(lambda c: c.method == "chat.postMessage" and "Summary" in c.params.get("text", ""),
                             timeout=90)
        time.sleep(3)  # anything the bot still sends about this incident
        calls = [c for c in stage.slack.calls() if c.at >= warned - 0.001]
        incident = stage.incident_rows()[0]
    by_method = Counter(c.method for c in calls)
    # The fake answered 429 to the first 2 chat.update and the first chat.postMessage after the injection.
    rejected = {id(c) for c in [c for c in calls if c.method == "chat.update" and c.at >= injected][:2]}
    rejected |= {id(c) for c in [c for c in calls if c.method == "chat.postMessage" and c.at >= injected][:1]}
    done = incident["finished_at"] or time.time()
    updates = [c for c in calls if c.method == "chat.update" and id(c) not in rejected]
    verifying = [c.at for c in updates if incident["executed_at"] <= c.at <= done]
    most = busiest(verifying, UPDATE_WINDOW)
    progress = [c.at for c in updates if "Verifying" in str(c.params.get("text"))]
    gaps = [b - a for a, b in zip(progress, progress[1:], strict=False)]
    update_gaps = retries_after(calls, "chat.update", injected, 2)
    post_gaps = retries_after(calls, "chat.postMessage", injected, 1)
    waited = all(g >= RETRY_AFTER - 0.05 for g in update_gaps + post_gaps)
    total_429 = 3
    rows = [
        Row("5 Slack API budget", "Web API calls per incident (warning -> summary, 3 of them answered 429)",
            f"{len(calls)}: " + ", ".join(f"{m} {n}" for m, n in by_method.most_common()), "report", None),
        Row("5 Slack API budget", f"busiest accepted chat.update count in any {UPDATE_WINDOW:g} s while verifying "
            "(all messages of the incident); shortest gap between progress edits",
            f"{most}; {min(gaps):.2f} s", f"<= 1 per {UPDATE_WINDOW:g} s", most <= 1),
        Row("5 Slack API budget", f"429s answered with Retry-After: {RETRY_AFTER} s: retry gaps",
            ", ".join(f"{g:.2f} s" for g in update_gaps + post_gaps) + f" ({total_429} 429s, no other retries)",
            "each >= Retry-After", waited and len(update_gaps) == 2 and len(post_gaps) == 1),
    ]
    notes = [f"verification lasted {done - incident['executed_at']:.1f} s; accepted chat.update calls at "
             + ", ".join(f"+{t - incident['executed_at']:.2f}" for t in verifying) + " s after the plan executed"]
    report("5 Slack API budget", rows, notes)


if __name__ == "__main__":
    main()
