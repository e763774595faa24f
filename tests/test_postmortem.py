"""The postmortem draft (bot.incidents.postmortem, bot.slack.postmortem): an incident driven through its states
and events in a real store, a stub Prometheus that answers range queries, the fake Slack Web API over HTTP.

Level 1: the draft's sections (every event with its time, the SLO table, the steps, the times, the checklist, the
empty sections), what outside text can and cannot do to the file, the upload into the thread, and
`/rollback postmortem <id>` parsed and carried out. Then a whole incident through the real wiring (`bot.app.wire`,
a real MLflow server): the close uploads the draft into the thread after the summary, and the command drafts it again.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bot.app import wire
from bot.incidents import postmortem
from bot.incidents.oncall import OnCall
from bot.incidents.postmortem import Postmortems
from bot.incidents.states import State, move
from bot.infra.prom import RangeResult, Series
from bot.infra.scheduler import Scheduler
from bot.infra.store import Incident, Store
from bot.slack import postmortem as draft
from bot.slack.slack_out import SlackOut, make_client
from bot.slo.policy import Policy
from bot.slo.policy_file import parse_policy
from executors.base import Change, StepOutcome
from handlers import commands
from sandbox.model_service import seed_registry
from sandbox.slack_api import FakeSlackAPI
from tests.stubs import AUC, LATENCY, Clock, StubProm

CHANNEL = "C0MODELSVC"
APPROVER, FIRST = "U0APPROVER", "U0FIRST"
T0 = 1_800_000_000.0  # the breach starts here
POLICY = f"""
services:
  model-svc:
    channel: {CHANNEL}
    approvers: [{APPROVER}]
    model: recommender
    slos:
      - {{name: p95-latency, kind: latency, query: {LATENCY}, above: 0.25}}
      - {{name: auc, kind: quality, query: {AUC}, below: 0.8}}
      - name: errors
        burn_rate: {{errors: 'errors_total', total: 'requests_total', objective: 0.99}}
      - {{name: grouped-auc, query: 'min by (service) (auc)', below: 0.8, by: service}}
      - {{name: broken, query: 'broken_query', above: 1}}
    rollback:
      - mlflow_alias: {{model: recommender}}
    targets: {{recover: 5m}}
"""


class RangeProm(StubProm):
    """A StubProm that also keeps history: `ranges` maps a query to its series, or to an error text."""

    def __init__(self, answers: dict[str, tuple[float, ...] | str] | None = None,
                 ranges: dict[str, tuple[Series, ...] | str] | None = None) -> None:
        super().__init__(answers)
        self.ranges = dict(ranges or {})
        self.asked: list[tuple[str, float, float, float]] = []

    def query_range(self, query: str, start: float, end: float, step: float) -> RangeResult:
        self.asked.append((query, start, end, step))
        answer = self.ranges.get(query, ())
        if isinstance(answer, str):
            return RangeResult(query, error=answer)
        return RangeResult(query, answer)


def _series(*points: tuple[float, float], **labels: str) -> Series:
    return Series(dict(labels), tuple(points))


RANGES: dict[str, tuple[Series, ...] | str] = {
    LATENCY: (_series((T0 - 60, 0.1), (T0 + 10, 0.9), (T0 + 40, 0.3), (T0 + 90, 0.12)),),
    AUC: (_series((T0 - 60, 0.91), (T0 + 10, 0.62), (T0 + 90, 0.9)),),
    "min by (service) (auc)": (_series((T0 - 60, 0.95), (T0 + 10, 0.7), (T0 + 90, 0.93), service="model-svc"),
                               _series((T0 - 60, 0.1), (T0 + 10, 0.1), (T0 + 90, 0.1), service="other-svc")),
    "broken_query": "bad_data: parse error at char 7",
}


@pytest.fixture
def policy() -> Policy:
    return parse_policy(POLICY)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'bot.db'}", clock=clock)
    yield s
    s.engine.dispose()


@pytest.fixture
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI() as fake:
        yield fake


@pytest.fixture
def out(slack: FakeSlackAPI) -> SlackOut:
    return SlackOut(make_client("xoxb-postmortem-test", slack.url))


EVENTS = [  # (seconds after the breach, kind, text as the timeline stores it: Slack mrkdwn)
    (4, "warned", f"Warning posted to <#{CHANNEL}>"),
    (9, "approved", f"First approval by <@{FIRST}>; waiting for a second approver"),
    (12, "approved", f"Approved by <@{APPROVER}> — rolling back"),
    (13, "step_done", "Step 1/1 `mlflow_alias` done in 1s:\n• @champion v2 → v1\n# not a heading"),
    (30, "note", "Alert text &lt;!-- hides the rest --&gt; and a | pipe &amp; <https://runbook.example/x|the runbook>"),
    (95, "recovered", "Recovered: all SLOs within target for 1m"),
    (96, "checklist", "*Post-rollback checklist*\n:white_check_mark: SLOs within target\n"
                      ":memo: Incident notes: reply in this thread"),
]


def _incident(store: Store, clock: Clock, out: SlackOut | None = None, *, end: State | None = State.RECOVERED,
              events: int = len(EVENTS)) -> Incident:
    """model-svc breached at T0 (latency 0.9 > 0.25), warned 4 s later, approved by two people, one step run,
    recovered at T0 + 95; the timeline's events recorded at their times. `end` None leaves it verifying."""
    incident = store.open_incident(service="model-svc", trigger="p95-latency",
                                   detail={"value": 0.9, "target": "< 0.25", "status": "breach"}, baseline={},
                                   breach_started_at=T0, channel=CHANNEL, first_approver=FIRST)
    assert incident is not None
    ts = out.post(CHANNEL, "warning") if out else f"{T0 + 4:.6f}"
    assert store.mark_warned(incident.id, ts, warned_at=T0 + 4)
    for after, kind, text in EVENTS[:events]:
        store.add_event(incident.id, kind, text, at=T0 + after)
    assert move(store, incident.id, State.OPEN, State.EXECUTING, approved_by=APPROVER, approved_at=T0 + 12)
    clock.now = T0 + 12
    step = store.start_step(incident.id, 0, "mlflow_alias", {"summary": "move @champion to v1"})
    clock.now = T0 + 13
    outcome = StepOutcome("mlflow_alias", True, "@champion v2 → v1",
                          (Change("registered model recommender", "alias champion", "2", "1"),))
    store.finish_step(step, True, dataclasses.asdict(outcome))
    assert move(store, incident.id, State.EXECUTING, State.VERIFYING, executed_at=T0 + 13)
    if end is None:
        return store.incident(incident.id)
    done = move(store, incident.id, State.VERIFYING, end, recovered_at=T0 + 95)
    assert done is not None
    return done


def _draft(store: Store, incident: Incident, policy: Policy, prom: RangeProm | None = None) -> str:
    return postmortem.markdown(store, prom or RangeProm(ranges=RANGES), store.incident(incident.id),
                               policy.services["model-svc"], now=T0 + 200)


def _section(text: str, name: str) -> str:
    return text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]


# -- the draft -----------------------------------------------------------------------------------------------
def test_the_draft_has_every_event_with_its_utc_time(store: Store, clock: Clock, policy: Policy) -> None:
    incident = _incident(store, clock)
    text = _draft(store, incident, policy)

    assert text.startswith(f"# Postmortem draft: model-svc incident #{incident.id}\n")
    timeline = _section(text, "Timeline")
    for event in store.events(incident.id):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(event.at))
        first_line = draft.from_mrkdwn(event.text).splitlines()[0]
        assert f"- `{stamp}` {first_line}" in timeline, event.text
    assert f"- `2027-01-15 08:00:04 UTC` Warning posted to #{CHANNEL}" in timeline
    assert f"Approved by @{APPROVER} — rolling back" in timeline  # <@U…> reads @U…
    assert "  \n  • @champion v2 → v1  \n  \\# not a heading" in timeline  # later lines stay in the item


def test_the_summary_impact_window_and_times(store: Store, clock: Clock, policy: Policy) -> None:
    incident = _incident(store, clock)
    text = _draft(store, incident, policy)

    summary = _section(text, "Summary")
    assert "- **Service:** model-svc (model `recommender`)" in summary
    assert "- **Trigger:** *p95-latency* is 0.9, target < 0.25" in summary
    assert f"- **Approved by:** @{APPROVER} (first approval: @{FIRST})" in summary
    assert "Recovered in 1m23s" in summary
    impact = _section(text, "Impact window")
    assert "- **Breach started:** 2027-01-15 08:00:00 UTC" in impact
    assert "- **Recovered:** 2027-01-15 08:01:35 UTC" in impact and "- **Duration:** 1m35s" in impact
    times = _section(text, "Times")
    # The same numbers as the summary the close posts (bot.slack.wording.summary).
    for line in ("- time to detect 4s", "- to approve 8s", "- to execute 1s", "- to recover 1m22s",
                 "- alert to stable 1m31s", "- within the 5m target", "- recover target: 5m"):
        assert line in times, line


def test_the_slo_table_before_worst_after_from_one_range_query_each(store: Store, clock: Clock,
                                                                   policy: Policy) -> None:
    incident = _incident(store, clock)
    prom = RangeProm(ranges=RANGES)
    text = _draft(store, incident, policy, prom)

    rows = _section(text, "SLOs")
    assert "| p95-latency | < 0.25 | 0.1 | 0.9 | 0.12 |  |" in rows  # higher is worse: the max
    assert "| auc | > 0.8 | 0.91 | 0.62 | 0.9 |  |" in rows  # higher is better: the min
    assert "| grouped-auc | > 0.8 | 0.95 | 0.7 | 0.93 |  |" in rows  # this service's series only
    assert "| errors | burn < 14.4x (1h & 5m), burn < 6x (6h & 30m) | — | — | — | burn rate: see the chart |" in rows
    assert "| broken | < 1 | — | — | — | query failed: bad_data: parse error at char 7 |" in rows
    # one range query per SLO with a query, over [breach − 10 min, recovery + 2 min]
    assert sorted(q for q, *_ in prom.asked) == sorted([LATENCY, AUC, "min by (service) (auc)", "broken_query"])
    assert {(start, end) for _, start, end, _ in prom.asked} == {(T0 - 600, T0 + 95 + 120)}
    assert all(step == int(step) for *_, step in prom.asked)


def test_the_steps_the_checklist_and_the_empty_sections(store: Store, clock: Clock, policy: Policy) -> None:
    incident = _incident(store, clock)
    text = _draft(store, incident, policy)

    steps = _section(text, "Steps")
    assert "### 1. `mlflow_alias` — done" in steps
    assert "- started 2027-01-15 08:00:12 UTC, finished 2027-01-15 08:00:13 UTC (1s)" in steps
    assert "- summary: @champion v2 → v1" in steps
    assert "- change: registered model recommender alias champion: 2 → 1" in steps
    checklist = _section(text, "Post-rollback checklist")
    assert checklist.strip().splitlines() == ["- :white_check_mark: SLOs within target",
                                              "- :memo: Incident notes: reply in this thread"]
    assert text.endswith("## Root cause\n\n\n## Follow-ups\n")


def test_outside_text_cannot_break_the_file(store: Store, clock: Clock, policy: Policy) -> None:
    incident = _incident(store, clock)
    text = _draft(store, incident, policy)

    note = next(line for line in text.splitlines() if "Alert text" in line)
    assert "&lt;!-- hides the rest --> and a | pipe & [the runbook](<https://runbook.example/x>)" in note
    assert "<!--" not in text
    assert draft.cell("a | b\nc") == "a \\| b c"
    assert draft.from_mrkdwn("<!subteam^S0ONCALL> <!here> <#C1|general> a &lt; b &amp;&amp; c &gt; d") == \
        "@S0ONCALL @here #general a < b && c > d"
    assert draft.from_mrkdwn("&lt;script&gt;x&lt;/script&gt;") == "&lt;script>x&lt;/script>"
    assert draft.plain("a <img src=x> b < c") == "a &lt;img src=x> b < c"


def test_a_secret_in_a_stored_text_leaves_as_stars(store: Store, clock: Clock, policy: Policy) -> None:
    incident = _incident(store, clock)
    prom = RangeProm(ranges={**RANGES, "broken_query": "connection to https://bot:hunter2@prom.example failed"})
    text = _draft(store, incident, policy, prom)
    assert "hunter2" not in text and "https://***@prom.example" in text


# -- uploading -----------------------------------------------------------------------------------------------
def test_post_draft_uploads_the_file_into_the_thread(store: Store, clock: Clock, policy: Policy, out: SlackOut,
                                                     slack: FakeSlackAPI) -> None:
    incident = _incident(store, clock, out)

    assert postmortem.post_draft(store, RangeProm(ranges=RANGES), out, store.incident(incident.id),
                                 policy.services["model-svc"], now=T0 + 200) is None

    [upload] = slack.uploads()
    assert (upload["channel_id"], upload["thread_ts"]) == (CHANNEL, incident.message_ts)
    assert upload["name"] == f"postmortem-incident-{incident.id}.md"
    assert upload["title"] == f"Postmortem draft: model-svc incident #{incident.id}"
    assert upload["content"].decode() == _draft(store, incident, policy)
    [done] = slack.calls("files.completeUploadExternal")
    assert done.params["thread_ts"] == incident.message_ts


def test_no_thread_or_slack_refusing_is_a_reason_not_an_exception(store: Store, clock: Clock, policy: Policy,
                                                                  out: SlackOut, slack: FakeSlackAPI) -> None:
    incident = _incident(store, clock, out)
    svc = policy.services["model-svc"]
    slack.fail_next("files.completeUploadExternal", error="not_in_channel")
    assert postmortem.post_draft(store, RangeProm(), out, incident, svc) == \
        "Postmortem draft not posted: files_upload_v2: not_in_channel"
    threadless = dataclasses.replace(incident, message_ts=None)
    assert postmortem.post_draft(store, RangeProm(), out, threadless, svc) == (
        f"No postmortem draft: incident #{incident.id}'s warning was never posted, so there is no thread to put it in")
    assert slack.uploads() == []


# -- /rollback postmortem <incident-id> ----------------------------------------------------------------------
def test_the_command_is_parsed_with_a_clear_error_for_bad_input() -> None:
    assert commands.parse("postmortem 12") == commands.Command("postmortem", incident=12)
    assert commands.parse("postmortem #7").incident == 7
    for bad, says in (("postmortem", "takes one incident number"), ("postmortem 1 2", "got `1 2`"),
                      ("postmortem model-svc", "`model-svc` is not an incident number"),
                      ("postmortem 1234567890", "is not an incident number")):
        with pytest.raises(commands.BadCommand, match=re.escape(says)):
            commands.parse(bad)
    assert "`/rollback postmortem <incident-id>`" in commands.HELP


def _postmortems(store: Store, policy: Policy, out: SlackOut, clock: Clock) -> Postmortems:
    return Postmortems(policy=policy, store=store, prom=RangeProm(ranges=RANGES), slack=out, clock=clock)


def test_the_command_drafts_it_again_anyone_may_ask(store: Store, clock: Clock, policy: Policy, out: SlackOut,
                                                    slack: FakeSlackAPI) -> None:
    incident = _incident(store, clock, out)
    clock.now = T0 + 3600

    reply = _postmortems(store, policy, out, clock).regenerate(incident.id, "U0STRANGER")

    assert reply.ok
    assert reply.text == (f"Postmortem draft `postmortem-incident-{incident.id}.md` uploaded into incident "
                          f"#{incident.id}'s thread in <#{CHANNEL}>.")
    [upload] = slack.uploads()
    assert upload["thread_ts"] == incident.message_ts
    assert "Draft of an open incident" not in upload["content"].decode()
    assert [a["actor"] for a in store.audits(incident.id) if a["action"] == "postmortem"] == ["U0STRANGER"]


def test_an_open_incident_is_drafted_and_said_to_be_open(store: Store, clock: Clock, policy: Policy, out: SlackOut,
                                                         slack: FakeSlackAPI) -> None:
    incident = _incident(store, clock, out, end=None, events=4)
    clock.now = T0 + 60

    reply = _postmortems(store, policy, out, clock).regenerate(incident.id, APPROVER)

    assert reply.ok and "is still open (verifying): this is a draft of an open incident" in reply.text
    content = slack.uploads()[0]["content"].decode()
    assert "**Draft of an open incident** (state `verifying`)" in content
    assert "- **Still open at:** 2027-01-15 08:01:00 UTC" in content and "- **Duration:** 1m" in content
    assert "Not written yet: the checklist is written at the close." in content


def test_an_unknown_incident_is_a_clear_error_that_names_nothing_else(store: Store, clock: Clock, policy: Policy,
                                                                     out: SlackOut, slack: FakeSlackAPI) -> None:
    _incident(store, clock, out)
    reply = _postmortems(store, policy, out, clock).regenerate(999, APPROVER)
    assert not reply.ok
    assert reply.text == ("There is no incident #999. `/rollback history <service>` lists a service's incidents with "
                          "their numbers.")
    assert slack.uploads() == []


# -- the close, through the real wiring -------------------------------------------------------------------------
def test_the_close_uploads_the_draft_after_the_summary_and_the_command_drafts_it_again(
        tmp_path: Path, slack: FakeSlackAPI, out: SlackOut, mlflow_client: MlflowClient, unique_model: str) -> None:
    v1, v2 = seed_registry(mlflow_client, unique_model, versions=2)
    mlflow_client.set_registered_model_alias(unique_model, "previous_champion", v1)
    mlflow_client.set_registered_model_alias(unique_model, "champion", v2)
    policy = parse_policy(f"""
evaluate_every: 1s
services:
  model-svc:
    channel: {CHANNEL}
    approvers: [{APPROVER}]
    model: {unique_model}
    slos:
      - {{name: p95-latency, query: {LATENCY}, above: 0.25, for: 0s}}
    rollback:
      - mlflow_alias: {{model: {unique_model}}}
    verify: {{every: 1s, within: 20s, stable_for: 2s}}
    targets: {{recover: 5m}}
""")
    clock = Clock(T0)
    prom = RangeProm({LATENCY: (0.5,)}, {LATENCY: (_series((T0 - 30, 0.1), (T0 + 1, 0.5), (T0 + 30, 0.11)),)})
    store = Store(f"sqlite:///{tmp_path / 'db'}", clock=clock)
    bot = wire(policy=policy, store=store, prom=prom, slack=out, mlflow=mlflow_client,  # type: ignore[arg-type]
               scheduler=Scheduler(), clock=clock)
    try:
        bot.detection.evaluate_once()
        incident = store.active_incident("model-svc")
        assert incident is not None
        assert bot.incidents.approve(incident.id, APPROVER).ok
        bot.runs.execute(incident.id)
        prom.answers[LATENCY] = (0.1,)
        for _ in range(4):
            clock.tick(1)
            bot.runs.verify_tick(incident.id)
        done = store.incident(incident.id)
        assert done.state == "recovered" and done.message_ts

        [upload] = [u for u in slack.uploads() if u["name"].endswith(".md")]
        assert (upload["channel_id"], upload["thread_ts"]) == (CHANNEL, done.message_ts)
        content = upload["content"].decode()
        for event in store.events(done.id):
            assert draft.from_mrkdwn(event.text).splitlines()[0] in content, event.kind
        assert "| p95-latency | < 0.25 | 0.1 | 0.5 | 0.11 |" in content
        assert "### 1. `mlflow_alias` — done" in content
        [summary_event] = [e for e in store.events(done.id) if e.kind == "summary"]
        for part in summary_event.text.split(" · ")[1:]:  # the times are the posted summary's, to the letter
            assert f"\n- {part}\n" in content, part
        thread = slack.thread(CHANNEL, done.message_ts)
        summary = next(i for i, m in enumerate(thread) if m.get("text", "").startswith("`") and "Summary" in m["text"])
        shared = next(i for i, m in enumerate(thread) if any(f["id"] == upload["id"] for f in m.get("files", [])))
        assert shared > summary, "the draft comes after the summary"

        oncall = OnCall(policy=policy, store=store, models=bot.oncall.models, check_approver=lambda *_: None,
                        say=lambda *_: None, postmortems=Postmortems(policy=policy, store=store, prom=prom,
                                                                      slack=out, clock=clock))
        reply = commands.run(bot.incidents, oncall, commands.parse(f"postmortem {done.id}"), "U0STRANGER", "C0OTHER")
        assert reply.ok and f"<#{CHANNEL}>" in reply.text
        again = [u for u in slack.uploads() if u["name"] == f"postmortem-incident-{done.id}.md"]
        assert len(again) == 2 and again[1]["thread_ts"] == done.message_ts
    finally:
        store.engine.dispose()
