"""Tests for bot.slo.policy (the policy file: models, loader, problems with file/line/field) and bot.slo.durations."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from bot.slo.durations import format_duration, parse_duration
from bot.slo.policy import RollbackStep
from bot.slo.policy_file import PolicyError, PolicyProblem, load_policy, load_policy_in_child, parse_policy
from executors.base import Executor
from executors.mlflow_alias import MlflowAliasConfig
from executors.registry import Clients, ExecutorSpec, Registry

VALID = """\
evaluate_every: 30s
services:
  model-svc:
    channel: C0123456789
    approvers: [U0AAAAAAA, S0BBBBBBB]
    confirm: typed
    model: recommender
    slos:
      - name: p95-latency
        query: histogram_quantile(0.95, sum by (le) (rate(latency_seconds_bucket[1m])))
        above: 0.25
        for: 5m
      - name: auc
        query: model_auc{service="model-svc"}
        below: 0.8
    rollback:
      - mlflow_alias: {model: recommender, alias: champion, to: previous_champion}
    verify: {every: 10s, within: 10m, stable_for: 1m30s}
    promote: {from: candidate, to: champion, healthy_for: 1h}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    assert all(isinstance(problem, PolicyProblem) for problem in caught.value.problems)
    return str(caught.value).splitlines()


def variant(old: str, new: str) -> str:
    assert VALID.count(old) == 1, old
    return VALID.replace(old, new)


def test_valid_policy_parses_with_durations_in_seconds() -> None:
    policy = parse_policy(VALID, "policy.yaml")
    assert policy.evaluate_every == 30.0
    svc = policy.services["model-svc"]
    assert svc.name == "model-svc"
    assert svc.channel == "C0123456789"
    assert svc.approvers == ("U0AAAAAAA", "S0BBBBBBB")
    assert svc.confirm == "typed"
    assert svc.model == "recommender"
    latency, auc = svc.slos
    assert (latency.name, latency.above, latency.below, latency.for_) == ("p95-latency", 0.25, None, 300.0)
    assert (auc.below, auc.above, auc.for_) == (0.8, None, 0.0)
    (step,) = svc.rollback
    assert step.executor == "mlflow_alias"
    assert isinstance(step.config, MlflowAliasConfig)
    assert (step.config.model, step.config.alias, step.config.to) == ("recommender", "champion", "previous_champion")
    assert (svc.verify.every, svc.verify.within, svc.verify.stable_for) == (10.0, 600.0, 90.0)
    assert svc.promote is not None
    assert (svc.promote.from_, svc.promote.to, svc.promote.healthy_for) == ("candidate", "champion", 3600.0)
    assert svc.promote.previous == "previous_champion"


def test_slo_breached_and_target_in_both_directions() -> None:
    latency, auc = parse_policy(VALID).services["model-svc"].slos
    assert latency.breached(0.3) and not latency.breached(0.25) and not latency.breached(0.1)
    assert auc.breached(0.7) and not auc.breached(0.8) and not auc.breached(0.9)
    assert not latency.breached(float("nan"))
    assert (latency.target_text(), auc.target_text()) == ("< 0.25", "> 0.8")


def test_defaults_for_optional_fields() -> None:
    text = variant("    verify: {every: 10s, within: 10m, stable_for: 1m30s}\n", "")
    text = text.replace("    promote: {from: candidate, to: champion, healthy_for: 1h}\n", "")
    policy = parse_policy(text.replace("evaluate_every: 30s\n", "").replace("    confirm: typed\n", ""))
    svc = policy.services["model-svc"]
    assert policy.evaluate_every == 15.0
    assert svc.confirm == "dialog"
    assert (svc.verify.every, svc.verify.within, svc.verify.stable_for) == (15.0, 300.0, 60.0)
    assert svc.promote is None


def test_policy_dumps_step_config() -> None:
    dumped = parse_policy(VALID).model_dump(by_alias=True)
    step = dumped["services"]["model-svc"]["rollback"][0]
    assert step == {"executor": "mlflow_alias",
                    "config": {"model": "recommender", "alias": "champion", "to": "previous_champion"}}
    assert dumped["services"]["model-svc"]["slos"][0]["for"] == 300.0


def test_rollback_step_built_in_python() -> None:
    step = RollbackStep(executor="mlflow_alias", config=MlflowAliasConfig(model="m"))
    assert step.config == MlflowAliasConfig(model="m")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param("above: 0.25", "abov: 0.25",
                     "policy.yaml:11: services.model-svc.slos[0].abov: unknown field (did you mean 'above'?)",
                     id="unknown-key"),
        pytest.param("confirm: typed", "confrim: typed",
                     "policy.yaml:6: services.model-svc.confrim: unknown field (did you mean 'confirm'?)",
                     id="unknown-service-key"),
        pytest.param("healthy_for: 1h}", "healthy_for: 1h, frm: x}",
                     "policy.yaml:19: services.model-svc.promote.frm: unknown field (did you mean 'from'?)",
                     id="unknown-key-alias"),
        pytest.param("approvers: [U0AAAAAAA, S0BBBBBBB]", 'approvers: "U1"',
                     "policy.yaml:5: services.model-svc.approvers: input should be a valid tuple (got 'U1')",
                     id="approvers-string"),
        pytest.param("approvers: [U0AAAAAAA, S0BBBBBBB]", "approvers: [U0AAAAAAA, '#team']",
                     "policy.yaml:5: services.model-svc.approvers[1]: expected a Slack user ID",
                     id="approver-id"),
        pytest.param("approvers: [U0AAAAAAA, S0BBBBBBB]", "approvers: []",
                     "policy.yaml:5: services.model-svc.approvers: tuple should have at least 1 item",
                     id="no-approvers"),
        pytest.param("above: 0.25", "above: high",
                     "policy.yaml:11: services.model-svc.slos[0].above: input should be a valid number, "
                     "unable to parse string as a number (got 'high')",
                     id="above-not-a-number"),
        pytest.param("for: 5m", "for: 5 minutes",
                     "policy.yaml:12: services.model-svc.slos[0].for: invalid duration '5 minutes': use a number",
                     id="bad-duration"),
        pytest.param("within: 10m", "within: -5m",
                     "policy.yaml:18: services.model-svc.verify.within: invalid duration '-5m'",
                     id="negative-duration"),
        pytest.param("stable_for: 1m30s", "stable_for: 1h",
                     "policy.yaml:18: services.model-svc.verify: stable_for (1h) must not be longer than within "
                     "(10m)",
                     id="stable-for-longer-than-within"),
        pytest.param("below: 0.8", "below: 0.8\n        above: 0.9",
                     "policy.yaml:13: services.model-svc.slos[1]: set exactly one of 'above:'",
                     id="above-and-below"),
        pytest.param("        below: 0.8\n", "",
                     "policy.yaml:13: services.model-svc.slos[1]: set exactly one of 'above:' (breach while "
                     "value > above) or 'below:' (breach while value < below); got neither",
                     id="neither-above-nor-below"),
        pytest.param("name: auc", "name: p95-latency",
                     "policy.yaml:13: services.model-svc.slos[1].name: another SLO is already named 'p95-latency'",
                     id="duplicate-slo-name"),
        pytest.param("for: 5m", "for: 5m\n        above: 0.3",
                     "policy.yaml:13: services.model-svc.slos[0].above: duplicate key 'above', also on line 11",
                     id="duplicate-key-in-slo"),
        pytest.param("mlflow_alias:", "mlflo_alias:",
                     "policy.yaml:17: services.model-svc.rollback[0].mlflo_alias: unknown executor "
                     "'mlflo_alias'; known executors: argo_rollouts, argocd, feature_flag, git_revert, helm, mlflow_alias",
                     id="unknown-executor"),
        pytest.param("alias: champion,", "aliass: champion,",
                     "policy.yaml:17: services.model-svc.rollback[0].mlflow_alias.aliass: unknown field "
                     "(did you mean 'alias'?)",
                     id="bad-executor-arg"),
        pytest.param("{model: recommender, alias: champion,", "{alias: champion,",
                     "policy.yaml:17: services.model-svc.rollback[0].mlflow_alias.model: required field is missing",
                     id="missing-executor-arg"),
        pytest.param("- mlflow_alias: {model: recommender, alias: champion, to: previous_champion}",
                     "- {mlflow_alias: {model: recommender}, other: {}}",
                     "policy.yaml:17: services.model-svc.rollback[0]: a rollback step is a mapping with exactly "
                     "one key",
                     id="step-with-two-keys"),
        pytest.param("    model: recommender\n", "",
                     "policy.yaml:3: services.model-svc.model: required field is missing",
                     id="missing-model"),
        pytest.param("channel: C0123456789", "channel: '#ml-alerts'",
                     "policy.yaml:4: services.model-svc.channel: expected a Slack channel ID like C0123456789, "
                     "not a #name, got '#ml-alerts'",
                     id="bad-channel"),
        pytest.param("confirm: typed", "confirm: yes please",
                     "policy.yaml:6: services.model-svc.confirm: input should be 'dialog' or 'typed'",
                     id="bad-confirm"),
        pytest.param("  model-svc:", "  Model_Svc:",
                     "policy.yaml:3: services.Model_Svc: expected a service name of lowercase letters",
                     id="bad-service-name"),
        pytest.param("evaluate_every: 30s", "evaluate_every: 0s",
                     "policy.yaml:1: evaluate_every: input should be greater than 0 (got '0s')",
                     id="zero-interval"),
        pytest.param("confirm: typed", "confirm: typed: x",
                     "policy.yaml:6: invalid YAML: mapping values are not allowed here",
                     id="yaml-syntax"),
    ],
)
def test_bad_policy_names_line_and_field(old: str, new: str, expected: str) -> None:
    found = problems(variant(old, new))
    assert any(line.startswith(expected) for line in found), "\n".join(found)


def test_duplicate_service_reports_both_lines() -> None:
    text = VALID + "  model-svc:\n    channel: C0123456789\n"
    found = problems(text)
    assert ("policy.yaml:20: services.model-svc: duplicate service 'model-svc', also on line 3; "
            "YAML keeps only this last one") in found
    # the later service is the one YAML keeps, and its lines are the ones reported
    assert "policy.yaml:20: services.model-svc.model: required field is missing" in found


def test_every_problem_is_reported_in_line_order() -> None:
    text = variant("channel: C0123456789", "channel: general").replace("for: 5m", "for: soon")
    found = problems(text)
    assert [line.split(":")[1] for line in found] == ["4", "12"]


def test_service_name_comes_from_its_key() -> None:
    found = problems(variant("    confirm: typed\n", "    name: other\n"))
    assert found == ["policy.yaml:6: services.model-svc.name: a service's name is its key; "
                     "drop 'name:' or make it 'model-svc'"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "policy.yaml: the file is empty; a policy needs services:"),
        ("# nothing yet\n", "policy.yaml: the file is empty; a policy needs services:"),
        ("- model-svc\n", "policy.yaml:1: the top level must be a mapping with 'services:', got a list"),
        ("evaluate_every: 15s\n", "policy.yaml:1: services: required field is missing"),
        ("services: {}\n", "policy.yaml:1: services: dictionary should have at least 1 item"),
    ],
)
def test_empty_or_shapeless_policy(text: str, expected: str) -> None:
    found = problems(text)
    assert any(line.startswith(expected) for line in found), "\n".join(found)


def test_load_policy_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(variant("above: 0.25", "abov: 0.25"), encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert f"{path}:11: services.model-svc.slos[0].abov: unknown field (did you mean 'above'?)" in str(caught.value)
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path / "missing.yaml")
    path.write_text(VALID, encoding="utf-8")
    assert load_policy(path).services["model-svc"].model == "recommender"


def test_serve_reads_its_policy_in_a_child_with_the_same_answers(tmp_path: Path) -> None:
    """load_policy_in_child (serve: the reading's memory leaves with the child) gives the same policy, and the same
    problems with file, line and field, as load_policy."""
    path = tmp_path / "policy.yaml"
    path.write_text(VALID, encoding="utf-8")
    assert load_policy_in_child(path) == load_policy(path)
    for broken in (variant("above: 0.25", "abov: 0.25"), variant("confirm: typed", "confirm: typed: x")):
        path.write_text(broken, encoding="utf-8")
        with pytest.raises(PolicyError) as here:
            load_policy(path)
        with pytest.raises(PolicyError) as there:
            load_policy_in_child(path)
        assert there.value.problems == here.value.problems and str(there.value) == str(here.value)
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy_in_child(tmp_path / "missing.yaml")


class _ScaleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replicas: int


def _build_scale(config: BaseModel, clients: Clients) -> Executor:
    raise NotImplementedError("validation only")


def test_steps_are_checked_against_the_given_registry() -> None:
    registry = Registry([ExecutorSpec(name="scale", config=_ScaleConfig, build=_build_scale)])
    text = variant("- mlflow_alias: {model: recommender, alias: champion, to: previous_champion}",
                   "- scale: {replicas: 3}")
    step = parse_policy(text, registry=registry).services["model-svc"].rollback[0]
    assert (step.executor, step.config) == ("scale", _ScaleConfig(replicas=3))
    known = "argo_rollouts, argocd, feature_flag, git_revert, helm, mlflow_alias"
    assert any(f"unknown executor 'scale'; known executors: {known}" in line for line in problems(text))
    with pytest.raises(PolicyError, match=r"rollback\[0\]\.scale\.replicas: input should be a valid integer"):
        parse_policy(text.replace("replicas: 3", "replicas: many"), registry=registry)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15s", 15), ("5m", 300), ("1h", 3600), ("1d", 86400), ("500ms", 0.5), ("1h30m", 5400),
     ("1m30s", 90), ("90", 90), ("0.5", 0.5), (" 2m ", 120), (0, 0), (42, 42), (1.5, 1.5)],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "  ", "-5s", "-1", "5 minutes", "5x", "m", "1h-30m", "1.s", "nan", True])
def test_parse_duration_rejects(text: str | bool) -> None:
    with pytest.raises(ValueError, match="ms, s, m, h, d"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.35, "350ms"), (0, "0s"), (42, "42s"), (72, "1m12s"), (300, "5m"), (3900, "1h05m"), (3600, "1h"),
     (90000, "1d01h")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
