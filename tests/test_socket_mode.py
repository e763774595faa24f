"""Socket Mode, whole stories: a real `rollback-bot serve` with SLACK_APP_TOKEN against the Socket Mode fake
(sandbox/socket_mode.py) and the fake Web API, a real `mlflow server`, a real Prometheus scraping the simulated
model service.

The bot opens its connection (apps.connections.open, then the WebSocket) and /slack/events is a 404; a slash command
and a Roll back click arrive as envelopes, are acked by envelope_id before the work behind them ends, and act exactly
as over HTTP (the answer as chat.postEphemeral, the champion flipped back, Recovered in the thread); a `disconnect`
makes it reconnect and loses nothing; two replicas on one PostgreSQL each hold a connection of their own, and an
envelope sent to one is handled once. Ack delays are printed (run with -s); nothing here waits on a clock. After a
reconnect slack_sdk's built-in client reads the new connection only once the old socket's 3 s receive timeout ends,
so the first envelope then is acked about 3 s late (printed; a slack_sdk limit, see bot/app.py serve).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow.tracking import MlflowClient

from sandbox.model_service import ModelServiceSimulator, VersionProfile, alias_reader, seed_registry
from sandbox.servers import MlflowServer, PrometheusServer
from sandbox.signing import block_actions_body, post_signed, slash_command_body
from sandbox.slack_api import FakeSlackAPI
from sandbox.socket_mode import Ack, FakeSocketMode, payload_of
from tests import pg_env
from tests.replicas_env import Cluster
from tests.story_env import (
    APPROVER,
    CHANNEL,
    GROUP,
    GROUP_MEMBER,
    SECRET,
    TOKEN,
    BotProcess,
    button,
    policy_yaml,
    wait_until,
)

pytestmark = pytest.mark.story

APP_TOKEN = "xapp-sandbox-not-a-real-token"  # the fake wants the xapp- prefix only
FAST = VersionProfile(latency_seconds=0.05, error_rate=0.0, auc=0.86)
SLOW = VersionProfile(latency_seconds=0.45, error_rate=0.02, auc=0.71)


@dataclass
class World:
    """The servers every test here shares: MLflow's model (v1 good, v2 bad), the simulator, Prometheus, the policy."""

    mlflow: MlflowClient
    mlflow_url: str
    model: str
    v1: str
    v2: str
    prom: PrometheusServer
    policy: Path

    def champion(self) -> str:
        return str(self.mlflow.get_model_version_by_alias(self.model, "champion").version)


@dataclass
class Single:
    """One bot in Socket Mode with its own fake Slack (Web API and Socket Mode)."""

    slack: FakeSlackAPI
    socket: FakeSocketMode
    bot: BotProcess


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, prometheus_bin: str, mlflow_server: MlflowServer
          ) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("socket-mode")
    mlflow = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    model = f"socket-{workdir.name[-6:]}".replace("_", "-")
    v1, v2 = seed_registry(mlflow, model, versions=2)
    mlflow.set_registered_model_alias(model, "champion", v1)
    policy = workdir / "policy.yaml"
    policy.write_text(policy_yaml(model=model))
    with ModelServiceSimulator(champion=alias_reader(mlflow, model), profiles={v1: FAST, v2: SLOW},
                               default=FAST) as sim, \
            PrometheusServer(workdir / "prom", targets=[sim.target], binary=prometheus_bin) as prom:
        prom.wait_for_series('model_auc{service="model-svc"}')
        yield World(mlflow, mlflow_server.url, model, str(v1), str(v2), prom, policy)


@pytest.fixture(scope="module")
def single(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Single]:
    workdir = tmp_path_factory.mktemp("single")
    with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as slack, FakeSocketMode(slack=slack) as socket:
        bot = BotProcess(workdir, world.policy, slack_url=slack.url, prometheus_url=world.prom.url,
                         mlflow_url=world.mlflow_url, extra_env={"SLACK_APP_TOKEN": APP_TOKEN})
        try:
            bot.start(timeout=60)
            yield Single(slack, socket, bot)
        finally:
            bot.stop()
            log = bot.log()
            assert APP_TOKEN not in log and TOKEN not in log and SECRET not in log, "a token reached the log"


def command(socket: FakeSocketMode, slack: FakeSlackAPI, text: str, user: str = APPROVER,
            **send: Any) -> tuple[Ack, str]:
    """Send `/rollback <text>` as a slash_commands envelope; its ack and the ephemeral answer the user gets."""
    before = len(slack.calls("chat.postEphemeral"))
    body = slash_command_body(text=text, user_id=user, channel_id=CHANNEL, response_url=slack.response_url)
    envelope = socket.send("slash_commands", payload_of(body), **send)
    ack = socket.wait_for_ack(envelope.envelope_id)
    call = wait_until(lambda: next((c for c in slack.calls("chat.postEphemeral")[before:]
                                    if c.params.get("user") == user), None), 60, f"the answer to /rollback {text}")
    return ack, html.unescape(str(call.params["text"]))


def _holds_socket(pid: int, local_port: int) -> bool:
    """Whether process `pid` has an open TCP socket whose local port is `local_port` (/proc: inode, then its fds)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        for line in (path.read_text().splitlines()[1:] if path.exists() else []):
            fields = line.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                inodes.add(f"socket:[{fields[9]}]")
    links = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
    return bool(inodes & links)


def test_connects_over_the_socket_and_slack_events_is_gone(single: Single) -> None:
    """apps.connections.open with the app-level token in the Authorization header, then one WebSocket; the HTTP
    route for Slack's requests answers 404, signed or not."""
    connection = single.socket.wait_for_connections(1)[0]
    opens = single.slack.calls("apps.connections.open")
    assert len(opens) == 1 and opens[0].headers.get("Authorization") == "Bearer ***"
    assert all("token" not in c.params for c in opens), "the app-level token goes in the header only"
    assert [c.number for c in single.socket.connections(open_only=False)] == [connection.number] == [1]
    body = slash_command_body(text="status", user_id=APPROVER, channel_id=CHANNEL)
    answer = post_signed(f"{single.bot.url}/slack/events", SECRET, body)
    assert answer.status_code == 404, answer.text
    assert requests.get(f"{single.bot.url}/healthz", timeout=5).status_code == 200


def test_a_slash_command_is_acked_before_its_answer_and_answered_as_over_http(single: Single) -> None:
    """The ack goes back by envelope_id while the answer (chat.postEphemeral, as over HTTP) is still held by Slack:
    the ack never waits for the work behind it."""
    hold = single.slack.hold_responses("chat.postEphemeral", seconds=120)
    body = slash_command_body(text="status", user_id=APPROVER, channel_id=CHANNEL, response_url=single.slack.response_url)
    envelope = single.socket.send("slash_commands", payload_of(body))
    ack = single.socket.wait_for_ack(envelope.envelope_id)
    assert [a.envelope_id for a in single.socket.acks(envelope.envelope_id)] == [envelope.envelope_id]
    held = wait_until(lambda: hold.held, 30, "the answer's chat.postEphemeral")[0]
    assert held.peer is not None and single.bot.proc is not None
    # The bot still waits on that post (its socket is open): the ack came before the answer, not after it gave up.
    assert _holds_socket(single.bot.proc.pid, held.peer[1]), "acked only after the answer's post ended"
    single.slack.release_holds()
    call = single.slack.wait_for(lambda c: c.method == "chat.postEphemeral" and c.params.get("user") == APPROVER)
    assert "model-svc" in html.unescape(str(call.params["text"]))
    print(f"\nslash command acked {ack.after:.3f}s after it was sent")
    # Bad input is answered in the ack itself, which Slack shows ephemerally (no Web API call).
    bad = single.socket.send("slash_commands", payload_of(slash_command_body(
        text="frobnicate", user_id=APPROVER, channel_id=CHANNEL, response_url=single.slack.response_url)))
    refused = single.socket.wait_for_ack(bad.envelope_id)
    assert refused.payload and "frobnicate" in str(refused.payload.get("text"))
    assert any("frobnicate" in str(e.get("text")) for e in single.slack.ephemerals(CHANNEL, APPROVER))


def test_a_disconnect_makes_it_reconnect_and_loses_nothing(single: Single) -> None:
    """refresh_requested: apps.connections.open again, a new connection, the old one closed by the client; the
    envelope sent just before and the one sent after are each acked and answered once."""
    old = single.socket.wait_for_connections(1)[0]
    opens = len(single.slack.calls("apps.connections.open"))
    answered = len(single.slack.ephemerals(CHANNEL, APPROVER))
    before = single.socket.send("slash_commands", payload_of(slash_command_body(
        text="status", user_id=APPROVER, channel_id=CHANNEL, response_url=single.slack.response_url)), to=old)
    single.socket.disconnect(old, "refresh_requested")
    new = wait_until(lambda: [c for c in single.socket.wait_for_connections(1) if c.number > old.number], 30,
                     "a new connection")[0]
    after_ack, text = command(single.socket, single.slack, "status", to=new)  # as soon as the new one is open
    wait_until(lambda: not old.open, 30, "the old connection closed by the client")
    assert len(single.slack.calls("apps.connections.open")) > opens, "a new URL for the new connection"
    single.socket.wait_for_ack(before.envelope_id)
    wait_until(lambda: len(single.slack.ephemerals(CHANNEL, APPROVER)) >= answered + 2, 30, "both answers")
    assert len(single.slack.ephemerals(CHANNEL, APPROVER)) == answered + 2, "each envelope answered once"
    assert [len(single.socket.acks(e.envelope_id)) for e in (before,)] == [1]
    assert after_ack.connection == new.number and "model-svc" in text
    print(f"\nfirst envelope after the reconnect acked {after_ack.after:.3f}s after it was sent")


def test_two_replicas_each_hold_a_connection_and_an_envelope_is_handled_once(
        world: World, postgres_url: str, tmp_path: Path) -> None:
    """Two `serve` on one PostgreSQL: two connections, one per process (found by the client's port in /proc);
    an envelope sent to either is acked once and answered once."""
    database_url = pg_env.create_database(postgres_url)
    try:
        with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as slack, FakeSocketMode(slack=slack) as socket:
            cluster = Cluster(tmp_path, world.policy, slack_url=slack.url, prometheus_url=world.prom.url,
                              mlflow_url=world.mlflow_url, database_url=database_url, replicas=2)
            for replica in cluster.replicas.values():
                replica.bot.env["SLACK_APP_TOKEN"] = APP_TOKEN
            try:
                cluster.start()
                connections = socket.wait_for_connections(2)
                holders = [cluster.holder_of(c.peer[1]) for c in connections]
                assert sorted(h.id for h in holders if h) == ["r1", "r2"], "one connection per replica"
                for connection, holder in zip(connections, holders, strict=True):
                    before = len(slack.ephemerals(CHANNEL, APPROVER))
                    ack, text = command(socket, slack, "status", to=connection)
                    assert "model-svc" in text and len(socket.acks(ack.envelope_id)) == 1
                    wait_until(lambda b=before: len(slack.ephemerals(CHANNEL, APPROVER)) == b + 1, 30, "the answer")
                    assert holder is not None and ack.connection == connection.number  # answered by that replica
                assert len(socket.connections()) == 2, "no replica opened a second connection"
            finally:
                cluster.stop()
    finally:
        pg_env.drop_database(database_url)


def test_a_breach_and_a_roll_back_click_over_the_socket_roll_back_as_over_http(world: World, single: Single) -> None:
    """The warning, then Roll back pressed by a member of the approvers' group, as an `interactive` envelope carrying
    the same block_actions payload Slack posts over HTTP: acked, the champion flipped back, Recovered in the thread."""
    world.mlflow.set_registered_model_alias(world.model, "previous_champion", world.v1)
    world.mlflow.set_registered_model_alias(world.model, "champion", world.v2)
    slack, socket = single.slack, single.socket
    call = slack.wait_for(lambda c: c.method == "chat.postMessage" and bool(c.params.get("blocks"))
                          and any(b.get("type") == "actions" for b in c.params["blocks"]), timeout=60)
    warning = slack.message(CHANNEL, str(slack.messages(CHANNEL)[-1]["ts"]))
    assert call.params.get("channel") == CHANNEL
    roll = button(warning, "rollback_approve")
    payload = payload_of(block_actions_body(user_id=GROUP_MEMBER, channel_id=CHANNEL, message_ts=warning["ts"],
                                            action_id="rollback_approve", value=roll["value"], message=warning,
                                            response_url=slack.response_url))
    envelope = socket.send("interactive", payload)
    ack = socket.wait_for_ack(envelope.envelope_id)
    assert ack.payload is None, "a click's ack carries nothing"
    wait_until(lambda: world.champion() == world.v1, 30, "champion flipped back", interval=0.1)
    slack.wait_for(lambda c: c.method == "chat.postMessage" and c.params.get("thread_ts") == warning["ts"]
                   and "Recovered:" in c.params.get("text", ""), timeout=90)
    texts = [m.get("text", "") for m in slack.thread(CHANNEL, warning["ts"])]
    assert any("Approved by" in t and GROUP_MEMBER in t for t in texts)
    assert any("Done step 1/1 `mlflow_alias`" in t for t in texts)
    assert len(socket.acks(envelope.envelope_id)) == 1
    print(f"\nRoll back click acked {ack.after:.3f}s after it was sent; "
          f"acks: {json.dumps([round(a.after or 0, 3) for a in socket.acks()])}")
