"""Time-to-recover targets and `/rollback report`: the report's numbers from incidents with known timings and
drills in a real store (SQLite and PostgreSQL), the summary's target line, the within/over counter of `/metrics`
after a real close, and `/rollback report` and `/rollback history` over signed requests (real app, real MLflow,
the fake Slack Web API)."""

from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from bot.incidents.report import SHOWN, Reports
from bot.incidents.states import State, move
from bot.infra.store import Drill, Incident, Store
from bot.slack import wording
from bot.slo.policy import Policy
from bot.slo.policy_file import parse_policy
from sandbox.servers import MlflowServer
from sandbox.slack_api import FakeSlackAPI
from tests.handler_env import (
    APPROVER,
    GROUP,
    GROUP_MEMBER,
    MODEL_SVC,
    OTHER_CHANNEL,
    RANKER_SVC,
    HandlerEnv,
    seed_models,
    wait_until,
)
from tests.stubs import Clock

MakeStore = Callable[..., Store]
DAY = 86400.0
NOW = 1_800_000_000.0


def _policy(names: list[str], extra: dict[str, str] | None = None) -> Policy:
    text = "services:\n"
    for name in names:
        text += f"""
  {name}:
    channel: C0{name.upper().replace('-', '')}
    approvers: [U0APPROVER]
    model: {name}-model
    slos:
      - name: auc
        query: 'min(model_auc{{service="{name}"}})'
        below: 0.8
    rollback:
      - mlflow_alias: {{model: {name}-model, alias: champion, to: previous_champion}}
"""
        for line in (extra or {}).get(name, "").splitlines():
            text += f"    {line}\n"
    return parse_policy(text)


def _incident(store: Store, clock: Clock, service: str, *, stable: float | None, end: State = State.RECOVERED,
              warned: bool = True) -> Incident:
    """An incident moved through its states as the bot moves it: opened now, warned 5 s later, approved and
    executed, then recovered `stable` seconds after the warning (or ended in `end` without recovering)."""
    incident = store.open_incident(service=service, trigger="auc", detail={}, baseline={}, breach_started_at=None,
                                   channel="C0X")
    assert incident is not None
    opened = incident.opened_at
    if warned:
        assert store.mark_warned(incident.id, f"{opened}.0001", warned_at=opened + 5)
    alert = opened + 5 if warned else opened
    assert move(store, incident.id, State.OPEN, State.EXECUTING, approved_by=APPROVER, approved_at=opened + 10)
    if end == State.FAILED:
        assert move(store, incident.id, State.EXECUTING, State.HALTED)
        done = move(store, incident.id, State.HALTED, State.FAILED)
    else:
        assert move(store, incident.id, State.EXECUTING, State.VERIFYING, executed_at=opened + 15)
        fields = {"recovered_at": alert + stable} if end == State.RECOVERED and stable is not None else {}
        done = move(store, incident.id, State.VERIFYING, end, **fields)
    assert done is not None
    clock.tick(3600)
    return done


def _drill(store: Store, service: str, *, ok: bool = True, problems: list[str] | None = None) -> Drill:
    return store.record_drill(service=service, mode="dry_run", trigger="promotion", actor="gate", version="5",
                              baseline="4", ok=ok, steps_planned=1 if ok else 0, steps_total=1, planning_seconds=0.4,
                              summary="drill line", started_at=store.db.clock(),
                              detail={"problems": problems or []})


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW - 45 * DAY)


@pytest.fixture
def store(make_store: MakeStore, clock: Clock) -> Store:
    return make_store(clock=clock)


def test_report_numbers_median_worst_share_within_and_the_days_window(store: Store, clock: Clock) -> None:
    policy = _policy([MODEL_SVC, RANKER_SVC, "quiet-svc"], {RANKER_SVC: "targets: {recover: null}"})
    _incident(store, clock, MODEL_SVC, stable=900)  # 45 days ago: outside 30 days, inside 60
    clock.now = NOW - 10 * DAY
    for stable in (120, 400, 200):
        _incident(store, clock, MODEL_SVC, stable=stable)
    _incident(store, clock, MODEL_SVC, stable=None, end=State.VERIFY_FAILED)
    _incident(store, clock, RANKER_SVC, stable=50)
    clock.now = NOW - 2 * 3600
    _drill(store, MODEL_SVC)
    clock.now = NOW - 3 * DAY
    _drill(store, RANKER_SVC, ok=False, problems=["1. mlflow_alias: <!channel> no @previous_champion"])
    clock.now = NOW
    reports = Reports(policy=policy, store=store, clock=clock)

    one = reports.report(MODEL_SVC)
    assert one.ok
    assert one.text.splitlines() == [
        "*Rollback report — last 30 days*",
        "*model-svc* — 4 incidents (3 recovered, 1 not recovered) · time to recover median 3m20s, worst 6m40s · "
        "2 of 4 within the 5m target · last drill 2h ago: ok, dry run, 1 step planned in 0.4 s"]

    wider = reports.report(MODEL_SVC, days=60).text
    assert "5 incidents (4 recovered, 1 not recovered)" in wider and "median 5m, worst 15m" in wider
    assert "2 of 5 within the 5m target" in wider and "*Rollback report — last 60 days*" in wider

    every = reports.report(None).text.splitlines()
    assert every[1].startswith("*model-svc* — 4 incidents"), "the busiest first"
    assert every[2] == ("*ranker-svc* — 1 incident (1 recovered) · time to recover median 50s, worst 50s · "
                        "no recover target · last drill 3d ago: failed (dry run): 1. mlflow_alias: "
                        "&lt;!channel&gt; no @previous_champion")
    assert len(every) == 3, "quiet-svc had neither an incident nor a drill"

    quiet = reports.report("quiet-svc").text
    assert "*quiet-svc* — no incidents in the last 30 days · no drill yet" in quiet
    assert reports.report(None, days=1).text.splitlines()[1:] == [
        "*model-svc* — no incidents in the last day · last drill 2h ago: ok, dry run, 1 step planned in 0.4 s"]


def test_report_of_many_services_is_capped_and_counts_the_rest(store: Store, clock: Clock) -> None:
    names = [f"svc-{n:02d}" for n in range(SHOWN + 5)]
    policy = _policy(names)
    clock.now = NOW - DAY
    for name in names:
        _drill(store, name)
    _incident(store, clock, "svc-24", stable=30)
    clock.now = NOW
    text = Reports(policy=policy, store=store, clock=clock).report(None).text
    lines = text.splitlines()
    assert len(lines) == 1 + SHOWN + 1
    assert lines[1].startswith("*svc-24* — 1 incident (1 recovered)"), "the one with an incident first"
    assert lines[2].startswith("*svc-00* — no incidents in the last 30 days · last drill 1d ago: ok")
    assert lines[-1] == "…and 5 more services with incidents or drills; `/rollback report <service>` shows one."


def test_report_refuses_an_unknown_service_and_no_days(store: Store, clock: Clock) -> None:
    reports = Reports(policy=_policy([MODEL_SVC]), store=store, clock=clock)
    assert not reports.report("nope").ok and "nope" in reports.report("nope").text
    assert not reports.report(MODEL_SVC, days=0).ok
    assert reports.report(None, days=1).text == "*Rollback report — last day*\nNo incidents and no drills in the last day."


def test_summary_names_the_target_and_the_verdict(store: Store, clock: Clock) -> None:
    within = _incident(store, clock, MODEL_SVC, stable=300)
    over = _incident(store, clock, MODEL_SVC, stable=372)
    failed = _incident(store, clock, MODEL_SVC, stable=None, end=State.FAILED)
    not_recovered = _incident(store, clock, MODEL_SVC, stable=None, end=State.VERIFY_FAILED)
    unwarned = _incident(store, clock, MODEL_SVC, stable=290, warned=False)

    assert wording.summary(within, 300).endswith(" · alert to stable 5m · within the 5m target")
    assert wording.summary(over, 300).endswith(" · alert to stable 6m12s · over the 5m target by 1m12s")
    assert wording.summary(failed, 300).endswith(" · alert to stable — · not recovered: over the 5m target")
    assert wording.summary(not_recovered, 90).endswith("not recovered: over the 1m30s target")
    assert wording.summary(unwarned, 300).endswith("alert to stable 4m50s · within the 5m target"), "from the opening"
    assert wording.summary(over, None).endswith(" · alert to stable 6m12s"), "no target, no verdict"
    assert "target" not in wording.summary(over, None)
    assert over.alerted_at == over.warned_at and dataclasses.replace(over, warned_at=None).alerted_at == over.opened_at


# -- over signed requests, through the real app ---------------------------------------------------------------

@pytest.fixture
def env(tmp_path: Path, mlflow_server: MlflowServer, mlflow_client: MlflowClient,
        unique_model: str) -> Iterator[HandlerEnv]:
    with FakeSlackAPI(users_by_group={GROUP: [GROUP_MEMBER]}) as slack:
        bench = HandlerEnv(tmp_path, slack, mlflow_client, seed_models(mlflow_client, unique_model),
                           mlflow_url=mlflow_server.url, extra={RANKER_SVC: "targets: {recover: 10m}"}).start()
        try:
            yield bench
        finally:
            bench.stop()


def _answer(env: HandlerEnv, text: str, contains: str) -> str:
    """The ephemeral answer to `/rollback <text>` sent from another channel, as Slack shows it."""
    before = len(env.slack.calls("chat.postEphemeral"))
    env.command(text, user=APPROVER, channel=OTHER_CHANNEL)
    call = wait_until(lambda: next((c for c in env.slack.calls("chat.postEphemeral")[before:]
                                    if c.params.get("user") == APPROVER and contains in c.params.get("text", "")),
                                   None), f"the answer to /rollback {text}")
    return html.unescape(str(call.params["text"]))


def _recover(env: HandlerEnv, service: str, stable: float) -> Incident:
    """A warned incident of `service`, recovered `stable` seconds after its warning, then closed by the bot."""
    incident, _ = env.open_warning(service)
    assert incident.warned_at is not None
    assert move(env.store, incident.id, State.OPEN, State.EXECUTING, approved_by=APPROVER,
                approved_at=incident.warned_at + 1)
    assert move(env.store, incident.id, State.EXECUTING, State.VERIFYING, executed_at=incident.warned_at + 2)
    assert move(env.store, incident.id, State.VERIFYING, State.RECOVERED, recovered_at=incident.warned_at + stable)
    env.runtime.bot.runs.close(incident.id)
    return env.store.incident(incident.id)


def _counter(env: HandlerEnv, service: str, result: str) -> float:
    text = requests.get(f"{env.url}/metrics", timeout=10).text
    pattern = rf'^rollback_recover_target_total\{{(?=[^}}]*result="{result}")(?=[^}}]*service="{service}")[^}}]*\}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_close_names_the_target_and_counts_within_and_over(env: HandlerEnv) -> None:
    before = {(s, r): _counter(env, s, r) for s in (MODEL_SVC, RANKER_SVC) for r in ("within", "over")}
    within = _recover(env, MODEL_SVC, 200)
    over = _recover(env, RANKER_SVC, 672)

    summaries = {i.id: next(e.text for e in env.store.events(i.id) if e.kind == "summary") for i in (within, over)}
    assert summaries[within.id].endswith("alert to stable 3m20s · within the 5m target")
    assert summaries[over.id].endswith("alert to stable 11m12s · over the 10m target by 1m12s")
    wait_until(lambda: any("within the 5m target" in t for t in env.thread_texts(within)), "the summary in the thread")
    after = {(s, r): _counter(env, s, r) for s in (MODEL_SVC, RANKER_SVC) for r in ("within", "over")}
    assert {k: after[k] - before[k] for k in after} == {(MODEL_SVC, "within"): 1, (MODEL_SVC, "over"): 0,
                                                      (RANKER_SVC, "within"): 0, (RANKER_SVC, "over"): 1}

    env.runtime.bot.runs.close(within.id)  # a second close (a retried work row) adds nothing
    assert _counter(env, MODEL_SVC, "within") - before[(MODEL_SVC, "within")] == 1


def test_report_and_history_over_signed_commands(env: HandlerEnv) -> None:
    _recover(env, MODEL_SVC, 200)
    _drill(env.store, MODEL_SVC)

    text = _answer(env, f"report {MODEL_SVC}", contains="Rollback report")
    assert "*model-svc* — 1 incident (1 recovered)" in text
    assert "time to recover median 3m20s, worst 3m20s · 1 of 1 within the 5m target" in text
    assert re.search(r"last drill \d+s ago: ok, dry run, 1 step planned in 0\.4 s", text), text
    every = _answer(env, "report --days 7", contains="last 7 days")
    assert "*model-svc*" in every and "ranker-svc" not in every

    history = _answer(env, f"history {MODEL_SVC}", contains="Last 1 drill")
    assert "drill " in history and "after v5's promotion — ok, dry run, 1 step planned in 0.4 s" in history
    assert "No drill yet." in _answer(env, f"history {RANKER_SVC}", contains="no incidents")
