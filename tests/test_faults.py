"""Fault injection: Prometheus down and hanging, MLflow 5xx, Kubernetes 409/500, helm exiting non-zero, git
pushes rejected forever, Slack 429 with Retry-After and Slack 5xx. Each fault hits one service while a second
service in the same bot goes on; whatever still fails after the bounded retries halts the incident with its
cause in the thread.

Prometheus down runs against a real `rollback-bot serve` (it must keep answering /healthz and slash commands);
the others drive IncidentService in-process against real servers (MLflow behind tests/fault_proxy.py, Debian's
Prometheus behind the same proxy, the fake Kubernetes API, the fake helm, real git repositories, the fake
Slack Web API), calling `execute` and `verify_tick` as the scheduler would. Run with -s for a table per test:
the fault injected, the calls it cost, and the state the incident ended in.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from git import Repo
from mlflow.tracking import MlflowClient

from bot.app import Bot, wire
from bot.infra.prom import Prometheus
from bot.infra.scheduler import Scheduler
from bot.infra.store import Incident, Store
from bot.slack import blocks
from bot.slack.slack_out import SlackOut, make_client
from bot.slo.policy_file import parse_policy
from executors.registry import Clients
from sandbox.model_service import seed_registry
from sandbox.servers import MlflowServer, PrometheusServer, free_port
from sandbox.signing import block_actions_body, post_signed, slash_command_body
from sandbox.slack_api import FakeSlackAPI
from tests import kube_env
from tests.fault_proxy import FaultProxy
from tests.helm_env import FakeHelm, standard_history
from tests.kube_env import KubeEnv
from tests.story_env import APPROVER, CHANNEL, SECRET, BotProcess, wait_until
from tests.stubs import Clock, StubProm
from tests.test_exec_git_revert import make_origin

kube_server, kube = kube_env.kube_server, kube_env.kube  # the shared fixtures (see tests/kube_env.py)

Row = tuple[str, str, str, str]  # service, fault injected, what it cost, end state


def _table(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    print(f"  {'service':<8} {'fault injected':<52} {'calls / attempts':<40} end state")
    for service, fault, cost, state in rows:
        print(f"  {service:<8} {fault:<52} {cost:<40} {state}")


def _service(name: str, channel: str, model: str, step: str, query: str) -> str:
    return f"""
  {name}:
    channel: {channel}
    approvers: [{APPROVER}]
    model: {model}
    slos:
      - {{name: latency, query: '{query}', above: 0.25, for: 0s}}
    rollback:
      - {step}
    verify: {{every: 1s, within: 20s, stable_for: 2s}}
"""


def _policy(*services: str) -> str:
    return "evaluate_every: 1s\nservices:" + "".join(services)


@pytest.fixture
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI() as fake:
        yield fake


def _bot(tmp_path: Path, slack: FakeSlackAPI, text: str, prom: Any, *, mlflow: Any = None,
         clients: Clients | None = None, clock: Clock | None = None) -> Bot:
    clock = clock or Clock()
    store = Store(f"sqlite:///{tmp_path / 'bot.db'}", clock=clock)
    return wire(policy=parse_policy(text), store=store, prom=prom,
                slack=SlackOut(make_client("xoxb-t", slack.url)), mlflow=mlflow, scheduler=Scheduler(),
                clients=clients or Clients(mlflow=mlflow), clock=clock)


def _approve_and_run(bot: Bot, service: str) -> Incident:
    incident = bot.store.active_incident(service)
    assert incident is not None, f"{service} has no incident"
    assert bot.incidents.approve(incident.id, APPROVER).ok
    bot.runs.execute(incident.id)  # what the scheduler runs right after the approval
    return bot.store.incident(incident.id)


def _verify(bot: Bot, clock: Clock, incident_id: int, ticks: int = 4) -> Incident:
    for _ in range(ticks):
        clock.tick(1)
        bot.runs.verify_tick(incident_id)
    return bot.store.incident(incident_id)


def _thread(slack: FakeSlackAPI, incident: Incident) -> list[str]:
    return [m.get("text", "") for m in slack.thread(incident.channel or "", incident.message_ts or "")]


def _halted_with(slack: FakeSlackAPI, incident: Incident, *needles: str) -> str:
    """The thread's failure line; it names the cause and the incident is halted with it stored."""
    assert incident.state == "halted" and incident.halt_kind == "failed", incident
    line = next((t for t in _thread(slack, incident) if ":x: Rollback stopped at" in t), None)
    assert line is not None, _thread(slack, incident)
    for needle in needles:
        assert needle in line and needle in (incident.error or ""), (needle, line)
    return line


# -- Prometheus ------------------------------------------------------------------------------------------


def test_prometheus_down_reports_errors_never_breach_or_recovery_and_serve_keeps_answering(
        tmp_path: Path, mlflow_server: MlflowServer, mlflow_client: MlflowClient, unique_model: str) -> None:
    good, bad = seed_registry(mlflow_client, unique_model, versions=2)
    mlflow_client.set_registered_model_alias(unique_model, "previous_champion", good)
    mlflow_client.set_registered_model_alias(unique_model, "champion", bad)
    policy = tmp_path / "policy.yaml"
    policy.write_text(_policy(_service("svc-a", CHANNEL, unique_model, f"mlflow_alias: {{model: {unique_model}}}",
                                       "max(model_latency_seconds)"))
                      .replace("within: 20s, stable_for: 2s", "within: 5s, stable_for: 1s"))
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with FakeSlackAPI() as slack:
        bot = BotProcess(tmp_path, policy, slack_url=slack.url, prometheus_url=down, mlflow_url=mlflow_server.url)
        try:
            bot.start()
            store = Store(f"sqlite:///{tmp_path / 'bot.db'}")
            state = wait_until(lambda: store.slo_state("svc-a", "latency"), 20, "an evaluated SLO")
            assert state.status == "error" and state.breach_since is None and state.value is None
            assert store.active_incident("svc-a") is None, "a failing query is never a breach"

            assert requests.get(f"{bot.url}/healthz", timeout=5).status_code == 200
            gauge = 'rollback_slo_breaching{service="svc-a",slo="latency"} 0.0'
            wait_until(lambda: gauge in requests.get(f"{bot.url}/metrics", timeout=5).text, 10, "the SLO gauge")
            events = f"{bot.url}/slack/events"
            helped = post_signed(events, SECRET, slash_command_body(
                text="help", user_id=APPROVER, channel_id=CHANNEL, response_url=slack.response_url_for(CHANNEL, APPROVER)))
            assert helped.status_code == 200
            if "/rollback" not in helped.text:  # answered in the ack's body, or later through the response_url
                slack.wait_for(lambda c: c.method == "response_url" and "/rollback" in json.dumps(c.params), 10)

            # A rollback by hand still works (MLflow is up), but verification cannot read: it never recovers.
            asked = post_signed(events, SECRET, slash_command_body(text="svc-a", user_id=APPROVER, channel_id=CHANNEL))
            assert asked.status_code == 200
            incident = wait_until(lambda: store.active_incident("svc-a"), 20, "the requested incident")
            warning = wait_until(lambda: (i := store.incident(incident.id)).message_ts and i, 20, "the warning")
            message = slack.message(CHANNEL, warning.message_ts or "")
            click = block_actions_body(user_id=APPROVER, channel_id=CHANNEL, message_ts=message["ts"],
                                       action_id="rollback_approve", value=str(incident.id), message=message)
            assert post_signed(events, SECRET, click).status_code == 200
            done = wait_until(lambda: (i := store.incident(incident.id)).state in ("recovered", "verify_failed") and i,
                              40, "the verdict")
            assert done.state == "verify_failed"
            assert [e.kind for e in store.events(incident.id)].count("stable") == 0
            assert str(mlflow_client.get_model_version_by_alias(unique_model, "champion").version) == good
            assert requests.get(f"{bot.url}/healthz", timeout=5).status_code == 200
        finally:
            bot.stop()
    _table("Prometheus down (serve)", [
        ("svc-a", "PROMETHEUS_URL with nothing listening", "every query refused, 1 retry each",
         "no incident from evaluation (SLO 'error')"),
        ("svc-a", "same, during verification of a manual rollback", "/healthz, /metrics, /rollback answered",
         done.state)])


def test_prometheus_hanging_on_one_query_leaves_the_other_service_going(
        tmp_path: Path, prometheus_bin: str, slack: FakeSlackAPI) -> None:
    hung, working = 'absent(nothing{probe="hang"})', "vector(1)"
    text = _policy(_service("svc-a", "C0SVCA", "model-a", "mlflow_alias: {model: model-a}", hung),
                   _service("svc-b", "C0SVCB", "model-b", "mlflow_alias: {model: model-b}", working)
                   .replace("    rollback:", "      - {name: broken, query: 'sum(rate(', above: 1}\n    rollback:"))
    with PrometheusServer(tmp_path / "prom", targets=[], binary=prometheus_bin) as server, \
            FaultProxy(server.url) as proxy:
        proxy.hang("GET", r"/api/v1/query$", match=r'probe="hang"')
        proxy.hang("POST", r"/api/v1/query$", match=r'probe="hang"')
        prom = Prometheus(proxy.url, timeout=1.0, retries=1)
        bot = _bot(tmp_path, slack, text, prom)
        try:
            readings = bot.detection.evaluate_once()
        finally:
            prom.close()
        a, (b, broken) = readings["svc-a"][0], readings["svc-b"]
        assert a.status == "error" and not a.sustained and "Timeout" in (a.error or "")
        assert b.status == "breach" and b.sustained
        assert broken.status == "error" and "bad_data" in (broken.error or ""), "one bad query breaks nothing else"
        assert bot.store.active_incident("svc-a") is None
        opened = bot.store.active_incident("svc-b")
        assert opened is not None and opened.message_ts, "svc-b's warning went out"
        held = len([seen for seen in proxy.seen() if seen.injected == "hang"])
        forwarded = [seen for seen in proxy.seen() if seen.injected is None]
        assert len(forwarded) == 2, "vector(1) once, the unparsable query once (bad_data is not retried)"
        stored = bot.store.slo_state("svc-a", "latency")
        assert stored is not None and stored.status == "error"
    _table("Prometheus timing out", [
        ("svc-a", "query held by the proxy, never answered", f"{held} requests held (timeout 1s, 1 retry)",
         "SLO 'error', no incident"),
        ("svc-b", "a second SLO with unparsable PromQL (bad_data)", "1 query each, bad_data not retried",
         f"that SLO 'error'; incident #{opened.id} {opened.state} from the other SLO, warning posted")])


# -- MLflow ----------------------------------------------------------------------------------------------


def test_mlflow_5xx_on_the_alias_write_halts_with_the_cause_and_retry_recovers(
        tmp_path: Path, slack: FakeSlackAPI, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # what serve sets is 3; fewer keeps this short
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")  # an int; 0 = no sleep between retries
    models = {}
    for name in ("svc-a", "svc-b"):
        model = f"fault-{name}-{free_port()}"
        good, bad = seed_registry(mlflow_client, model, versions=2)
        mlflow_client.set_registered_model_alias(model, "previous_champion", good)
        mlflow_client.set_registered_model_alias(model, "champion", bad)
        models[name] = (model, good, bad)
    text = _policy(*(_service(n, f"C0{n[-1].upper()}", m, f"mlflow_alias: {{model: {m}}}", f"lat_{n[-1]}")
                     for n, (m, _, _) in models.items()))
    clock = Clock()
    prom = StubProm({"lat_a": (0.9,), "lat_b": (0.9,)})
    with FaultProxy(mlflow_server.url) as proxy:
        client = MlflowClient(tracking_uri=proxy.url, registry_uri=proxy.url)
        bot = _bot(tmp_path, slack, text, prom, mlflow=client, clock=clock)
        bot.detection.evaluate_once()
        proxy.fail("POST", r"/registered-models/alias$", status=503, match=models["svc-a"][0])

        a = _approve_and_run(bot, "svc-a")
        line = _halted_with(slack, a, "step 1/1 `mlflow_alias`")
        assert "503" in line or "TEMPORARILY_UNAVAILABLE" in line or "too many" in line, line
        writes = len(proxy.seen("POST", r"/registered-models/alias$"))
        assert writes == 3, "the idempotent alias write is retried (MLFLOW_HTTP_REQUEST_MAX_RETRIES=2)"
        assert str(mlflow_client.get_model_version_by_alias(models["svc-a"][0], "champion").version) == models["svc-a"][2]

        b = _approve_and_run(bot, "svc-b")  # the other service is not held up
        assert b.state == "verifying"
        prom.answers["lat_b"] = (0.1,)
        b = _verify(bot, clock, b.id)
        assert b.state == "recovered"

        proxy.clear()  # MLflow is healthy again: Retry step finishes svc-a
        assert bot.incidents.retry(a.id, APPROVER).ok
        bot.runs.execute(a.id)
        prom.answers["lat_a"] = (0.1,)
        a = _verify(bot, clock, a.id)
        assert a.state == "recovered"
        assert str(mlflow_client.get_model_version_by_alias(models["svc-a"][0], "champion").version) == models["svc-a"][1]
    _table("MLflow 5xx", [
        ("svc-a", "503 on POST registered-models/alias (forever)", f"{writes} alias writes (1 + 2 retries)",
         "halted (cause in thread); after the fault cleared and Retry step: recovered"),
        ("svc-b", "none", "1 alias write", b.state)])


# -- Kubernetes ------------------------------------------------------------------------------------------


def test_kubernetes_409_is_retried_and_500_forever_halts(tmp_path: Path, slack: FakeSlackAPI, kube: KubeEnv,
                                                         mlflow_client: MlflowClient) -> None:
    for name in ("a", "b"):
        kube.fake.seed_configmap("prod", f"flags-{name}", {"FEATURE_NEW": "true"})
    step = "feature_flag: {{configmap: flags-{0}, namespace: prod, key: FEATURE_NEW, value: 'false'}}"
    text = _policy(_service("svc-a", "C0A", "model-a", step.format("a"), "lat_a"),
                   _service("svc-b", "C0B", "model-b", step.format("b"), "lat_b"))
    clock = Clock()
    prom = StubProm({"lat_a": (0.9,), "lat_b": (0.9,)})
    bot = _bot(tmp_path, slack, text, prom, mlflow=mlflow_client, clock=clock,
               clients=Clients(mlflow=mlflow_client, kube=kube.api_client))
    bot.detection.evaluate_once()
    path_a, path_b = "/api/v1/namespaces/prod/configmaps/flags-a", "/api/v1/namespaces/prod/configmaps/flags-b"
    kube.fake.fail("PATCH", path_a + "$", 409, times=1, message="Operation cannot be fulfilled: the object has been "
                   "modified; please apply your changes to the latest version and try again")
    kube.fake.fail("PATCH", path_b + "$", 500, times=None, message="etcdserver: request timed out")

    a = _approve_and_run(bot, "svc-a")
    assert a.state == "verifying"
    prom.answers["lat_a"] = (0.1,)
    a = _verify(bot, clock, a.id)
    assert a.state == "recovered"
    assert kube.fake.get("configmaps", "prod", "flags-a")["data"]["FEATURE_NEW"] == "false"
    patches_a = len(kube.fake.requests("PATCH", path_a))

    b = _approve_and_run(bot, "svc-b")
    _halted_with(slack, b, "Kubernetes API answered 500", "etcdserver: request timed out", "gave up after 4 attempts")
    assert kube.fake.get("configmaps", "prod", "flags-b")["data"]["FEATURE_NEW"] == "true"
    patches_b = len(kube.fake.requests("PATCH", path_b))
    assert (patches_a, patches_b) == (2, 4)
    _table("Kubernetes 409 / 500", [
        ("svc-a", "409 Conflict on the ConfigMap PATCH, once", f"{patches_a} PATCHes (1 retried)", a.state),
        ("svc-b", "500 on the ConfigMap PATCH, forever", f"{patches_b} PATCHes (4 attempts, backoff)",
         f"{b.state} (cause in thread)")])


# -- helm ------------------------------------------------------------------------------------------------


def test_helm_nonzero_exit_halts_with_helms_stderr(tmp_path: Path, slack: FakeSlackAPI, mlflow_client: MlflowClient,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    helm = FakeHelm.install(monkeypatch, tmp_path, {"prod/model-a": standard_history(),
                                                    "prod/model-b": standard_history()})
    stderr = 'Error: UPGRADE FAILED: cannot patch "model-a" with kind Deployment: field is immutable'
    text = _policy(_service("svc-a", "C0A", "model-a", "helm: {release: model-a, namespace: prod}", "lat_a"),
                   _service("svc-b", "C0B", "model-b", "helm: {release: model-b, namespace: prod}", "lat_b"))
    clock = Clock()
    prom = StubProm({"lat_a": (0.9,), "lat_b": (0.9,)})
    bot = _bot(tmp_path, slack, text, prom, mlflow=mlflow_client, clock=clock,
               clients=Clients(mlflow=mlflow_client, helm="helm"))
    bot.detection.evaluate_once()
    helm.fail("rollback", times=1, stderr=stderr)

    a = _approve_and_run(bot, "svc-a")
    _halted_with(slack, a, "helm exited with status 1", stderr)
    assert helm.history("prod/model-a")[-1]["revision"] == 3, "nothing changed"

    b = _approve_and_run(bot, "svc-b")
    prom.answers["lat_b"] = (0.1,)
    b = _verify(bot, clock, b.id)
    assert b.state == "recovered" and helm.history("prod/model-b")[-1]["description"] == "Rollback to 2"
    rollbacks = [c for c in helm.calls() if c[:1] == ["rollback"]]
    assert len(rollbacks) == 2, "a non-idempotent helm rollback is never retried by the bot"
    _table("helm non-zero exit", [
        ("svc-a", "helm rollback exits 1 with stderr", "1 helm rollback (not retried)", f"{a.state} (stderr in thread)"),
        ("svc-b", "none", "1 helm rollback", b.state)])


# -- git -------------------------------------------------------------------------------------------------


def test_git_push_rejected_forever_halts_after_bounded_retries(tmp_path: Path, slack: FakeSlackAPI,
                                                              mlflow_client: MlflowClient) -> None:
    raced, declined = make_origin(tmp_path / "raced"), make_origin(tmp_path / "declined")
    bad = {}
    for name, origin in (("a", raced), ("b", declined)):
        origin.commit("deploy v1", {"values.yaml": "image: v1\n"})
        bad[name] = origin.commit("deploy v2", {"values.yaml": "image: v2\n"})
    fired = raced.second_writer(limit=1000)  # every push of ours loses the race to another writer
    refused = tmp_path / "declined.log"  # a policy hook that refuses every push, and counts them
    hook = declined.bare / "hooks" / "pre-receive"
    hook.write_text(f"#!{sys.executable}\nimport sys\nopen({str(refused)!r}, 'a').write('push\\n')\n"
                    "print('GL-HOOK-ERR: protected branch: pushes need a merge request', file=sys.stderr)\n"
                    "sys.exit(1)\n")
    hook.chmod(0o755)
    step = "git_revert: {{repo: '{0}', commit: '{1}', push_retries: 2}}"
    text = _policy(_service("svc-a", "C0A", "model-a", step.format(raced.url, bad["a"]), "lat_a"),
                   _service("svc-b", "C0B", "model-b", step.format(declined.url, bad["b"]), "lat_b"))
    prom = StubProm({"lat_a": (0.9,), "lat_b": (0.9,)})
    bot = _bot(tmp_path, slack, text, prom, mlflow=mlflow_client,
               clients=Clients(mlflow=mlflow_client, workdir=str(tmp_path / "clones")))
    bot.detection.evaluate_once()

    a = _approve_and_run(bot, "svc-a")
    _halted_with(slack, a, "gave up pushing the revert", "on all 3 attempts (push_retries=2)")
    races = len(fired.read_text().splitlines())
    assert races == 3

    b = _approve_and_run(bot, "svc-b")
    _halted_with(slack, b, "pre-receive hook declined", "protected branch")
    pushes_b = len(refused.read_text().splitlines())
    assert pushes_b == 1, "a refusal is not a race: not retried"
    for origin in (raced, declined):
        assert not any(s.startswith("Revert") for s in _subjects(origin.bare)), "nothing of ours landed"
    _table("git push rejected", [
        ("svc-a", "every push loses to another writer (pre-receive)", f"{races} pushes (push_retries=2)",
         f"{a.state} (cause in thread)"),
        ("svc-b", "pre-receive hook declines every push", f"{pushes_b} push (a refusal, not retried)",
         f"{b.state} (hook's message in thread)")])


def _subjects(bare: Path) -> list[str]:
    return str(Repo(bare).git.log("--format=%s", "main")).splitlines()


# -- Slack -----------------------------------------------------------------------------------------------


def test_slack_429_is_waited_out_and_5xx_is_posted_on_a_later_cycle(
        tmp_path: Path, slack: FakeSlackAPI, mlflow_client: MlflowClient, unique_model: str) -> None:
    good, bad = seed_registry(mlflow_client, unique_model, versions=2)
    mlflow_client.set_registered_model_alias(unique_model, "previous_champion", good)
    mlflow_client.set_registered_model_alias(unique_model, "champion", bad)
    text = _policy(_service("svc-a", "C0A", unique_model, f"mlflow_alias: {{model: {unique_model}}}", "lat_a"),
                   _service("svc-b", "C0B", "model-b", "feature_flag: {configmap: x, key: K, value: 'v'}", "lat_b"))
    clock = Clock()
    prom = StubProm({"lat_a": (0.9,), "lat_b": (0.1,)})
    bot = _bot(tmp_path, slack, text, prom, mlflow=mlflow_client, clock=clock)

    # 429 on the warning's post and on the first in-place update: slack_sdk waits Retry-After and resends once.
    slack.fail_next("chat.postMessage", status=429, retry_after=1)
    slack.fail_next("chat.update", status=429, retry_after=1)
    bot.detection.evaluate_once()
    incident = bot.store.active_incident("svc-a")
    assert incident is not None and incident.message_ts
    assert bot.incidents.approve(incident.id, APPROVER).ok
    posts, updates = slack.calls("chat.postMessage"), slack.calls("chat.update")
    assert posts[0].params == posts[1].params and posts[1].at - posts[0].at >= 1.0
    assert updates[0].params == updates[1].params and updates[1].at - updates[0].at >= 1.0
    warning_posts = [c for c in posts if c.params.get("blocks")]
    assert len(warning_posts) == 2 and len(updates) == 2, "one resend per 429, no storm"
    assert len(posts) == len(bot.store.events(incident.id)) + 2, "every event posted once, plus the warning twice"
    limited = {"chat.postMessage": len(warning_posts), "chat.update": len(updates)}

    # 503 on a thread post: the event stays unposted in the store and goes out with the next cycle, once.
    slack.fail_next("chat.postMessage", status=503)
    assert bot.incidents.dry_run(incident.id, APPROVER).ok
    unposted = bot.store.unposted_events(incident.id)
    assert [e.kind for e in unposted] == ["dry_run"]
    bot.detection.evaluate_once()  # the next cycle's Timeline.flush_all posts it
    assert bot.store.unposted_events() == []
    bot.runs.execute(incident.id)
    events = bot.store.events(incident.id)
    thread = _thread(slack, bot.store.incident(incident.id))
    posted = [t for t in thread if not t.startswith(":mag:") and "— elapsed" not in t]
    assert posted == [blocks.event_text(e.at, e.text) for e in events], "every event once, in order"
    assert sum("Dry run requested" in t for t in thread) == 1

    # Nothing lost and no 429 storm: one extra call per injected 429, one per 503.
    texts = [c.params.get("text") for c in slack.calls("chat.postMessage")]
    duplicates = {t for t in texts if texts.count(t) > 1}
    assert duplicates == {posts[0].params.get("text"), next(t for t in texts if "Dry run requested" in (t or ""))}
    prom.answers["lat_a"] = (0.1,)
    done = _verify(bot, clock, incident.id)
    assert done.state == "recovered"
    _table("Slack 429 / 5xx", [
        ("svc-a", "429 Retry-After: 1 on chat.postMessage, once", f"{limited['chat.postMessage']} posts for the warning",
         "warning posted after the wait"),
        ("svc-a", "429 Retry-After: 1 on chat.update, once", f"{limited['chat.update']} updates for 1 edit",
         "warning edited after the wait"),
        ("svc-a", "503 on chat.postMessage (thread event), once", "1 failed post, reposted by flush_all",
         f"{done.state}, thread complete and in order")])



# -- Slack down while the bot starts ---------------------------------------------------------------------


def test_serve_starts_while_slack_is_down_and_catches_up(
        tmp_path: Path, mlflow_server: MlflowServer, mlflow_client: MlflowClient, unique_model: str) -> None:
    """A restart during a Slack outage must not crash-loop: the bot starts, keeps its work in the store and
    posts it once Slack answers again."""
    good, bad = seed_registry(mlflow_client, unique_model, versions=2)
    mlflow_client.set_registered_model_alias(unique_model, "previous_champion", good)
    mlflow_client.set_registered_model_alias(unique_model, "champion", bad)
    policy = tmp_path / "policy.yaml"
    policy.write_text(_policy(_service("svc-a", CHANNEL, unique_model, f"mlflow_alias: {{model: {unique_model}}}",
                                       "vector(1)")))
    with FakeSlackAPI() as slack:
        for method in ("auth.test", "chat.postMessage"):
            slack.fail_next(method, status=503, times=3)
        bot = BotProcess(tmp_path, policy, slack_url=slack.url, prometheus_url=f"http://127.0.0.1:{free_port()}",
                         mlflow_url=mlflow_server.url)
        try:
            bot.start()
            store = Store(f"sqlite:///{tmp_path / 'bot.db'}")
            assert requests.get(f"{bot.url}/healthz", timeout=5).status_code == 200  # up, with Slack down
            asked: list[int] = []

            def ask() -> Incident | None:
                """Like the on-call person: type the command again until Slack and the bot answer."""
                command = slash_command_body(text="svc-a", user_id=APPROVER, channel_id=CHANNEL)
                asked.append(post_signed(f"{bot.url}/slack/events", SECRET, command).status_code)
                time.sleep(0.5)  # the listener runs after the ack
                return store.active_incident("svc-a")

            incident = wait_until(ask, 30, "the requested incident", interval=0)
            # One auth.test at start (a warning in the log, not a crash), then Bolt's on requests until Slack answers.
            assert len(slack.calls("auth.test")) == 4, "every auth.test until Slack answered, and no more"
            assert "Slack did not accept auth.test at start" in bot.log() and "Serving anyway" in bot.log()
            posted = wait_until(lambda: (i := store.incident(incident.id)).message_ts and i, 30, "the warning, later")
            wait_until(lambda: not store.unposted_events(), 20, "every event posted")
            failed_posts = 3
            assert len(slack.calls("chat.postMessage")) >= failed_posts + 1
            assert requests.get(f"{bot.url}/healthz", timeout=5).status_code == 200
        finally:
            bot.stop()
    _table("Slack down at start", [
        ("svc-a", "503 on auth.test and chat.postMessage, 3 times each", f"commands typed {len(asked)}x {asked}",
         f"{posted.state}, warning posted once Slack answered")])
