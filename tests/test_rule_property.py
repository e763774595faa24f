"""The one authorization rule, checked by a stateful property test (issue 11): hypothesis drives random
sequences of slash commands, button clicks (Roll back, Dry run, Dismiss, Stop, Retry step, Resume), modal
submissions, Alertmanager alerts, breaches, the passing of time and restarts, from approvers, a user-group
member, a stranger and whoever requested the rollback, on services with and without `two_person`,
`auto_rollback` and `confirm: typed`. After every step it checks:

- no executor ran without what the rule requires, judged by this test's own model of who confirmed what: a
  confirmed approval by an approver (two different approvers with two_person; a requester who is not an
  approver counts for nothing), or the automatic mode armed by detection or Alertmanager and not stopped;
- at most one active incident per service;
- no incident is `executing` unless its plan run is a durable row (to run, running, or to take over);
- every refusal is audited (a non-approver's decision adds a `refused` audit row).

Requests go through the real Bolt app and handlers (signed bodies, `App.dispatch`), the real IncidentService,
store (SQLite) and fake Slack Web API over HTTP; Prometheus is a stub, the scheduler runs its jobs when the
test says so, and the one executor counts its calls. HYPOTHESIS_RULE_EXAMPLES sets the number of sequences.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pydantic import BaseModel, ConfigDict
from slack_bolt import App, BoltRequest

from bot.app import wire
from bot.infra.store import ACTIVE_STATES, Store
from bot.slack import blocks
from bot.slack.slack_out import SlackOut, make_client
from bot.slo.policy_file import parse_policy
from executors.base import ExecutorError, StepContext, StepOutcome, StepPlan
from executors.registry import ExecutorSpec, Registry, Target
from handlers import alertmanager, register_handlers
from sandbox.signing import block_actions_body, signed_headers, slash_command_body, view_submission_body
from sandbox.slack_api import FakeSlackAPI
from tests.stubs import Clock, StubProm

SECRET = "property-signing-secret"
APPROVERS = ("U0APPROVE1", "U0APPROVE2")
GROUP, MEMBER = "S0ONCALL", "U0MEMBER"
STRANGER = "U0STRANGER"
USERS = (*APPROVERS, MEMBER, STRANGER)
IS_APPROVER = {*APPROVERS, MEMBER}
SERVICES = {  # name: (two_person, auto_rollback, confirm)
    "plain-svc": (False, False, "dialog"),
    "two-svc": (True, False, "dialog"),
    "auto-svc": (False, True, "dialog"),
    "two-auto-svc": (True, True, "dialog"),
    "typed-svc": (False, False, "typed"),
}
CHANNELS = {name: f"C0{i}CHAN" for i, name in enumerate(SERVICES)}
GRACE = 30.0


# -- the one executor: counts its calls and checks the rule's model at each -----------------------------
class CountingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class World:
    """What the test knows independently of the bot: who confirmed what, and what ran."""

    approvals: dict[int, set[str]] = field(default_factory=dict)  # incident id -> approvers who confirmed
    armed: dict[int, bool] = field(default_factory=dict)  # incident id -> automatic mode armed by detection/AM
    stopped: set[int] = field(default_factory=set)  # automatic runs disarmed by an approver's Stop
    executed: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    fail_next: int = 0  # the executor fails this many more times (a halted plan to Retry / Stop)
    store: Store | None = None
    two_person: dict[str, bool] = field(default_factory=dict)

    def check_allowed(self, incident_id: int) -> None:
        assert self.store is not None
        incident = self.store.incident(incident_id)
        confirmed = self.approvals.get(incident_id, set())
        need = 2 if self.two_person[incident.service] else 1
        by_people = len(confirmed & IS_APPROVER) >= need
        automatic = (incident.approved_by == "rollback-bot" and self.armed.get(incident_id, False)
                     and incident_id not in self.stopped)
        if not (by_people or automatic):
            self.violations.append(f"incident {incident_id} ({incident.service}) ran with approvals {confirmed}, "
                                   f"approved_by={incident.approved_by}, armed={self.armed.get(incident_id)}")


class Counting:
    name: ClassVar[str] = "counting"
    world: ClassVar[World]

    def __init__(self, config: CountingConfig) -> None:
        self.config = config

    def plan(self, *, context: StepContext) -> StepPlan:
        if context.pin == "666":
            raise ExecutorError("version 666 is tagged rollback_blocked=true")
        target = context.pin or "4"
        return StepPlan(self.name, f"point the model from version 5 to version {target}", (), "true",
                        pin=target, noop=target == "5")

    def execute(self, *, plan: StepPlan, context: StepContext) -> StepOutcome:
        self.world.check_allowed(context.incident_id)
        self.world.executed.append(context.incident_id)
        if self.world.fail_next > 0:
            self.world.fail_next -= 1
            raise ExecutorError("the registry answered 503")
        return StepOutcome(self.name, True, f"now at version {plan.pin}")


REGISTRY = Registry([ExecutorSpec("counting", CountingConfig, lambda config, _: Counting(config),
                                  target=Target(r"[0-9]{1,9}", "a version number"))])


def policy_text() -> str:
    text = "evaluate_every: 5s\nservices:\n"
    for name, (two, auto, confirm) in SERVICES.items():
        text += f"""
  {name}:
    channel: {CHANNELS[name]}
    approvers: [{APPROVERS[0]}, {APPROVERS[1]}, {GROUP}]
    confirm: {confirm}
    model: model-{name}
    two_person: {str(two).lower()}
    auto_rollback: {str(auto).lower()}
    auto_rollback_grace: {int(GRACE)}s
    slos:
      - {{name: auc, query: 'auc_{name}', below: 0.8}}
    rollback:
      - counting: {{}}
    verify: {{every: 5s, within: 1m, stable_for: 10s}}
"""
    return text


# -- a scheduler that runs jobs when the test says so ---------------------------------------------------
class StepScheduler:
    """The local ticker, run by the test: `every()` jobs (the evaluation) run on `tick()`. The durable work
    (plan runs, verification, timers) is in the store; the test runs it with the replica's `run_due`."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.periodic: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {}

    def start(self) -> None:
        """Nothing to start: the test runs the jobs."""

    def shutdown(self) -> None:
        with self.lock:
            self.periodic.clear()

    def every(self, job_id: str, seconds: float, fn: Callable[..., Any], *args: Any) -> None:
        with self.lock:
            self.periodic[job_id] = (fn, args)

    def cancel(self, job_id: str) -> None:
        with self.lock:
            self.periodic.pop(job_id, None)

    def tick(self) -> None:
        """The periodic jobs but the replica's own (heartbeat, work poll): the test runs the work itself."""
        with self.lock:
            jobs = [job for job_id, job in self.periodic.items() if not job_id.startswith(("heartbeat-", "work-"))]
        for fn, args in jobs:
            fn(*args)


# -- the machine ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI(users_by_group={GROUP: [MEMBER]}) as api:
        yield api


COUNTS: dict[str, Any] = {"sequences": 0, "steps": 0, "requests": 0, "executions": 0, "refusals": 0,
                          "states": set()}


class RuleMachine(RuleBasedStateMachine):
    slack: ClassVar[FakeSlackAPI]

    def __init__(self) -> None:
        super().__init__()
        self.slack.reset()
        self.dir = tempfile.TemporaryDirectory(prefix="rule-property-")
        self.clock = Clock()
        self.world = World(two_person={name: two for name, (two, _, _) in SERVICES.items()})
        Counting.world = self.world
        self.prom = StubProm({f"auc_{name}": (0.9,) for name in SERVICES})
        self.policy = parse_policy(policy_text(), registry=REGISTRY)
        self.store = Store(f"sqlite:///{Path(self.dir.name) / 'bot.db'}", clock=self.clock)
        self.world.store = self.store
        self.client = make_client("xoxb-property-token", self.slack.url)
        self._boot()
        COUNTS["sequences"] += 1

    def _boot(self) -> None:
        self.scheduler = StepScheduler(self.clock)
        self.bot = wire(policy=self.policy, store=self.store, prom=self.prom,  # type: ignore[arg-type]
                        slack=SlackOut(self.client), mlflow=None, scheduler=self.scheduler,  # type: ignore[arg-type]
                        registry=REGISTRY, clock=self.clock)
        self.bolt = App(signing_secret=SECRET, client=self.client, process_before_response=True,
                        token_verification_enabled=False)
        register_handlers(self.bolt, self.bot.incidents, self.bot.oncall, self.bot.slack, self.bot.store)
        self.intake = self.bot.intake
        self.bot.start()  # restart pick-up (bot.incidents.recovery) and the evaluation job, which the test runs itself

    def teardown(self) -> None:
        COUNTS["executions"] += len(self.world.executed)
        COUNTS["states"] |= {i.state for i in self.store.recent_incidents(limit=100)}
        self.bot.scheduler.shutdown()
        self.store.engine.dispose()
        self.dir.cleanup()

    # -- helpers --------------------------------------------------------------------------------------
    def _dispatch(self, body: str) -> Any:
        COUNTS["requests"] += 1
        return self.bolt.dispatch(BoltRequest(body=body, headers={k.lower(): [v] for k, v in
                                                                   signed_headers(SECRET, body).items()}))

    def _incident(self, service: str) -> Any:
        return self.store.active_incident(service) or next(iter(self.store.recent_incidents(service, 1)), None)

    def _refused(self, user: str) -> int:
        return sum(1 for a in self.store.audits() if a["actor"] == user and a["result"] == "refused")

    def _click(self, service: str, user: str, action_id: str) -> Any:
        incident = self._incident(service)
        if incident is None or not incident.message_ts:
            return None
        message = self.slack.message(CHANNELS[service], incident.message_ts)
        before = self._refused(user)
        self._dispatch(block_actions_body(user_id=user, channel_id=CHANNELS[service], message_ts=incident.message_ts,
                                          action_id=action_id, value=str(incident.id), message=message))
        decision = action_id in (blocks.APPROVE, blocks.DISMISS, blocks.STOP, blocks.RETRY)
        if decision and user not in IS_APPROVER:
            assert self._refused(user) == before + 1, f"{user}'s refused {action_id} was not audited"
            COUNTS["refusals"] += 1
        return incident

    # -- rules ----------------------------------------------------------------------------------------
    @rule(service=st.sampled_from(list(SERVICES)), user=st.sampled_from(USERS),
          to=st.sampled_from([None, None, "4", "5", "666", "abc"]))
    def slash_rollback(self, service: str, user: str, to: str | None) -> None:
        text = service + (f" --to {to}" if to else "")
        before = self.store.active_incident(service)
        self._dispatch(slash_command_body(text=text, user_id=user, channel_id=CHANNELS[service],
                                          response_url=self.slack.response_url))
        after = self.store.active_incident(service)
        if after is not None and before is None:
            assert after.auto_at is None, "a person's /rollback armed the automatic mode"
            assert to not in ("5", "666", "abc"), f"--to {to} was accepted"
            self.world.armed[after.id] = False
            two = SERVICES[service][0]
            if two and user in IS_APPROVER:  # an approver's own request is the first of two approvals
                self.world.approvals.setdefault(after.id, set()).add(user)

    @rule(service=st.sampled_from(list(SERVICES)), user=st.sampled_from(USERS),
          verb=st.sampled_from(["status", "history", "policy", "freeze", "unfreeze", "--dry-run"]))
    def slash_other(self, service: str, user: str, verb: str) -> None:
        text = f"{service} --dry-run" if verb == "--dry-run" else f"{verb} {service}"
        before = self._refused(user)
        self._dispatch(slash_command_body(text=text, user_id=user, channel_id=CHANNELS[service],
                                          response_url=self.slack.response_url))
        if verb in ("freeze", "unfreeze") and user not in IS_APPROVER:
            assert self._refused(user) == before + 1, f"{user}'s refused {verb} was not audited"

    def _warned(self) -> list[str]:
        return [name for name in SERVICES if (i := self._incident(name)) is not None and i.message_ts]

    @precondition(lambda self: self._warned())
    @rule(data=st.data(), user=st.sampled_from(USERS), then_work=st.sampled_from([True, True, False]))
    def click_roll_back(self, data: st.DataObject, user: str, then_work: bool) -> None:
        service = data.draw(st.sampled_from(self._warned()))
        typed = SERVICES[service][2] == "typed"
        clicked = self._click(service, user, blocks.APPROVE)
        if clicked is not None and not typed and user in IS_APPROVER and clicked.state == "open":
            self.world.approvals.setdefault(clicked.id, set()).add(user)  # confirmed in Slack's dialog
        if then_work:  # the replica picks the run up at once, as it would in `serve`
            self._run_due()

    @rule(service=st.sampled_from([n for n, (_, _, c) in SERVICES.items() if c == "typed"]),
          user=st.sampled_from(USERS), right=st.booleans())
    def submit_typed_confirm(self, service: str, user: str, right: bool) -> None:
        incident = self._incident(service)
        if incident is None:
            return
        typed = service if right else service + "x"
        values = {blocks.CONFIRM_BLOCK: {blocks.CONFIRM_INPUT: {"type": "plain_text_input", "value": typed}}}
        before = self._refused(user)
        self._dispatch(view_submission_body(user_id=user, callback_id=blocks.CONFIRM_VIEW,
                                            private_metadata=str(incident.id), values=values))
        if right and user in IS_APPROVER and incident.state == "open":
            self.world.approvals.setdefault(incident.id, set()).add(user)
        if right and user not in IS_APPROVER:
            assert self._refused(user) == before + 1, "a stranger's typed confirmation was not refused and audited"

    @precondition(lambda self: self._warned())
    @rule(data=st.data(), user=st.sampled_from(USERS),
          action=st.sampled_from([blocks.DRY_RUN, blocks.STOP, blocks.RETRY, blocks.RETRY, blocks.DISMISS]))
    def click_other(self, data: st.DataObject, user: str, action: str) -> None:
        service = data.draw(st.sampled_from(self._warned()))
        incident = self._incident(service)
        self._click(service, user, action)
        if incident is not None and action == blocks.STOP and user in IS_APPROVER and incident.state == "open":
            self.world.stopped.add(incident.id)

    @rule(service=st.sampled_from(list(SERVICES)), value=st.sampled_from([0.5, 0.9]))
    def breach_or_heal(self, service: str, value: float) -> None:
        self.prom.answers[f"auc_{service}"] = (value,)

    def _detected(self, run: Callable[[], Any]) -> None:
        """Run something that may open incidents from the bot's own detection, and note them as armed when
        the service is automatic (the rule's automatic branch)."""
        before = {name: self.store.active_incident(name) for name in SERVICES}
        run()
        for name in SERVICES:
            now = self.store.active_incident(name)
            if now is not None and before[name] is None and now.id not in self.world.armed:
                assert (now.auto_at is not None) == SERVICES[name][1], "detection arms exactly the automatic services"
                self.world.armed[now.id] = SERVICES[name][1]

    @rule()
    def evaluate(self) -> None:
        self._detected(self.bot.detection.evaluate_once)

    @rule(service=st.sampled_from(list(SERVICES)), n=st.integers(0, 3))
    def alertmanager_alert(self, service: str, n: int) -> None:
        before = self.store.active_incident(service)
        hook = alertmanager.parse(
            ('{"version":"4","status":"firing","receiver":"bot","groupKey":"g","alerts":[{"status":"firing",'
             f'"labels":{{"alertname":"AUCLow","service":"{service}"}},"annotations":{{"value":"0.5"}},'
             f'"startsAt":"2027-01-15T08:0{n}:00Z","endsAt":"0001-01-01T00:00:00Z","fingerprint":"f{service}"}}]}}')
            .encode())
        self.intake.handle(hook)
        now = self.store.active_incident(service)
        if now is not None and before is None:
            assert (now.auto_at is not None) == SERVICES[service][1], "an alert arms exactly the automatic services"
            self.world.armed[now.id] = SERVICES[service][1]

    @rule(seconds=st.sampled_from([1.0, 10.0, GRACE + 1]))
    def time_passes(self, seconds: float) -> None:
        self.clock.tick(seconds)

    @rule()
    def background_work(self) -> None:
        self._run_due()
        self._detected(self.scheduler.tick)  # the ticks include the evaluation job
        self._run_due()

    @rule(n=st.integers(1, 2))
    def executor_breaks(self, n: int) -> None:
        self.world.fail_next = n

    @rule()
    def restart(self) -> None:
        """The process dies and a new one starts on the same database: its durable work (plan runs, verification,
        timers) is taken over by the new process, which halts a plan that was in flight as interrupted."""
        self.scheduler.shutdown()
        self._boot()

    def _run_due(self) -> None:
        """Run the durable work that is due, and what it makes due (an approval's plan run, its first tick)."""
        for _ in range(50):  # bounded: work makes more work due
            if not self.bot.replica.run_due(wait=True):
                return

    # -- invariants -----------------------------------------------------------------------------------
    @invariant()
    def no_executor_without_the_rule(self) -> None:
        assert not self.world.violations, self.world.violations
        COUNTS["steps"] += 1

    @invariant()
    def at_most_one_active_incident_per_service(self) -> None:
        active = self.store.incidents_in(ACTIVE_STATES)
        services = [i.service for i in active]
        assert len(services) == len(set(services)), services

    @invariant()
    def nothing_executing_without_a_run(self) -> None:
        for incident in self.store.incidents_in(("executing",)):
            plans = [w for w in self.store.pending_work(incident.id) if w.kind == "plan"]
            assert plans, f"incident {incident.id} is executing with no plan run to take"


EXAMPLES = int(os.environ.get("HYPOTHESIS_RULE_EXAMPLES", "100"))


def test_the_one_authorization_rule_holds_on_every_path(slack: FakeSlackAPI) -> None:
    RuleMachine.slack = slack
    machine_test = RuleMachine.TestCase
    machine_test.settings = settings(max_examples=EXAMPLES, stateful_step_count=30, deadline=None,
                                     suppress_health_check=list(HealthCheck))
    machine_test("runTest").runTest()
    print(f"\nrule property: {COUNTS['sequences']} sequences, {COUNTS['steps']} steps, {COUNTS['requests']} signed "
          f"Slack requests, {COUNTS['executions']} executor calls, {COUNTS['refusals']} refusals checked; incident "
          f"states reached: {', '.join(sorted(COUNTS['states']))}")
    assert COUNTS["sequences"] >= EXAMPLES
