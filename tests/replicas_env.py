"""Three (N) real `rollback-bot serve` replicas on one PostgreSQL database, and the faults to throw at them.

Used by tests/test_replicas.py (and benchmarks/failover.py). What it builds, everything on 127.0.0.1:
- `Stack`: one fresh database on the session's PostgreSQL (tests/pg_env, via the `postgres_url` fixture), the fake
  Slack Web API (sandbox/slack_api.py), a real `mlflow server` (the session's), one simulated model service per
  policy service (sandbox/model_service.py, each serving its MLflow @champion) scraped every second by a real
  Prometheus, the fake `helm` (tests/bin/helm) with a hold file on `rollback`, and a `Cluster` of N replicas on one
  policy. The pieces are tests/story_env's (BotProcess, the signing secret and token, wait_until).
- `Cluster`: N `BotProcess` (tests/story_env), ids r1..rN (`ROLLBACK_REPLICA_ID`), each on its own port, all with
  the same policy and `ROLLBACK_LEASE_TTL` (short, for test speed); each replica's `DATABASE_URL` goes through its
  own `TcpFaultProxy` (tests/fault_proxy.py) so its PostgreSQL connection can be black-holed alone. Started at
  once against the empty database: `serve` migrates by itself under an advisory lock. Signed Slack requests are
  spread round-robin over the replicas that are up (`post`), as a load balancer with health checks would, or
  sent to one (`post(..., to="r2")`).
- Faults: `kill` (SIGKILL: no shutdown code runs), `pause` / `resume` (SIGSTOP / SIGCONT; `pause_for` does both),
  `blackhole` / `heal` (the replica's database connection: open, silent), `restart` (the same id, port and
  environment; its old leases are not its own again: a new epoch). `ensure_up` undoes every fault between tests.
- Reads for the checks, once things settle: the database with plain SQL (`sql`, `work`, `leases`), each replica's
  `/healthz` JSON and `/metrics`, and the fake Slack's channels (`warnings`, `thread_event_ids`). `holder_of(port)`
  names the replica whose open TCP connection has that local port (a call the fake Slack holds: `HeldCall.peer`).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests
from mlflow.tracking import MlflowClient
from psycopg.rows import dict_row
from sqlalchemy.engine import make_url

from sandbox.model_service import ModelServiceSimulator, VersionProfile, alias_reader, seed_registry
from sandbox.servers import PrometheusServer
from sandbox.signing import block_actions_body, signed_headers, slash_command_body
from sandbox.slack_api import Call, FakeSlackAPI
from tests import pg_env
from tests.fault_proxy import TcpFaultProxy
from tests.helm_env import BIN, standard_history
from tests.story_env import APPROVER, GROUP, GROUP_MEMBER, SECRET, BotProcess, button, wait_until

FAST = VersionProfile(latency_seconds=0.05, error_rate=0.0, auc=0.86)
SLOW = VersionProfile(latency_seconds=0.45, error_rate=0.02, auc=0.71)
EVENT_TYPE = "rollback_event"  # the Slack message metadata of every outbox post: {event_id, incident_id}
WARNING_TYPE = "rollback_warning"  # and of the warning: {incident_id}
P95 = ('histogram_quantile(0.95, sum by (le) (rate(model_request_latency_seconds_bucket'
       '{{service="{service}"}}[5s])))')
HELM_RELEASE = "prod/model-svc"


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the cluster's policy, with its own channel, registered model and simulator.

    `steps` are the policy's rollback lines with `{model}` filled in; `profiles` maps version numbers (as
    seed_registry makes them: "1", "2", "3") to what the simulator serves; `extra` is more policy lines of the
    service (auto_rollback, promote)."""

    name: str
    channel: str
    steps: tuple[str, ...] = ("mlflow_alias: {{model: {model}, alias: champion, to: previous_champion}}",)
    stable_for: str = "3s"
    verify_every: str = "1s"
    within: str = "90s"
    for_: str = "2s"
    extra: str = ""
    profiles: tuple[tuple[str, VersionProfile], ...] = (("1", FAST), ("2", SLOW), ("3", FAST))


def policy_text(specs: list[ServiceSpec], models: dict[str, str], evaluate_every: str = "1s") -> str:
    out = [f"evaluate_every: {evaluate_every}", "services:"]
    for spec in specs:
        model = models[spec.name]
        out += [f"  {spec.name}:", f"    channel: {spec.channel}", f"    approvers: [{APPROVER}, {GROUP}]",
                f"    model: {model}", "    slos:",
                f"      - {{name: p95-latency, kind: latency, query: '{P95.format(service=spec.name)}', above: 0.25, "
                f"for: {spec.for_}}}",
                f"      - {{name: auc, kind: quality, query: 'min(model_auc{{service=\"{spec.name}\"}})', below: 0.8, "
                f"for: {spec.for_}}}",
                "    rollback:"]
        out += [f"      - {step.format(model=model)}" for step in spec.steps]
        out.append(f"    verify: {{every: {spec.verify_every}, within: {spec.within}, stable_for: {spec.stable_for}}}")
        out += [f"    {line}" for line in spec.extra.splitlines() if line.strip()]
    return "\n".join(out) + "\n"


# -- one replica ------------------------------------------------------------------------------------------------

class Replica:
    """One `rollback-bot serve` of the cluster: its BotProcess, its database proxy, and what the harness did to it
    (`state`: "up", "killed", "paused"; `blackholed` separately)."""

    def __init__(self, rid: str, workdir: Path, policy: Path, *, slack_url: str, prometheus_url: str,
                 mlflow_url: str, database_url: str, proxy: TcpFaultProxy, ttl: float,
                 extra_env: dict[str, str] | None = None) -> None:
        self.id = rid
        self.proxy = proxy
        workdir.mkdir(parents=True, exist_ok=True)
        env = {"DATABASE_URL": database_url, "ROLLBACK_REPLICA_ID": rid, "ROLLBACK_LEASE_TTL": f"{ttl:g}",
               **(extra_env or {})}
        self.bot = BotProcess(workdir, policy, slack_url=slack_url, prometheus_url=prometheus_url,
                              mlflow_url=mlflow_url, extra_env=env)
        self.state = "new"
        self.killed_at: float | None = None
        self.session = requests.Session()

    @property
    def url(self) -> str:
        return self.bot.url

    @property
    def events_url(self) -> str:
        return f"{self.bot.url}/slack/events"

    @property
    def pid(self) -> int:
        assert self.bot.proc is not None, f"{self.id} never started"
        return self.bot.proc.pid

    @property
    def blackholed(self) -> bool:
        return self.proxy.blackholed

    def alive(self) -> bool:
        return self.bot.proc is not None and self.bot.proc.poll() is None

    def healthz(self, timeout: float = 2.0) -> tuple[int, dict[str, Any]] | None:
        """(HTTP status, JSON body) of GET /healthz, or None when it does not answer in `timeout`."""
        try:
            answer = requests.get(f"{self.url}/healthz", timeout=timeout)
        except requests.RequestException:
            return None  # killed, paused or not listening yet
        try:
            body = answer.json()
        except ValueError:
            body = {"raw": answer.text[:200]}
        return answer.status_code, body if isinstance(body, dict) else {"raw": body}

    def leases(self) -> list[str]:
        answer = self.healthz()
        return list(answer[1].get("leases") or []) if answer else []

    def metrics(self, timeout: float = 5.0) -> str:
        return requests.get(f"{self.url}/metrics", timeout=timeout).text

    def metric(self, name: str, text: str | None = None, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels` (0 when there is none)."""
        return metric_sum(text if text is not None else self.metrics(), name, **labels)

    def log(self) -> str:
        return self.bot.log()


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        found = dict(part.split("=", 1) for part in _split_labels(label_text.rstrip("}")))
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            try:
                total += float(value)
            except ValueError:
                continue  # not a sample line
    return total


def _split_labels(text: str) -> list[str]:
    parts, current, quoted = [], "", False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    if "=" in current:
        parts.append(current)
    return [p for p in parts if "=" in p]


# -- the cluster ------------------------------------------------------------------------------------------------

class Cluster:
    """N replicas r1..rN on one database and one policy; see the module docstring."""

    def __init__(self, workdir: Path, policy: Path, *, slack_url: str, prometheus_url: str, mlflow_url: str,
                 database_url: str, replicas: int = 3, ttl: float = 3.0,
                 extra_env: dict[str, str] | None = None) -> None:
        self.database_url = database_url
        self.ttl = ttl
        upstream = make_url(database_url)
        assert upstream.port is not None
        self._stack = ExitStack()
        self.replicas: dict[str, Replica] = {}
        for n in range(1, replicas + 1):
            rid = f"r{n}"
            proxy = self._stack.enter_context(TcpFaultProxy(upstream.port, upstream.host or "127.0.0.1"))
            via_proxy = upstream.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
            self.replicas[rid] = Replica(rid, workdir / rid, policy, slack_url=slack_url, prometheus_url=prometheus_url,
                                         mlflow_url=mlflow_url, database_url=via_proxy, proxy=proxy, ttl=ttl,
                                         extra_env=extra_env)
        self._next = 0
        self._lock = threading.Lock()
        self.started_in: dict[str, float] = {}

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self, timeout: float = 90) -> Cluster:
        """Launch every replica at the same moment, then wait until each answers /healthz 200."""
        began = time.monotonic()
        for replica in self.replicas.values():
            replica.bot.launch()
        problems: list[str] = []

        def ready(replica: Replica) -> None:
            try:
                replica.bot.wait_ready(timeout=timeout, poll=0.05)
                replica.state = "up"
                self.started_in[replica.id] = time.monotonic() - began
            except RuntimeError as exc:
                problems.append(f"--- {replica.id} ---\n{str(exc)[-4000:]}")
        waiters = [threading.Thread(target=ready, args=(r,)) for r in self.replicas.values()]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join()
        if problems:
            self.stop()
            raise RuntimeError("replicas did not come up together:\n" + "\n".join(problems))
        return self

    def stop(self) -> None:
        for replica in self.replicas.values():
            if replica.state == "paused" and replica.alive():
                os.kill(replica.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            replica.proxy.heal()
            replica.bot.stop()
            replica.state = "stopped"
        self._stack.close()

    def __getitem__(self, rid: str) -> Replica:
        return self.replicas[rid]

    def up(self) -> list[Replica]:
        """The replicas a health-checking balancer would send to: running, not paused, not black-holed."""
        return [r for r in self.replicas.values() if r.state == "up" and not r.blackholed and r.alive()]

    # -- faults ----------------------------------------------------------------------------------------------
    def kill(self, rid: str) -> float:
        """SIGKILL the replica (like a node dying: no shutdown code, its leases simply expire); when it died."""
        replica = self.replicas[rid]
        assert replica.bot.proc is not None
        replica.bot.proc.send_signal(signal.SIGKILL)
        at = time.time()
        replica.bot.kill()  # reaps it and closes its log
        replica.state, replica.killed_at = "killed", at
        return at

    def pause(self, rid: str) -> float:
        """SIGSTOP: the process keeps its sockets and memory and does nothing (a GC pause, a VM freeze)."""
        replica = self.replicas[rid]
        os.kill(replica.pid, signal.SIGSTOP)
        replica.state = "paused"
        return time.time()

    def resume(self, rid: str) -> float:
        replica = self.replicas[rid]
        os.kill(replica.pid, signal.SIGCONT)
        replica.state = "up"
        return time.time()

    def pause_for(self, rid: str, seconds: float) -> tuple[float, float]:
        """SIGSTOP for `seconds`, then SIGCONT; (stopped at, continued at)."""
        stopped = self.pause(rid)
        time.sleep(seconds)
        return stopped, self.resume(rid)

    def blackhole(self, rid: str) -> None:
        """The replica's PostgreSQL connections stay open and go silent (no reset, no answer)."""
        self.replicas[rid].proxy.blackhole()

    def heal(self, rid: str) -> None:
        self.replicas[rid].proxy.heal()

    def restart(self, rid: str, timeout: float = 60) -> float:
        """Start a killed (or running: it is killed first) replica again with the same id; seconds to ready."""
        replica = self.replicas[rid]
        if replica.alive():
            if replica.state == "paused":
                os.kill(replica.pid, signal.SIGCONT)
            self.kill(rid)
        began = time.monotonic()
        replica.bot.start(timeout=timeout)
        replica.state = "up"
        return time.monotonic() - began

    def ensure_up(self, timeout: float = 60) -> None:
        """Undo every fault: heal black holes, SIGCONT paused replicas, restart dead ones; all healthy again."""
        for replica in self.replicas.values():
            replica.proxy.heal()
            if replica.state == "paused" and replica.alive():
                self.resume(replica.id)
        for replica in self.replicas.values():
            if not replica.alive():
                self.restart(replica.id, timeout=timeout)
        for replica in self.replicas.values():
            wait_until(lambda r=replica: (h := r.healthz()) is not None and h[0] == 200, timeout,
                       f"{replica.id} healthy again", interval=0.2)

    # -- Slack requests, spread over the replicas ---------------------------------------------------------------
    def pick(self, to: str | None = None) -> Replica:
        if to is not None:
            return self.replicas[to]
        with self._lock:
            live = self.up()
            if not live:
                raise RuntimeError("no replica is up to take the request")
            replica = live[self._next % len(live)]
            self._next += 1
            return replica

    def post(self, body: str, *, to: str | None = None, timeout: float = 10,
             headers: dict[str, str] | None = None) -> tuple[Replica, requests.Response]:
        """POST a signed Slack request to the next replica that is up (round-robin), or to `to`."""
        replica = self.pick(to)
        answer = replica.session.post(replica.events_url, data=body.encode(), timeout=timeout,
                                      headers={**signed_headers(SECRET, body), **(headers or {})})
        return replica, answer

    def holder_of(self, local_port: int) -> Replica | None:
        """The live replica with an open TCP connection from 127.0.0.1:`local_port` (read from /proc: the socket's
        inode, then which process has it open), None when none has."""
        inodes = _socket_inodes(local_port)
        for replica in self.replicas.values():
            if not replica.alive():
                continue
            fds = Path(f"/proc/{replica.pid}/fd")
            try:
                links = {os.readlink(fd) for fd in fds.iterdir()}
            except OSError:
                continue  # it exited meanwhile: not the holder
            if any(f"socket:[{inode}]" in links for inode in inodes):
                return replica
        return None

    def log_lines(self, *needles: str, limit: int = 40) -> str:
        """The lines of every replica's log that contain one of `needles` (for failure messages)."""
        out = []
        for replica in self.replicas.values():
            lines = [line for line in replica.log().splitlines() if any(n in line for n in needles)]
            out += [f"{replica.id}: {line[:300]}" for line in lines[-limit:]]
        return "\n".join(out)

    # -- the database --------------------------------------------------------------------------------------------
    def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        """Run `query` on the cluster's database directly (not through any replica's proxy); rows as dicts."""
        return run_sql(self.database_url, query, *params)

    def work(self, incident_id: int | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        rows = self.sql("SELECT * FROM work ORDER BY key")
        return [r for r in rows if (incident_id is None or r["incident_id"] == incident_id)
                and (kind is None or r["kind"] == kind)]

    def work_owner(self, incident_id: int, *kinds: str) -> str | None:
        """The replica id owning the incident's work of one of `kinds` now (None: nobody, or no such row)."""
        for row in self.work(incident_id):
            if (not kinds or row["kind"] in kinds) and row["owner"]:
                return _replica_id(str(row["owner"]))
        return None

    def lease_rows(self, prefix: str = "") -> list[dict[str, Any]]:
        return [r for r in self.sql("SELECT *, expires_at >= extract(epoch FROM clock_timestamp()) AS live "
                                    "FROM leases ORDER BY name") if str(r["name"]).startswith(prefix)]


def _socket_inodes(local_port: int) -> set[str]:
    """The inodes of the TCP sockets (IPv4 and IPv6) whose local port is `local_port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue  # no IPv6 on this host
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                found.add(fields[9])
    return found


def _replica_id(owner: str) -> str:
    """A work row names its owner either by the replica id or by its membership lease (`replica:<id>`)."""
    return owner.removeprefix("replica:")


def run_sql(database_url: str, query: str, *params: Any) -> list[dict[str, Any]]:
    parsed = make_url(database_url)
    with psycopg.connect(host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database,
                         autocommit=True, connect_timeout=10, row_factory=dict_row) as conn:
        cursor = conn.execute(query, params or None)  # type: ignore[arg-type]
        return list(cursor.fetchall()) if cursor.description else []


# -- the fake Slack, read as a person would ------------------------------------------------------------------------

def warning_calls(slack: FakeSlackAPI, channel: str) -> list[Call]:
    """Every accepted chat.postMessage of a warning (top level, with the Roll back button) in `channel`."""
    return [c for c in slack.calls("chat.postMessage") if c.params.get("channel") == channel
            and not c.params.get("thread_ts") and "rollback_approve" in json.dumps(c.params.get("blocks") or [])]


def warnings(slack: FakeSlackAPI, channel: str) -> list[dict[str, Any]]:
    """The warnings in the channel as it reads now: top-level messages that have (or had) the bot's buttons,
    or that carry an incident's metadata."""
    out = []
    for message in slack.messages(channel):
        if message.get("thread_ts") not in (None, message["ts"]):
            continue
        flat = json.dumps(message.get("blocks") or [])
        if "rollback_approve" in flat or "rollback_dismiss" in flat or _meta(message, WARNING_TYPE):
            out.append(message)
    return out


def _meta(message: dict[str, Any], event_type: str = EVENT_TYPE) -> dict[str, Any]:
    metadata = message.get("metadata")
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            return {}
    if not isinstance(metadata, dict) or metadata.get("event_type") != event_type:
        return {}
    payload = metadata.get("event_payload")
    return payload if isinstance(payload, dict) else {}


def thread_event_ids(slack: FakeSlackAPI, channel: str, thread_ts: str) -> Counter[int]:
    """How many messages of the thread carry each outbox event id (each must be 1)."""
    counts: Counter[int] = Counter()
    for message in slack.thread(channel, thread_ts):
        event_id = _meta(message).get("event_id")
        if event_id is not None:
            counts[int(event_id)] += 1
    return counts


def thread_texts(slack: FakeSlackAPI, channel: str, thread_ts: str) -> list[str]:
    return [str(m.get("text", "")) for m in slack.thread(channel, thread_ts)]


def updates_of(slack: FakeSlackAPI, channel: str, ts: str, after: float = 0.0) -> list[Call]:
    return [c for c in slack.calls("chat.update") if c.params.get("channel") == channel
            and c.params.get("ts") == ts and c.at > after]


def thread_posts(slack: FakeSlackAPI, channel: str, thread_ts: str, after: float = 0.0) -> list[Call]:
    return [c for c in slack.calls("chat.postMessage") if c.params.get("channel") == channel
            and c.params.get("thread_ts") == thread_ts and c.at > after]


# -- the whole stack for one test module -----------------------------------------------------------------------------

@dataclass
class Service:
    """A service of the stack: its spec, MLflow model, and simulator."""

    spec: ServiceSpec
    model: str
    sim: ModelServiceSimulator
    versions: tuple[str, ...]


@dataclass
class Stack:
    """Everything for one test module (see the module docstring). Build with `Stack.start(...)`, end with `stop()`."""

    workdir: Path
    database_url: str
    slack: FakeSlackAPI
    mlflow: MlflowClient
    prom: PrometheusServer
    services: dict[str, Service]
    cluster: Cluster
    helm_state: Path
    helm_log: Path
    helm_hold: Path
    _stack: ExitStack = field(repr=False)

    @classmethod
    def start(cls, workdir: Path, *, postgres_url: str, mlflow_url: str, prometheus_bin: str,
              specs: list[ServiceSpec], prefix: str, replicas: int = 3, ttl: float = 3.0,
              extra_env: dict[str, str] | None = None) -> Stack:
        stack = ExitStack()
        try:
            database_url = pg_env.create_database(postgres_url)  # empty: the replicas migrate it themselves
            stack.callback(pg_env.drop_database, database_url)
            slack = stack.enter_context(FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}))
            mlflow = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
            services: dict[str, Service] = {}
            for spec in specs:
                model = f"{prefix}-{spec.name}"
                versions = tuple(str(v) for v in seed_registry(mlflow, model, versions=len(spec.profiles)))
                mlflow.set_registered_model_alias(model, "champion", versions[0])
                profiles = dict(zip(versions, (p for _, p in spec.profiles), strict=True))
                sim = stack.enter_context(ModelServiceSimulator(spec.name, champion=alias_reader(mlflow, model),
                                                                profiles=profiles, default=FAST))
                services[spec.name] = Service(spec, model, sim, versions)
            prom = stack.enter_context(PrometheusServer(workdir / "prom", targets=[s.sim.target for s in
                                                                                   services.values()],
                                                        binary=prometheus_bin))
            for name in services:
                prom.wait_for_series(f'model_auc{{service="{name}"}}', timeout=60)
            helm_state, helm_log, helm_hold = workdir / "helm-state.json", workdir / "helm-argv.jsonl", \
                workdir / "helm-hold"
            helm_state.write_text(json.dumps({"releases": {HELM_RELEASE: standard_history()}, "faults": {},
                                              "delays": {"rollback": {"until": str(helm_hold)}}}))
            helm_log.touch()
            env = {"HELM_BIN": str(BIN / "helm"), "FAKE_HELM_STATE": str(helm_state), "FAKE_HELM_LOG": str(helm_log),
                   **(extra_env or {})}
            policy = workdir / "policy.yaml"
            policy.write_text(policy_text(specs, {n: s.model for n, s in services.items()}))
            cluster = Cluster(workdir, policy, slack_url=slack.url, prometheus_url=prom.url, mlflow_url=mlflow_url,
                              database_url=database_url, replicas=replicas, ttl=ttl, extra_env=env)
            stack.callback(cluster.stop)
            cluster.start()
        except BaseException:
            stack.close()
            raise
        return cls(workdir, database_url, slack, mlflow, prom, services, cluster, helm_state, helm_log, helm_hold,
                   stack)

    def stop(self) -> None:
        self._stack.close()

    # -- the registry ------------------------------------------------------------------------------------------
    def alias(self, service: str, alias: str = "champion") -> str | None:
        try:
            return str(self.mlflow.get_model_version_by_alias(self.services[service].model, alias).version)
        except Exception:  # noqa: BLE001 - MLflow raises its own RestException for a missing alias: "none"
            return None

    def break_service(self, service: str) -> None:
        """Point @champion at the bad version (v2), v1 kept as @previous_champion, as a bad promotion would."""
        svc = self.services[service]
        self.mlflow.set_registered_model_alias(svc.model, "previous_champion", svc.versions[0])
        self.mlflow.set_registered_model_alias(svc.model, "champion", svc.versions[1])

    # -- incidents through Slack --------------------------------------------------------------------------------
    def warning(self, service: str, timeout: float = 60) -> tuple[dict[str, Any], int]:
        """The service's first warning once it is in the channel, and its incident id."""
        channel = self.services[service].spec.channel
        message = wait_until(lambda: next(iter(warnings(self.slack, channel)), None), timeout,
                             f"the warning of {service}", interval=0.1)
        return message, int(button(message, "rollback_approve")["value"])

    def click(self, service: str, warning_ts: str, action: str, incident_id: int, *, user: str = APPROVER,
              to: str | None = None) -> tuple[Replica, requests.Response]:
        """Press a button of the warning as `user` as it reads now, on the next replica (or `to`)."""
        channel = self.services[service].spec.channel
        body = block_actions_body(user_id=user, channel_id=channel, message_ts=warning_ts, action_id=action,
                                  value=str(incident_id), message=self.slack.message(channel, warning_ts))
        return self.cluster.post(body, to=to)

    def command(self, channel: str, text: str, *, user: str = APPROVER, to: str | None = None
                ) -> tuple[Replica, requests.Response]:
        body = slash_command_body(text=text, user_id=user, channel_id=channel, response_url=self.slack.response_url)
        return self.cluster.post(body, to=to)

    def incident(self, incident_id: int) -> dict[str, Any]:
        rows = self.cluster.sql("SELECT * FROM incidents WHERE id = %s", incident_id)
        assert rows, f"no incident #{incident_id}"
        return rows[0]

    def wait_state(self, incident_id: int, *states: str, timeout: float = 60) -> dict[str, Any]:
        found: dict[str, Any] = wait_until(lambda: (i := self.incident(incident_id))["state"] in states and i,
                                           timeout, f"incident #{incident_id} in {states}", interval=0.2)
        return found

    def steps(self, incident_id: int) -> list[dict[str, Any]]:
        return self.cluster.sql("SELECT * FROM steps WHERE incident_id = %s ORDER BY id", incident_id)

    def events(self, incident_id: int) -> list[dict[str, Any]]:
        return self.cluster.sql("SELECT * FROM events WHERE incident_id = %s ORDER BY id", incident_id)

    def audits(self, incident_id: int | None = None) -> list[dict[str, Any]]:
        if incident_id is None:
            return self.cluster.sql("SELECT * FROM audit ORDER BY id")
        return self.cluster.sql("SELECT * FROM audit WHERE incident_id = %s ORDER BY id", incident_id)

    def helm_rollbacks(self) -> int:
        return sum(1 for line in self.helm_log.read_text().splitlines() if json.loads(line)[:1] == ["rollback"])

    def let_helm_finish(self) -> None:
        self.helm_hold.touch()
