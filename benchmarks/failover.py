"""Benchmark 10, failover: three `rollback-bot serve` replicas on one real PostgreSQL 15, the working one SIGKILLed
and SIGSTOPped over and over (issue 13).

Everything real and on 127.0.0.1 (tests/replicas_env.py builds it: the Cluster and Stack of the replica tests): our
own PostgreSQL (tests/pg_env.py: initdb into a temp dir), the fake Slack Web API, a real `mlflow server`, the
simulated model service scraped every second by a real Prometheus, and replicas r1..r3 with the default
ROLLBACK_LEASE_TTL of 15 s (`--ttl` to change it). The replicas run the dev virtualenv's python (as the tests do),
not benchmark 6's runtime-only one.

Phase 1, one incident whose verification never ends during the run (`stable_for: 60m`, ticks every 1 s, the
progress message edited at most once per 3 s):
 1. ack latency: 250 signed `/rollback help` slash commands in 5 waves of 50 written at the same instant, each on a
    connection opened before the wave, spread round-robin over the 3 replicas; time from write to the whole answer
    (each ack includes the INSERT into the inbox). Target p99 <= 50 ms.
 2. failover after SIGKILL, `--kills` times (10): the replica owning the verification (`work.owner` of kind
    `verify`) is SIGKILLed; failover = from the kill to the next chat.update of the progress message (a dead or
    stopped replica sends none: another replica is ticking, "verification visibly resumes"; an edit the victim had
    in flight, within GUARD of the fault, is not counted); also from the kill to the work row's take-over (its
    `taken_at`, stored by the replica that took it), and to the first Slack call of any kind on the incident. The
    killed replica is then started again with the same id. Target <= TTL + 1 s.
 3. failover after SIGSTOP, as many times: the owner is SIGSTOPped until the progress is visible again (at most
    TTL + 10 s), then SIGCONTed; it must rejoin under a new epoch, and its stale writes are counted
    (rollback_fencing_rejections_total). Same target.
 4. duplicates and losses, once things settle: warnings posted more than once, thread messages carrying the same
    outbox event id (Slack message metadata), more than one progress message, the alias step done more than once;
    stored events never posted, inbox rows never handled, and acked commands without exactly one answer at their
    response_url. Target 0 and 0.
Phase 2, 1,000 services x 2 SLOs every 5 s (benchmark 9's policy and synthetic exporter), a fresh database:
 5. per-replica CPU per cycle (utime + stime of the process and its children, from /proc, over 6 quiet cycles),
    and per 1,000 of the services that replica evaluates (its shards' services).
 6. PostgreSQL transactions per cycle, all replicas together: pg_stat_database.xact_commit of the database over the
    same window, per evaluate_every.
`--quick`: 3 kills and 3 stops, phase 2 over 3 cycles.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from _common import ROOT, Row, median, ms, need_prometheus, percentile, report
from ack_latency import request_bytes
from serve_at_scale import policy_text, tree_cpu
from synthetic_exporter import service_name

from bot.infra.replica import SHARDS, shard_of
from sandbox.servers import MlflowServer, PrometheusServer, free_port
from sandbox.signing import slash_command_body
from sandbox.slack_api import FakeSlackAPI
from tests import pg_env
from tests.replicas_env import Cluster, ServiceSpec, Stack, run_sql, thread_event_ids, updates_of, warning_calls
from tests.story_env import APPROVER, wait_until

GUARD = 0.2  # seconds after a fault in which an edit the victim already had in flight may still arrive
BENCH = "10 failover"
SERVICE = "svc-failover"
CHANNEL = "C0FAILOVER"
WAVES, WAVE = 5, 50
SCALE_SERVICES, SCALE_EVERY = 1000, 5.0


# -- ack waves over the three replicas ----------------------------------------------------------------------------

def waves(urls: list[str], response_url: str, waves: int = WAVES, size: int = WAVE) -> list[float]:
    """Seconds from write to answer of every request; `size` at once per wave, round-robin over `urls`."""
    async def wave(offset: int) -> list[float]:
        targets = [urls[(offset + i) % len(urls)] for i in range(size)]
        raw = [request_bytes(u, slash_command_body(text="help", user_id=APPROVER, channel_id=CHANNEL,
                                                   response_url=response_url)) for u in targets]
        conns = [await asyncio.open_connection(urlsplit(u).hostname, urlsplit(u).port) for u in targets]

        async def one(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], data: bytes) -> float:
            reader, writer = conn
            started = time.perf_counter()
            writer.write(data)
            await writer.drain()
            answer = await reader.read()
            took = time.perf_counter() - started
            writer.close()
            if not answer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"not acked: {answer[:200]!r}")
            return took
        return list(await asyncio.gather(*(one(c, d) for c, d in zip(conns, raw, strict=True))))

    out: list[float] = []
    for n in range(waves):
        out += asyncio.run(wave(n * size))
        time.sleep(1.0)  # the wave's answers are posted before the next one
    return out


# -- phase 1 -------------------------------------------------------------------------------------------------------

def failover_phase(stack: Stack, kills: int, ttl: float) -> dict[str, object]:
    cluster, slack = stack.cluster, stack.slack
    stack.break_service(SERVICE)
    warning, incident_id = stack.warning(SERVICE, timeout=90)
    _, answer = stack.click(SERVICE, warning["ts"], "rollback_approve", incident_id)
    assert answer.status_code == 200, answer.text
    stack.wait_state(incident_id, "verifying", timeout=60)
    progress_ts = str(wait_until(lambda: stack.incident(incident_id)["progress_ts"], 30, "the progress message"))
    print(f"  incident #{incident_id} verifying; ack waves", flush=True)

    began = time.time()
    acks = waves([r.events_url for r in cluster.up()], slack.response_url)
    answered = wait_until(lambda: (n := len([c for c in slack.calls("response_url") if c.at >= began])) >= len(acks)
                          and n, 30, "every command answered", interval=0.2)
    time.sleep(2)
    answered = len([c for c in slack.calls("response_url") if c.at >= began])

    def owner() -> str:
        return str(wait_until(lambda: cluster.work_owner(incident_id, "verify"), 30, "the verify owner"))

    def one(fault: str) -> tuple[float, float, float]:
        victim = owner()
        health = cluster[victim].healthz()
        epoch_before = int(health[1].get("epoch") or 0) if health else 0
        wait_until(lambda: updates_of(slack, CHANNEL, progress_ts, time.time() - 4), 15, "progress edits going on")
        if fault == "kill":
            at = cluster.kill(victim)
        else:
            at = cluster.pause(victim)
        taken = visible = sign = None
        deadline = time.time() + ttl + 10
        while time.time() < deadline and (taken is None or visible is None):
            if taken is None and cluster.work_owner(incident_id, "verify") not in (None, victim):
                rows = [r for r in cluster.work(incident_id) if r["kind"] == "verify" and r["taken_at"]]
                taken = float(rows[0]["taken_at"]) if rows else time.time()
            edits = updates_of(slack, CHANNEL, progress_ts, at + GUARD)
            if visible is None and edits:
                visible = edits[0].at
            if sign is None:
                calls = [c for c in slack.calls() if c.at > at and c.params.get("channel") == CHANNEL
                         and c.method in ("chat.update", "chat.postMessage")]
                sign = calls[0].at if calls else None
            time.sleep(0.05)
        if fault == "kill":
            cluster.restart(victim)
        else:
            cluster.resume(victim)
            replica = cluster[victim]
            epoch = wait_until(lambda: (h := replica.healthz()) and h[0] == 200
                               and int(h[1].get("epoch") or 0) > epoch_before and h[1]["epoch"], ttl + 10,
                               "the resumed replica rejoined under a new epoch")
            print(f"    {victim} resumed, epoch now {epoch}", flush=True)
        cluster.ensure_up()
        time.sleep(1.5)
        v = (visible or math.inf) - at
        t = (taken or math.inf) - at
        # Edits after the fault but before the row moved: the victim's (it cannot send while dead or stopped, so
        # these would be a bug), or the new owner's written before it stored taken_at (a few ms): counted.
        early = [c for c in updates_of(slack, CHANNEL, progress_ts, at + GUARD) if taken is None or c.at < taken - 0.05]
        stale_edits.append(len(early))
        first = (sign or math.inf) - at
        print(f"    {fault} {victim}: progress visible again after {v:.2f} s, work taken over after {t:.2f} s, "
              f"first Slack call on the incident after {first:.2f} s", flush=True)
        return v, t, first

    stale_edits: list[int] = []
    print(f"  {kills} SIGKILLs", flush=True)
    killed = [one("kill") for _ in range(kills)]
    print(f"  {kills} SIGSTOPs", flush=True)
    stopped = [one("stop") for _ in range(kills)]
    rejections = sum(r.metric("rollback_fencing_rejections_total") for r in cluster.up())

    time.sleep(3)
    duplicates: dict[str, int] = {
        "warnings posted": max(0, len(warning_calls(slack, CHANNEL)) - 1),
        "events posted twice": sum(n - 1 for n in thread_event_ids(slack, CHANNEL, warning["ts"]).values() if n > 1),
        "progress messages": max(0, len([m for m in slack.thread(CHANNEL, warning["ts"])
                                         if "— elapsed" in m.get("text", "")]) - 1),
        "steps done again": max(0, sum(1 for s in stack.steps(incident_id) if s["status"] == "done") - 1),
        "command answers": max(0, answered - len(acks)),
    }
    losses: dict[str, int] = {
        "events never posted": len(cluster.sql("SELECT id FROM events WHERE incident_id = %s AND slack_ts IS NULL",
                                               incident_id)),
        "inbox rows never handled": len(cluster.sql("SELECT id FROM inbox WHERE done_at IS NULL")),
        "commands unanswered": max(0, len(acks) - answered),
    }
    return {"acks": acks, "killed": killed, "stopped": stopped, "duplicates": duplicates, "losses": losses,
            "rejections": rejections, "stale_edits": sum(stale_edits)}


# -- phase 2 -------------------------------------------------------------------------------------------------------

def scale_phase(tmp: Path, *, postgres_url: str, slack: FakeSlackAPI, mlflow_url: str, binary: str, ttl: float,
                cycles: int) -> dict[str, object]:
    database_url = pg_env.create_database(postgres_url)
    port = free_port()
    exporter = subprocess.Popen([sys.executable, str(Path(__file__).with_name("synthetic_exporter.py")),
                                 "--services", str(SCALE_SERVICES), "--port", str(port)], cwd=ROOT)
    cluster: Cluster | None = None
    try:
        with PrometheusServer(tmp / "prom-scale", targets=[f"127.0.0.1:{port}"], binary=binary,
                              scrape_interval=f"{SCALE_EVERY:g}s") as prom:
            policy = tmp / "policy-scale.yaml"
            policy.write_text(policy_text(SCALE_SERVICES, SCALE_EVERY))
            cluster = Cluster(tmp / "scale", policy, slack_url=slack.url, prometheus_url=prom.url,
                              mlflow_url=mlflow_url, database_url=database_url, ttl=ttl).start(timeout=120)
            target = math.ceil(SHARDS / len(cluster.replicas))

            def balanced() -> bool:
                held = [r.leases() for r in cluster.replicas.values()] if cluster else []
                shards = [n for names in held for n in names if n.startswith("shard:")]
                return len(shards) == SHARDS and len(set(shards)) == SHARDS and all(
                    len([n for n in names if n.startswith("shard:")]) <= target for names in held)
            wait_until(balanced, 2 * ttl + 30, "the shards spread over the replicas", interval=0.5)
            probe = 'count(rate(model_requests_total{code="500"}[1m]))'
            wait_until(lambda: (r := prom.query(probe)) and int(float(r[0]["value"][1])) == SCALE_SERVICES,
                       120, "Prometheus to have every service's rates", interval=1.0)
            time.sleep(2 * SCALE_EVERY)  # two cycles on full data: states stored, steady from then
            print(f"  1,000 services, 3 replicas: quiet window of {cycles} cycles", flush=True)

            def xacts() -> float:
                rows = run_sql(database_url, "SELECT xact_commit FROM pg_stat_database WHERE datname = "
                                             "current_database()")
                return float(rows[0]["xact_commit"])
            replicas = list(cluster.replicas.values())
            before = {r.id: (tree_cpu(r.pid), r.metric("rollback_evaluation_seconds_count")) for r in replicas}
            x0, t0 = xacts(), time.time()
            time.sleep(cycles * SCALE_EVERY)
            after = {r.id: (tree_cpu(r.pid), r.metric("rollback_evaluation_seconds_count")) for r in replicas}
            x1, t1 = xacts(), time.time()
            per_replica = {}
            for r in replicas:
                shards = {int(n.split(":")[1]) for n in r.leases() if n.startswith("shard:")}
                services = sum(1 for i in range(SCALE_SERVICES) if shard_of(service_name(i)) in shards)
                ran = after[r.id][1] - before[r.id][1]
                cpu = (after[r.id][0] - before[r.id][0]) / max(ran, 1)
                per_replica[r.id] = {"cpu": cpu, "services": services, "cycles": ran,
                                     "per_1000": cpu / (services / 1000) if services else math.nan}
            return {"replicas": per_replica, "xact_per_cycle": (x1 - x0) / ((t1 - t0) / SCALE_EVERY)}
    finally:
        if cluster is not None:
            cluster.stop()
        exporter.terminate()
        exporter.wait(10)
        pg_env.drop_database(database_url)


# -- the run ----------------------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 kills and 3 stops, a 3-cycle CPU window")
    parser.add_argument("--ttl", type=float, default=15.0, help="ROLLBACK_LEASE_TTL of the replicas (default 15)")
    parser.add_argument("--kills", type=int, default=None, help="SIGKILLs (and as many SIGSTOPs); default 10")
    args = parser.parse_args()
    kills = args.kills or (3 if args.quick else 10)
    cycles = 3 if args.quick else 6
    binary = need_prometheus()
    bindir = pg_env.find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed: run `make setup` (it installs Debian's postgresql)")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rollback-failover-") as name, pg_env.PostgresServer(bindir) as pg, \
            MlflowServer(Path(name) / "mlflow") as mlflow:
        tmp = Path(name)
        spec = ServiceSpec(SERVICE, CHANNEL, stable_for="60m", within="60m", verify_every="1s")
        stack = Stack.start(tmp / "failover", postgres_url=pg.url, mlflow_url=mlflow.url, prometheus_bin=binary,
                            specs=[spec], prefix="failover", ttl=args.ttl)
        try:
            print(f"  3 replicas up (TTL {args.ttl:g} s) in {max(stack.cluster.started_in.values()):.1f} s",
                  flush=True)
            one = failover_phase(stack, kills, args.ttl)
            slack = stack.slack
            scale = scale_phase(tmp, postgres_url=pg.url, slack=slack, mlflow_url=mlflow.url, binary=binary,
                                ttl=args.ttl, cycles=cycles)
        finally:
            stack.stop()

    bound = args.ttl + 1.0
    acks = one["acks"]
    assert isinstance(acks, list)
    rows: list[Row] = []
    for label, results in (("SIGKILL", one["killed"]), ("SIGSTOP", one["stopped"])):
        assert isinstance(results, list)
        visible = [v for v, _, _ in results]
        taken = [t for _, t, _ in results]
        first = [f for _, _, f in results]
        rows.append(Row(BENCH, f"failover after {label} of the working replica (kill -> next progress edit in Slack), "
                               f"{len(results)} times, TTL {args.ttl:g} s: p50 / max",
                        f"{median(visible):.2f} s / {max(visible):.2f} s", f"<= TTL + 1 s ({bound:g} s)",
                        max(visible) <= bound))
        rows.append(Row(BENCH, f"after {label}: until the verify work row has a new owner; until the first Slack "
                               "call of any kind on the incident (a post or an edit), p50 / max",
                        f"{median(taken):.2f} s / {max(taken):.2f} s; {median(first):.2f} s / {max(first):.2f} s",
                        "report", None))
    dups, lost = one["duplicates"], one["losses"]
    assert isinstance(dups, dict) and isinstance(lost, dict)
    ndup, nlost = sum(dups.values()), sum(lost.values())
    detail = ", ".join(f"{k} {v}" for k, v in {**dups, **lost}.items() if v) or "none of either"
    rows.append(Row(BENCH, "duplicates / losses after every fault (warnings, thread events by metadata, progress "
                           "messages, steps; unposted events, unhandled inbox rows, command answers)",
                    f"{ndup} / {nlost} ({detail})", "0 / 0", ndup == 0 and nlost == 0))
    rows.append(Row(BENCH, f"ack of {len(acks)} signed commands, {WAVES} waves of {WAVE} concurrent over 3 replicas, "
                           "inbox insert included: p50 / p95 / p99",
                    f"{ms(median(acks))} / {ms(percentile(acks, 95))} / {ms(percentile(acks, 99))}", "p99 <= 50 ms",
                    percentile(acks, 99) <= 0.050))
    rows.append(Row(BENCH, "fencing rejections counted by the replicas (stale writes refused after SIGCONT); progress "
                           "edits reaching Slack after a fault and before its take-over",
                    f"{one['rejections']:g}; {one['stale_edits']}", "report; 0", None))
    per = scale["replicas"]
    assert isinstance(per, dict)
    cpu_text = "; ".join(f"{rid} {ms(v['cpu'])} for {v['services']} services = {ms(v['per_1000'])}"
                         for rid, v in per.items())
    rows.append(Row(BENCH, f"per-replica CPU per cycle, {SCALE_SERVICES:,} services x 2 SLOs every {SCALE_EVERY:g}s on "
                           "3 replicas: per cycle, and per 1,000 evaluated services", cpu_text, "report", None))
    rows.append(Row(BENCH, "PostgreSQL transactions per cycle (xact_commit of the database, 3 replicas, quiet)",
                    f"{scale['xact_per_cycle']:.0f}", "report", None))
    notes = [f"whole run {time.monotonic() - began:.0f} s; TTL {args.ttl:g} s; verify every 1 s, progress edits "
             "at most one per 3 s; the dev virtualenv's python"]
    report(BENCH, rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
