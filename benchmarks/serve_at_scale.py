"""Benchmark 9, serve at scale: a real `rollback-bot serve` process watching 1,000 and 10,000 services x 2 SLOs
written per service (each query with its literal `service="svc-0001"` matcher and no `by:`, as the README and
examples/policy.yaml teach), measured from outside: the way issue 14 says it is done.

Per scale, everything real and on 127.0.0.1: a child process (synthetic_exporter.py) exposes every service's
latency histogram and `model_requests_total{code="200"|"500"}` counters (every 10th service slow, 0.45 s and 5 %
errors, so both its SLOs breach; the others 0.05 s, no errors); a real Prometheus scrapes it; `serve` runs in the
runtime-only virtualenv of benchmark 6 (build/bench-runtime-venv: no mlflow server package, no pandas, so RSS is
the deployed footprint) against the fake Slack Web API and one real `mlflow server` shared by both scales.
Scales (the default settings otherwise; `for: 10m`, so the slow services breach but no incident opens during the
run, and `healthy_for: 30m`, so the promotion gate never promotes):
  A: 1,000 services, `evaluate_every: 5s`, scrape_interval 5s;
  B: 10,000 services, `evaluate_every: 15s`, scrape_interval 15s.

Figures per scale:
 1. start to /healthz 200 (ready), and the CPU used until then.
 2. Prometheus queries per cycle: Prometheus's own counter prometheus_http_requests_total{handler="/api/v1/query"}
    over a quiet window, divided by the cycles the bot finished in it (its rollback_evaluation_seconds_count).
 3. bot CPU per cycle in that quiet window (no Slack traffic): utime+stime (+ reaped children) from /proc of the
    serve process and every process below it, sampled in the idle gap just before each cycle starts.
 4. worst cycle wall time (rollback_evaluation_last_seconds if the bot has it, else the histogram's sum grown by
    one cycle) over the whole run, and whether every cycle finished within evaluate_every and none was skipped.
 5. ack latency while evaluating: 250 signed slash commands a round (`/rollback help` and `/rollback status`,
    half each, user U0APPROVER, channel C0BENCHSVC, response_url at the fake Slack API), each round on 250
    connections opened just before it, in two load shapes of >= 1,000 requests each: "paced" (a round's 250
    written at uniformly random moments within one evaluate_every, the earliest on the first-opened connection)
    and "burst" (all 250 written at the same instant, each round started at a random moment: every other round
    at a random moment while a cycle should be running, so the shape is measured during evaluation too; split
    at 100 connections too, waitress's default connection_limit). The client runs in a child
    process (one asyncio thread), so the benchmark's own work never delays it. p50 / p95 / p99 of all of them
    and of those whose [sent, acked] overlapped an evaluation cycle; for scale, two bursts of 250 GET /healthz
    (the HTTP server's floor on this machine).
 6. RSS (VmRSS of serve + its children) after the measurement.
 7. the per-SLO floor, same run, in this process: bot.slo.evaluation.read(group=False) once (one query per SLO):
    queries, CPU, wall; read(group=True) once beside it. Grouped and per-SLO readings, and the serve process's
    rollback_slo_breaching gauges, must agree for every (service, SLO), and the breaching set must be exactly the
    slow services: otherwise the script exits non-zero.
Targets (issue 14): A: ready <= 3 s, <= 5 queries, <= 0.25 s CPU per cycle, ack p99 <= 50 ms, RSS <= 150 MB;
B: ready <= 15 s, <= 10 queries, <= 2 s CPU per cycle, every cycle within 15 s, RSS <= 300 MB.

When the cycles run: the bot's /metrics is read (it renders every SLO's gauge: tens of ms of the bot's CPU at
1,000 services, hundreds at 10,000), so it is not polled every 50 ms. The cycle start comes from
rollback_evaluation_last_start_seconds when the bot exposes it; otherwise from the scheduler's fixed grid
(start = first + k * evaluate_every), found by reading /metrics every ~100 ms over the first cycles, and each
cycle's end is its start plus its duration. During the measurement /metrics is read once just after each
cycle's expected end (again every ~100 ms until the count moved); the CPU of those reads, measured around each,
is taken out of figure 3. `--quick` runs scale A only; `--services N --every S` one scale of your own (the targets
of A up to 1,000 services, else B's).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from _common import ROOT, Row, median, ms, need_prometheus, percentile, report
from ack_latency import request_bytes
from footprint import runtime_venv
from synthetic_exporter import service_name

from bot.infra.prom import Prometheus
from bot.slo.evaluation import BREACH, read
from bot.slo.policy_file import parse_policy
from sandbox.servers import MlflowServer, PrometheusServer, free_port
from sandbox.signing import slash_command_body
from sandbox.slack_api import FakeSlackAPI
from tests.story_env import APPROVER, BotProcess

BENCH = "9 serve at scale"
CHANNEL = "C0BENCHSVC"
SLOW_EVERY = 10
CONCURRENCY = 250
ROUNDS = 4  # per load shape: 4 x 250 = 1,000 requests
LATENCY = ('histogram_quantile(0.95, sum by (le) (rate(model_request_latency_seconds_bucket'
           '{{service="{name}"}}[1m])))')
ERRORS = ('sum(rate(model_requests_total{{service="{name}",code=~"5.."}}[1m])) / '
          'sum(rate(model_requests_total{{service="{name}"}}[1m]))')
SLOS = ("p95-latency", "error-rate")
TICK = os.sysconf("SC_CLK_TCK")
ANSWERS = ("response_url", "chat.postEphemeral")  # help answers at the response_url, status ones ephemerally
WAITRESS_CONNECTIONS = 100  # waitress's default connection_limit: the burst figures are split there too
GRID_TOLERANCE = 0.05  # seconds a cycle may start after its grid point and still be taken for it


@dataclass(frozen=True)
class Scale:
    name: str
    services: int
    every: float
    quiet_cycles: int
    ready_target: float | None = None
    queries_target: float | None = None
    cpu_target: float | None = None
    rss_target: float | None = None
    ack_target: float | None = None

    @property
    def label(self) -> str:
        return f"{self.name}: {self.services:,} services x 2 SLOs, every {self.every:g}s"


SCALES = {
    "A": Scale("A", 1000, 5.0, 8, ready_target=3, queries_target=5, cpu_target=0.25, rss_target=150,
               ack_target=0.050),
    "B": Scale("B", 10000, 15.0, 4, ready_target=15, queries_target=10, cpu_target=2.0, rss_target=300),
}


def policy_text(services: int, every: float) -> str:
    lines = [f"evaluate_every: {every:g}s", "services:"]
    for index in range(services):
        name = service_name(index)
        lines += [f"  {name}:", f"    channel: {CHANNEL}", f"    approvers: [{APPROVER}]", f"    model: {name}-model",
                  "    slos:",
                  f"      - {{name: p95-latency, query: '{LATENCY.format(name=name)}', above: 0.25, for: 10m}}",
                  f"      - {{name: error-rate, query: '{ERRORS.format(name=name)}', above: 0.02, for: 10m}}",
                  "    rollback:",
                  f"      - mlflow_alias: {{model: {name}-model, alias: champion, to: previous_champion}}",
                  "    promote: {from: candidate, to: champion, healthy_for: 30m}"]
    return "\n".join(lines) + "\n"


# -- /proc: the serve process and everything below it ----------------------------------------------------------

def _stat(pid: int | str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None  # gone meanwhile


def tree(pid: int) -> list[int]:
    """pid and its descendants (walks every /proc/*/stat for parent ids: a worker process counts too)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(entry)
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system, plus reaped children's) of pid and its descendants so far."""
    total = 0
    for p in tree(pid):
        fields = _stat(p)
        if fields is not None:
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / TICK


def tree_rss_mb(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


# -- the bot's /metrics and Prometheus's own ---------------------------------------------------------------------

def _number(text: str, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def breaching_gauges(text: str) -> dict[tuple[str, str], bool]:
    out = {}
    for labels, value in re.findall(r"^rollback_slo_breaching\{([^}]*)\} (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        out[(found.get("service", ""), found.get("slo", ""))] = float(value) == 1.0
    return out


def prometheus_queries(url: str) -> float:
    """Instant queries Prometheus has answered (any code), from its own /metrics."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(float(v) for labels, v in re.findall(r"^prometheus_http_requests_total\{([^}]*)\} (\S+)$", text, re.M)
               if 'handler="/api/v1/query"' in labels)


@dataclass
class Poll:
    """One read of the bot's /metrics: when it was sent and answered, and what it said."""

    before: float
    after: float
    count: float
    total: float
    last_start: float | None
    last_seconds: float | None
    cpu_before: float | None = None  # the bot's CPU just before and after the read (quiet window only)
    cpu_after: float | None = None


@dataclass
class Cycle:
    """An evaluation cycle as seen from outside: `cycles` > 1 when several ended between two reads (then the
    interval covers them all and `seconds` is their total)."""

    start: float
    end: float
    seconds: float
    cycles: int = 1
    exact: bool = True  # start and end known, not only bounded
    low: float | None = None  # bounds of the start when it is not exact
    high: float | None = None


class Tracker:
    """Knows when the bot's evaluation cycles ran, reading its /metrics as little as it can (see the docstring)."""

    def __init__(self, url: str, pid: int, every: float) -> None:
        self.url = f"{url}/metrics"
        self.pid = pid
        self.every = every
        self.session = requests.Session()
        self.polls: list[Poll] = []
        self.cycles: list[Cycle] = []
        self.anchor: float | None = None  # a grid point: cycles start at anchor + k * every
        self.anchor_spread = math.inf
        self.gauges = False
        self.retry = 0.1
        self.last_text = ""

    def poll(self, bracket: bool = False) -> Poll:
        cpu_before = tree_cpu(self.pid) if bracket else None
        before = time.time()
        text = self.session.get(self.url, timeout=60).text
        after = time.time()
        cpu_after = tree_cpu(self.pid) if bracket else None
        self.last_text = text
        count = _number(text, "rollback_evaluation_seconds_count")
        if count is None:
            raise RuntimeError("the bot's /metrics has no rollback_evaluation_seconds_count")
        poll = Poll(before, after, count, _number(text, "rollback_evaluation_seconds_sum") or 0.0,
                    _number(text, "rollback_evaluation_last_start_seconds"),
                    _number(text, "rollback_evaluation_last_seconds"), cpu_before, cpu_after)
        self.retry = max(0.1, 1.2 * (after - before))
        self._observe(poll)
        return poll

    def _observe(self, poll: Poll) -> None:
        prev = self.polls[-1] if self.polls else None
        self.polls.append(poll)
        if prev is None or poll.count <= prev.count:
            return
        n, seconds = round(poll.count - prev.count), poll.total - prev.total
        if poll.last_start is not None and poll.last_seconds is not None:  # the bot says when its last cycle ran
            self.gauges = True
            self.anchor, self.anchor_spread = poll.last_start, 0.0
            if poll.last_start + poll.last_seconds <= poll.after:  # not the start of a cycle running now
                if n > 1:
                    self.cycles.append(Cycle(self._after_last(prev), poll.last_start, seconds - poll.last_seconds,
                                             n - 1, False))
                self.cycles.append(Cycle(poll.last_start, poll.last_start + poll.last_seconds, poll.last_seconds))
                return
            # the next cycle had started before this read: its start is a grid point, the finished one's is not known
        if n == 1:  # it ended between the two reads: it started in (prev.before - seconds, poll.after - seconds]
            low, high = prev.before - seconds, poll.after - seconds
            start = self._grid_start(low, high)
            exact = start is not None
            if start is None:
                start = (low + high) / 2
            self.cycles.append(Cycle(start, start + seconds, seconds, 1, exact, low, high))
        else:
            self.cycles.append(Cycle(self._after_last(prev), poll.after, seconds, n, False))

    def _after_last(self, prev: Poll) -> float:
        return max(self.cycles[-1].end if self.cycles else prev.before - self.every, prev.before - self.every)

    def _grid_start(self, low: float, high: float) -> float | None:
        if self.anchor is None:
            return None
        k = math.floor((high + GRID_TOLERANCE - self.anchor) / self.every)
        point = self.anchor + k * self.every
        return point if point > low - GRID_TOLERANCE else None

    def calibrate(self, cycles: int = 3, timeout: float = 120) -> None:
        """Read /metrics every ~100 ms (or as fast as it answers) until `cycles` cycles ended, and find the grid
        their starts lie on (unless the bot says when each started)."""
        deadline = time.monotonic() + timeout
        if not self.polls:
            self.poll()
        first = len(self.polls)
        bounds: list[tuple[float, float]] = []
        while len(bounds) < cycles and not self.gauges:
            if time.monotonic() > deadline:
                raise RuntimeError("no evaluation cycle ended while calibrating")
            time.sleep(self.retry)
            prev = self.polls[-1]
            poll = self.poll()
            if round(poll.count - prev.count) == 1:
                seconds = poll.total - prev.total
                bounds.append((prev.before - seconds, poll.after - seconds))
        if self.gauges:
            while len(self.polls) - first < 2 or self.polls[-1].count == self.polls[first - 1].count:
                time.sleep(self.retry)
                self.poll()
            return
        low, high = bounds[0]
        for other_low, other_high in bounds[1:]:
            k = round(((other_low + other_high) / 2 - (bounds[0][0] + bounds[0][1]) / 2) / self.every)
            low, high = max(low, other_low - k * self.every), min(high, other_high - k * self.every)
        if low > high:  # not on one fixed grid (a scheduler that sleeps between cycles?): bounds only, per cycle
            print(f"  note: cycle starts are not on a {self.every:g}s grid; using each cycle's bounds", flush=True)
            return
        self.anchor, self.anchor_spread = high, high - low
        for index, cycle in enumerate(self.cycles):  # the calibration's own cycles, now on the grid
            if not cycle.exact and cycle.low is not None and cycle.high is not None:
                start = self._grid_start(cycle.low, cycle.high)
                if start is not None:
                    self.cycles[index] = Cycle(start, start + cycle.seconds, cycle.seconds)

    def next_start(self, after: float) -> float:
        """When the first cycle after `after` should start."""
        if self.anchor is None:
            return (self.cycles[-1].start if self.cycles else after) + self.every
        return self.anchor + (math.floor((after - self.anchor) / self.every) + 1) * self.every

    def typical_seconds(self) -> float:
        recent = [c.seconds / c.cycles for c in self.cycles[-5:]]
        return median(recent) if recent else 0.5

    def wait_next(self, *, bracket: bool = False, stop: threading.Event | None = None,
                  timeout: float | None = None) -> bool:
        """Sleep until the next cycle should have ended, then read /metrics until it did. False if stopped."""
        count = self.polls[-1].count
        last_end = self.cycles[-1].end if self.cycles else self.polls[-1].before
        expected = self.next_start(last_end) + 1.1 * self.typical_seconds() + 0.03
        deadline = time.time() + (timeout or 4 * self.every + 60)
        wait = expected - time.time()
        while True:
            if stop is not None and stop.wait(max(0.0, wait)):
                return False
            if stop is None and wait > 0:
                time.sleep(wait)
            if self.poll(bracket).count > count:
                return True
            if time.time() > deadline:
                raise RuntimeError(f"no evaluation cycle ended within {timeout or 4 * self.every + 60:.0f} s")
            wait = self.retry


# -- the bot ----------------------------------------------------------------------------------------------------

class Serve(BotProcess):
    """tests.story_env.BotProcess (the same env and command) run by the runtime-only venv's python, its start timed."""

    def __init__(self, python: Path, workdir: Path, policy: Path, *, slack_url: str, prometheus_url: str,
                 mlflow_url: str) -> None:
        super().__init__(workdir, policy, slack_url=slack_url, prometheus_url=prometheus_url, mlflow_url=mlflow_url)
        self.cmd[0] = str(python)

    def start(self, timeout: float = 120, poll: float = 0.01) -> tuple[float, float]:  # type: ignore[override]
        """Start it; (seconds until /healthz answered 200, CPU seconds used until then)."""
        started = time.perf_counter()
        super().start(timeout, poll)
        return time.perf_counter() - started, tree_cpu(self.pid)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


# -- the load: a child process with one asyncio thread ----------------------------------------------------------

def load_child(conn: Any) -> None:
    """Runs in a child process: for each spec received, its rounds; sends back one record per request."""
    while True:
        spec = conn.recv()
        if spec is None:
            return
        try:
            conn.send(asyncio.run(_rounds(spec)))
        except Exception as exc:  # noqa: BLE001 - the parent reports it
            conn.send(f"{type(exc).__name__}: {exc}")


def _bodies(spec: dict[str, Any]) -> list[str | None]:
    if spec.get("healthz"):
        return [None] * spec["concurrency"]  # GET requests
    out: list[str | None] = []
    for i in range(spec["concurrency"]):
        text = "help" if i % 2 else "status"
        out.append(slash_command_body(text=text, user_id=spec["user"], channel_id=spec["channel"],
                                      response_url=spec["response_url"]))
    return out


async def _rounds(spec: dict[str, Any]) -> list[tuple[int, int, float, float]]:
    """(round, index in the round (= the connection's place in the opening order), sent at (unix time), seconds
    until the whole answer was read) of every request."""
    rng = random.Random(spec["seed"])
    url, every = spec["url"], spec["every"]
    host, port = urlsplit(url).hostname, urlsplit(url).port
    records: list[tuple[int, int, float, float]] = []
    for number in range(spec["rounds"]):
        bodies = _bodies(spec)
        raw = [request_bytes(url, body) for body in bodies]  # signed now: the timestamps are fresh
        conns = [await asyncio.open_connection(host, port) for _ in raw]
        if spec["shape"] == "paced":  # the earliest moment on the first-opened connection
            base = time.time() + 0.05
            moments = sorted(base + rng.uniform(0, every) for _ in raw)
            results = await asyncio.gather(*(_one(c, d, at=at) for c, d, at in zip(conns, raw, moments, strict=True)))
        else:
            await asyncio.sleep(max(0.0, _burst_moment(spec, number, rng) - time.time()))
            written = []
            for (_, writer), data in zip(conns, raw, strict=True):  # all written at once
                written.append((time.time(), time.perf_counter()))
                writer.write(data)
            results = await asyncio.gather(*(_one(c, d, written=w) for c, d, w in zip(conns, raw, written,
                                                                                        strict=True)))
        records += [(number, index, sent, took) for index, (sent, took) in enumerate(results)]
        await asyncio.sleep(0.5)  # the round's listeners (status, help answers) run before the next round
    return records


def _burst_moment(spec: dict[str, Any], number: int, rng: random.Random) -> float:
    """A random moment for burst round `number`: an odd round anywhere in evaluate_every; an even one, when the
    cycle grid is known, at a random moment while the next cycle should be running (its typical duration,
    spec["busy"], from its start), so the shape is measured during evaluation too."""
    every, anchor, now = spec["every"], spec.get("anchor"), time.time() + 0.2
    if anchor is None or number % 2:
        return now + rng.uniform(0, every)
    phase = rng.uniform(0, spec["busy"])
    return anchor + math.ceil((now - anchor - phase) / every) * every + phase


async def _one(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], data: bytes, *, at: float | None = None,
               written: tuple[float, float] | None = None) -> tuple[float, float]:
    """Write `data` at `at` (unless it was `written` already: (unix time, perf_counter)) and read the whole answer;
    (sent at, seconds until answered). HTTP 200 required."""
    reader, writer = conn
    if written is None:
        await asyncio.sleep(max(0.0, (at or 0.0) - time.time()))
        written = (time.time(), time.perf_counter())
        writer.write(data)
    await writer.drain()
    answer = await reader.read()  # Connection: close, so the answer ends with EOF
    took = time.perf_counter() - written[1]
    writer.close()
    status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/") else b"?"
    if status != b"200":
        raise RuntimeError(f"HTTP {status.decode()}: {answer[:300]!r}")
    return written[0], took


class Load:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.proc = context.Process(target=load_child, args=(child,), daemon=True)
        self.proc.start()

    def run(self, spec: dict[str, Any]) -> list[tuple[int, int, float, float]]:
        self.conn.send(spec)
        result = self.conn.recv()
        if isinstance(result, str):
            raise RuntimeError(f"load client: {result}")
        return result  # type: ignore[no-any-return]

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)


# -- one scale ----------------------------------------------------------------------------------------------------

def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Mark:
    at: float
    cpu: float
    queries: float
    count: float
    next_start: float


def quiet_window(tracker: Tracker, prom_url: str, cycles: int) -> tuple[list[Mark], list[float], list[str]]:
    """CPU marks in the idle gap before each of `cycles` cycles (and after the last); per-cycle CPU less the
    benchmark's /metrics reads; problems seen (a mark that came too late, two cycles in one window)."""
    delta = min(0.25, tracker.every * 0.05)
    marks: list[Mark] = []
    problems: list[str] = []

    def mark() -> None:
        nxt = tracker.next_start(tracker.cycles[-1].end)
        sleep_until(nxt - delta)
        marks.append(Mark(time.time(), tree_cpu(tracker.pid), prometheus_queries(prom_url), tracker.polls[-1].count,
                          nxt))

    mark()
    first_poll = len(tracker.polls)
    for _ in range(cycles):
        tracker.wait_next(bracket=True)
        mark()
    polls = tracker.polls[first_poll:]
    clean = []
    for p in polls:  # reads that began after the cycle before them ended cost only themselves
        ended = [c for c in tracker.cycles if c.end <= p.after]
        if ended and p.before >= ended[-1].end and p.cpu_before is not None and p.cpu_after is not None:
            clean.append(p.cpu_after - p.cpu_before)
    read_cost = median(clean) if clean else 0.0
    per_cycle = []
    for a, b in zip(marks, marks[1:], strict=False):
        inside = [p for p in polls if a.at <= p.before < b.at]
        cost = 0.0
        for p in inside:
            ended = [c for c in tracker.cycles if c.end <= p.after]
            own = p.cpu_after - p.cpu_before if p.cpu_after is not None and p.cpu_before is not None else read_cost
            cost += own if ended and p.before >= ended[-1].end else read_cost
        n = round(b.count - a.count)
        if n != 1:
            problems.append(f"{n} cycles between two CPU marks")
        if n:
            per_cycle.append((b.cpu - a.cpu - cost) / n)
        started = [c.start for c in tracker.cycles if a.at - 1 <= c.start < b.at]
        if started and started[0] < a.at:
            problems.append(f"a CPU mark came {ms(a.at - started[0])} after its cycle started")
    problems.append(f"/metrics read: {ms(read_cost)} of the bot's CPU each ({len(polls)} reads in "
                    f"{cycles} cycles, taken out)")
    return marks, per_cycle, problems


def ack_stats(records: list[tuple[int, int, float, float]], cycles: list[Cycle]) -> dict[str, Any]:
    spans = [(c.start, c.end) for c in cycles]
    all_: list[float] = []
    during: list[float] = []
    first: list[float] = []
    rest: list[float] = []
    for _, index, sent, took in records:
        all_.append(took)
        (first if index < WAITRESS_CONNECTIONS else rest).append(took)
        if any(start < sent + took and end > sent for start, end in spans):
            during.append(took)
    return {"all": all_, "during": during, "first": first, "rest": rest}


def triple(values: list[float]) -> str:
    if not values:
        return "none"
    return " / ".join(ms(percentile(values, p)) for p in (50, 95, 99))


def floor_reads(prom_url: str, text: str) -> dict[str, Any]:
    policy = parse_policy(text)
    prom = Prometheus(prom_url, timeout=60)
    out: dict[str, Any] = {}
    for label, group in (("per-SLO", False), ("grouped", True)):
        sent, cpu, wall = prom.queries_sent, time.process_time(), time.perf_counter()
        readings = read(prom, policy.services.values(), group=group)
        out[label] = {"queries": prom.queries_sent - sent, "cpu": time.process_time() - cpu,
                      "wall": time.perf_counter() - wall,
                      "status": {(name, r.slo): r.status for name, rs in readings.items() for r in rs}}
    prom.close()
    return out


def run_scale(scale: Scale, *, python: Path, how: str, binary: str, slack: FakeSlackAPI, mlflow_url: str,
              load: Load, rows: list[Row], notes: list[str], failures: list[str]) -> None:
    started = time.monotonic()
    label = scale.label
    print(f"--- scale {label} ---", flush=True)
    slack.reset()
    with tempfile.TemporaryDirectory(prefix="rollback-bench-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        exporter = subprocess.Popen([sys.executable, str(Path(__file__).with_name("synthetic_exporter.py")),
                                     "--services", str(scale.services), "--slow-every", str(SLOW_EVERY),
                                     "--port", str(port)], cwd=ROOT)
        serve: Serve | None = None
        try:
            with PrometheusServer(tmp / "prom", targets=[f"127.0.0.1:{port}"], binary=binary,
                                  scrape_interval=f"{scale.every:g}s") as prom:
                text = policy_text(scale.services, scale.every)
                (tmp / "policy.yaml").write_text(text)
                serve = Serve(python, tmp, tmp / "policy.yaml", slack_url=slack.url, prometheus_url=prom.url,
                              mlflow_url=mlflow_url)
                ready, ready_cpu = serve.start()
                print(f"  ready in {ready:.2f} s", flush=True)
                tracker = Tracker(serve.url, serve.pid, scale.every)
                tracker.calibrate()
                probe = 'count(rate(model_requests_total{code="500"}[1m]))'

                def data() -> bool:
                    result = prom.query(probe)
                    return bool(result) and int(float(result[0]["value"][1])) == scale.services
                wait_for(data, 120 + 4 * scale.every, f"Prometheus to have the rates of {scale.services} services")
                data_at = time.time()
                while not [c for c in tracker.cycles if c.start > data_at]:  # one cycle on full data (it stores
                    tracker.wait_next()                                      # the new states); steady from then
                print(f"  data ready, warm ({time.monotonic() - started:.0f} s); quiet window", flush=True)

                marks, per_cycle, quiet_notes = quiet_window(tracker, prom.url, scale.quiet_cycles)
                served = {"after the quiet window": breaching_gauges(tracker.last_text)}  # its last cycle's
                quiet_cycles = marks[-1].count - marks[0].count
                queries = (marks[-1].queries - marks[0].queries) / max(quiet_cycles, 1)

                print("  ack load", flush=True)
                stop = threading.Event()

                def follow() -> None:
                    while tracker.wait_next(stop=stop):
                        pass
                follower = threading.Thread(target=follow, name="tracker", daemon=True)
                first_ack_cycle = len(tracker.cycles)
                follower.start()
                spec = {"url": f"{serve.url}/slack/events", "every": scale.every, "rounds": ROUNDS,
                        "concurrency": CONCURRENCY, "channel": CHANNEL, "user": APPROVER,
                        "response_url": slack.response_url, "services": scale.services}
                load_began = time.time()
                paced = load.run({**spec, "shape": "paced", "seed": 1})
                burst = load.run({**spec, "shape": "burst", "seed": 2, "anchor": tracker.anchor,
                                  "busy": tracker.typical_seconds()})
                health = load.run({**spec, "shape": "burst", "seed": 4, "rounds": 2, "healthz": True,
                                   "url": f"{serve.url}/healthz"})
                commands_acked = max(s + t for _, _, s, t in paced + burst)
                last_ack = max([commands_acked] + [s + t for _, _, s, t in health])
                wait_for(lambda: any(c.start > last_ack for c in tracker.cycles), 4 * scale.every + 60,
                         "a cycle after the last ack", interval=0.2)
                stop.set()
                follower.join(60)
                answers = [c.at for c in slack.calls() if c.method in ANSWERS and c.at >= load_began]
                slack.reset()
                ack_cycles = tracker.cycles[first_ack_cycle:]
                served["after the ack load"] = breaching_gauges(tracker.last_text)
                rss = tree_rss_mb(serve.pid)

                print("  per-SLO floor and agreement", flush=True)
                floor = floor_reads(prom.url, text)
                bot_metrics = requests.get(f"{serve.url}/metrics", timeout=60).text
                after_floor = breaching_gauges(bot_metrics)
                mismatches = _grouping_mismatches(bot_metrics)
                failed_queries = [line for line in serve.log().splitlines() if "query failed" in line]
        finally:
            if serve is not None:
                serve.stop()
            exporter.terminate()
            exporter.wait(10)

    # -- figures ----------------------------------------------------------------------------------------------
    measured = [c for c in tracker.cycles if c.end >= marks[0].at]
    worst = max(c.seconds / c.cycles for c in measured)
    grid_ok = True
    if tracker.anchor is not None:
        expected_runs = round((measured[-1].start - measured[0].start) / scale.every) + 1
        finished = sum(c.cycles for c in measured)
        grid_ok = finished >= expected_runs
    else:
        expected_runs = finished = sum(c.cycles for c in measured)
    within = worst < scale.every and grid_ok
    cpu_med, cpu_worst = median(per_cycle), max(per_cycle)
    paced_s, burst_s = ack_stats(paced, ack_cycles), ack_stats(burst, ack_cycles)

    def met(value: float, target: float | None) -> bool | None:
        return None if target is None else value <= target

    rows += [
        Row(BENCH, f"{label}: start to /healthz ready ({how}; CPU until then)",
            f"{ready:.2f} s ({ready_cpu:.2f} s CPU)", _target(scale.ready_target, "s"), met(ready, scale.ready_target)),
        Row(BENCH, f"{label}: Prometheus queries per cycle (Prometheus's own counter / cycles, "
            f"{quiet_cycles:.0f} cycles)", f"{queries:.1f}", _target(scale.queries_target, ""),
            met(queries, scale.queries_target)),
        Row(BENCH, f"{label}: bot CPU per cycle, quiet (median / worst of {len(per_cycle)})",
            f"{ms(cpu_med)} / {ms(cpu_worst)}", _target(scale.cpu_target, "s"), met(cpu_worst, scale.cpu_target)),
        Row(BENCH, f"{label}: worst cycle wall time of {finished} (quiet and under load); every cycle within "
            f"evaluate_every, none skipped", f"{ms(worst)}; {'yes' if within else 'NO'}",
            f"< {scale.every:g} s", within),
    ]
    for shape, stats in (("paced", paced_s), ("burst", burst_s)):
        p99 = max(percentile(stats["all"], 99), percentile(stats["during"], 99) if stats["during"] else 0.0)
        rows.append(Row(BENCH, f"{label}: ack, {CONCURRENCY} signed slash commands a round, {shape}: p50 / p95 / p99 "
                        f"all {len(stats['all'])}; of the {len(stats['during'])} overlapping a cycle",
                        f"{triple(stats['all'])}; {triple(stats['during'])}",
                        "p99 <= 50 ms" if scale.ack_target else "report", met(p99, scale.ack_target)))
    health_took = [t for _, _, _, t in health]
    rows.append(Row(BENCH, f"{label}: for scale, {CONCURRENCY} concurrent GET /healthz at random moments "
                    f"({len(health_took)}): p50 / p95 / p99", triple(health_took), "report", None))
    rows.append(Row(BENCH, f"{label}: RSS of serve (+ children) after the measurement ({how})", f"{rss:.0f} MB",
                    _target(scale.rss_target, "MB"), met(rss, scale.rss_target)))
    per_slo, grouped = floor["per-SLO"], floor["grouped"]
    rows.append(Row(BENCH, f"{label}: per-SLO floor in-process, read(group=False): queries / CPU / wall; "
                    "read(group=True)", f"{per_slo['queries']} / {ms(per_slo['cpu'])} / {ms(per_slo['wall'])}; "
                    f"{grouped['queries']} / {ms(grouped['cpu'])} / {ms(grouped['wall'])}", "for comparison", None))

    expected = {(service_name(i), slo) for i in range(0, scale.services, SLOW_EVERY) for slo in SLOS}
    keys = [(service_name(i), slo) for i in range(scale.services) for slo in SLOS]
    breaching = {k for k in keys if per_slo["status"].get(k) == BREACH}
    problems = []
    if breaching != expected:
        problems.append(f"per-SLO breaching {len(breaching)}, not the {len(expected)} SLOs of the slow services")
    differ = [k for k in keys if (grouped["status"].get(k) == BREACH) != (k in breaching)]
    if differ:
        problems.append(f"grouped in-process differs for {len(differ)} (e.g. {differ[:3]})")
    for when, gauges in served.items():  # a missing gauge (None) differs too
        differ = [k for k in keys if gauges.get(k) != (k in breaching)]
        if differ:
            problems.append(f"serve's gauges {when} differ for {len(differ)} (e.g. {differ[:3]})")
    agree = not problems
    rows.append(Row(BENCH, f"{label}: per-SLO, grouped (in-process) and serve's rollback_slo_breaching (after the quiet "
                    "window and after the ack load) agree for every (service, SLO); breaching = the slow services",
                    f"{'yes' if agree else 'NO'} ({len(keys):,} SLOs, {len(breaching):,} breaching)", "all agree",
                    agree))
    if problems:
        failures.append(f"{label}: " + "; ".join(problems))
    late = [k for k in keys if after_floor.get(k) != (k in breaching)]
    if late or failed_queries:
        notes.append(f"{label}: after the per-SLO floor's {per_slo['queries']:,} queries (Prometheus busy) serve's gauges "
                     f"differ for {len(late):,} SLOs; serve logged {len(failed_queries)} failed queries"
                     + (f", the last: {failed_queries[-1][-300:]}" if failed_queries else ""))

    statuses: dict[str, int] = {}
    for s in per_slo["status"].values():
        statuses[s] = statuses.get(s, 0) + 1
    timing = ("from rollback_evaluation_last_start_seconds" if tracker.gauges else
              f"on the scheduler's grid (+/- {ms(tracker.anchor_spread / 2)})" if tracker.anchor is not None else
              "bounded by the reads only (no fixed grid found)")
    notes.append(f"{label}: cycle starts {timing}; quiet CPU per cycle {', '.join(ms(c) for c in per_cycle)}; "
                 + "; ".join(quiet_notes))
    notes.append(f"{label}: cycle wall times (s): quiet and load "
                 f"{', '.join(f'{c.seconds / c.cycles:.2f}' for c in measured)}; {len(ack_cycles)} cycles during "
                 f"the ack load; per-SLO statuses {statuses}")
    for shape, stats in (("paced", paced_s), ("burst", burst_s)):
        notes.append(f"{label}: {shape}: slowest ack {ms(max(stats['all']))}; {len(stats['during'])} of "
                     f"{len(stats['all'])} overlapped a cycle; p50 / p99 on the first {WAITRESS_CONNECTIONS} "
                     f"connections of a round {ms(percentile(stats['first'], 50))} / {ms(percentile(stats['first'], 99))}"
                     f", on the other {CONCURRENCY - WAITRESS_CONNECTIONS} {ms(percentile(stats['rest'], 50))} / "
                     f"{ms(percentile(stats['rest'], 99))} (split at waitress's default connection_limit: past it, a "
                     "connection waits to be accepted)")
    sent_total = len(paced) + len(burst)
    lag = f", the last {max(answers) - commands_acked:.1f} s after the last command was acked" if answers else ""
    notes.append(f"{label}: {len(answers)} of the {sent_total} commands' answers (help at the response_url, status "
                 f"ephemerally) reached the fake Slack API by the end of the load (+ the next cycle){lag}")
    if mismatches:
        notes.append(f"{label}: serve's /metrics says {mismatches}")
    print(f"  scale {scale.name} took {time.monotonic() - started:.0f} s", flush=True)


def _target(value: float | None, unit: str) -> str:
    if value is None:
        return "report"
    return f"<= {value:g} {unit}".rstrip()


def _grouping_mismatches(text: str) -> str:
    mismatches = _number(text, "rollback_grouping_mismatches_total")
    disabled = _number(text, "rollback_grouping_disabled_groups")
    if not mismatches and not disabled:
        return ""
    return f"grouping mismatches {mismatches}, disabled groups {disabled}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scale A only")
    parser.add_argument("--scale", action="append", choices=sorted(SCALES), help="run these scales (default: A and B)")
    parser.add_argument("--services", type=int, help="one scale of your own: this many services ...")
    parser.add_argument("--every", type=float, help="... with this evaluate_every and scrape interval (seconds)")
    args = parser.parse_args()
    if args.services or args.every:
        services = args.services or 1000
        base = SCALES["A" if services <= 1000 else "B"]
        scales = [Scale("custom", services, args.every or base.every, base.quiet_cycles, base.ready_target,
                        base.queries_target, base.cpu_target, base.rss_target, base.ack_target)]
    else:
        scales = [SCALES[n] for n in (["A"] if args.quick else args.scale or ["A", "B"])]

    began = time.monotonic()
    binary = need_prometheus()
    load = Load()  # its imports run while the venv and MLflow come up
    runtime, how = runtime_venv()
    python = runtime or Path(sys.executable)
    how = how if runtime else f"dev .venv: {how}"
    rows: list[Row] = []
    notes: list[str] = [
        "load shapes: paced = each round's 250 requests written at uniformly random moments within one "
        "evaluate_every (as users typing); burst = all 250 written at the same instant on 250 connections opened "
        "just before (as benchmark 1 does with 50), each round started at a random moment (every other round at a "
        "random moment while a cycle should be running, from its start and typical duration); `/rollback help` and "
        "`/rollback status` alternate; 'overlapping a cycle' = sent before a cycle ended and "
        "acked after it started",
    ]
    failures: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="rollback-bench-") as tmp, FakeSlackAPI() as slack, \
                MlflowServer(Path(tmp) / "mlflow") as mlflow:
            for scale in scales:
                run_scale(scale, python=python, how=how, binary=binary, slack=slack, mlflow_url=mlflow.url, load=load,
                          rows=rows, notes=notes, failures=failures)
    finally:
        load.close()
    notes.append(f"whole run {time.monotonic() - began:.0f} s on {os.cpu_count()} CPUs (exporter, Prometheus, "
                 "MLflow, the fake Slack API, the load client and the bot share them)")
    report(BENCH, rows, notes)
    if failures:
        raise SystemExit("grouped and per-SLO readings disagree: " + "; ".join(failures))


if __name__ == "__main__":
    main()
