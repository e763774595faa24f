"""`rollback-bot rules`: the Prometheus alerting rules written for a policy, checked by the real promtool.

`promtool check rules` must accept the file; `promtool test rules` replays counter series through it and
checks which alerts fire: a fast burn pages, a 1x burn does not, a slow burn pages through the 6h/30m pair, a
burst that has ended stops paging once the short window cools, and a threshold SLO honours its `for:`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.cli import main
from bot.slo import rules
from bot.slo.policy_file import parse_policy

POLICY = """\
services:
  model-svc:
    channel: C0MODELSVC
    approvers: [U0APPROVER]
    model: recommender
    slos:
      - name: availability
        burn_rate:
          errors: 'model_requests_total{service="model-svc",code="500"}'
          total: 'model_requests_total{service="model-svc"}'
          objective: 0.999
      - name: auc
        query: 'min(model_auc{service="model-svc"})'
        below: 0.8
        for: 2m
    rollback:
      - mlflow_alias: {model: recommender}
"""
GOOD = 'model_requests_total{service="model-svc",version="2",code="200"}'
BAD = 'model_requests_total{service="model-svc",version="2",code="500"}'
AUC = 'model_auc{service="model-svc"}'
FAST = {"service": "model-svc", "slo": "availability", "severity": "page", "long_window": "1h", "short_window": "5m"}
SLOW = {**FAST, "long_window": "6h", "short_window": "30m"}
AUC_ALERT = {"service": "model-svc", "slo": "auc", "severity": "page"}


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    """Path of promtool (Debian's prometheus package). Skips locally when missing; fails on CI."""
    binary = shutil.which("promtool")
    if binary is None:
        reason = "promtool not on PATH (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is expected to install it")
        pytest.skip(reason)
    return binary


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    out = tmp_path / "rules.yml"
    assert main(["rules", "--policy", str(policy), "--out", str(out)]) == 0
    return out


def promtool(binary: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


def rule_annotations(rules_path: Path, labels: dict[str, str]) -> dict[str, str]:
    """The annotations of the rule in the generated file whose labels are `labels`."""
    groups = yaml.safe_load(rules_path.read_text())["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r["labels"] == labels]
    return dict(rule["annotations"])


def expect(rules_path: Path, *labels: dict[str, str]) -> list[dict[str, Any]]:
    return [{"exp_labels": dict(one), "exp_annotations": rule_annotations(rules_path, one)} for one in labels]


def scenario(name: str, good: str, bad: str, checks: list[tuple[str, str, list[dict[str, Any]]]],
             auc: str = "0.9x420") -> dict[str, Any]:
    """A promtool test group: one minute per sample; `checks` are (eval_time, alertname, expected alerts)."""
    return {
        "name": name,
        "interval": "1m",
        "input_series": [{"series": GOOD, "values": good}, {"series": BAD, "values": bad},
                         {"series": AUC, "values": auc}],
        "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": alerts}
                            for at, alert, alerts in checks],
    }


def write_tests(tmp_path: Path, rules_path: Path, groups: list[dict[str, Any]]) -> Path:
    path = tmp_path / "rules_test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [rules_path.name], "evaluation_interval": "1m",
                                    "tests": groups}, sort_keys=False))
    return path


def test_promtool_check_rules_accepts_the_file(promtool_bin: str, rules_file: Path) -> None:
    checked = promtool(promtool_bin, "check", "rules", rules_file)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 3 rules found" in checked.stdout


def test_the_rules_fire_as_the_workbook_says(promtool_bin: str, rules_file: Path, tmp_path: Path) -> None:
    burn = rules.BURN_ALERT
    groups = [
        # 2% errors = 20x the 0.1% budget: both pairs page.
        scenario("fast burn", "0+980x180", "0+20x180",
                 [("30m", burn, expect(rules_file, FAST, SLOW)), ("30m", rules.SLO_ALERT, [])]),
        # 0.1% errors = exactly the budget: nothing pages.
        scenario("1x burn", "0+999x420", "0+1x420",
                 [("30m", burn, []), ("2h", burn, []), ("7h", burn, [])]),
        # 1% errors = 10x: above 6x (6h & 30m), below 14.4x (1h & 5m): only the slow pair pages.
        scenario("slow burn", "0+990x420", "0+10x420",
                 [("3h", burn, expect(rules_file, SLOW)), ("7h", burn, expect(rules_file, SLOW))]),
        # 30% errors from minute 31 to 40, then none: both page during the burst; once the 5m window has
        # cooled the fast pair stops although its 1h window still burns; the slow pair stops 30m later.
        scenario("burst that ended", "0+1000x30 30700+700x9 38000+1000x79", "0x30 300+300x9 3000x79",
                 [("35m", burn, expect(rules_file, FAST, SLOW)), ("45m", burn, expect(rules_file, SLOW)),
                  ("80m", burn, [])]),
        # AUC below 0.8 from minute 11: pending for the 2m `for:`, then firing.
        scenario("auc threshold", "0+1000x30", "0x30",
                 [("12m", rules.SLO_ALERT, []), ("14m", rules.SLO_ALERT, expect(rules_file, AUC_ALERT))],
                 auc="0.9x10 0.7x20"),
    ]
    tested = promtool(promtool_bin, "test", "rules", write_tests(tmp_path, rules_file, groups))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_test_catches_a_wrong_expectation(promtool_bin: str, rules_file: Path, tmp_path: Path) -> None:
    """The harness is not vacuous: claiming that a 1x burn pages makes promtool fail."""
    wrong = scenario("1x burn claimed to page", "0+999x180", "0+1x180",
                     [("30m", rules.BURN_ALERT, expect(rules_file, FAST))])
    tested = promtool(promtool_bin, "test", "rules", write_tests(tmp_path, rules_file, [wrong]))
    assert tested.returncode == 1
    assert "FAILED" in tested.stdout + tested.stderr


def test_rule_content_for_burn_rate_and_threshold_slos() -> None:
    (group,) = rules.rule_groups(parse_policy(POLICY))["groups"]
    assert group["name"] == "rollback-bot.model-svc"
    fast, slow, auc = group["rules"]
    assert (fast["alert"], fast["labels"], "for" in fast) == (rules.BURN_ALERT, FAST, False)
    assert fast["expr"] == (
        '((sum(rate(model_requests_total{service="model-svc",code="500"}[1h])) or vector(0)) / '
        'sum(rate(model_requests_total{service="model-svc"}[1h])) > (14.4 * (1 - 0.999))) and '
        '((sum(rate(model_requests_total{service="model-svc",code="500"}[5m])) or vector(0)) / '
        'sum(rate(model_requests_total{service="model-svc"}[5m])) > (14.4 * (1 - 0.999)))')
    assert fast["annotations"]["summary"] == (
        "model-svc: availability burns its error budget faster than 14.4x over 1h and 5m")
    assert slow["labels"] == SLOW and "(6 * (1 - 0.999))" in slow["expr"] and "[30m]" in slow["expr"]
    assert auc == {
        "alert": rules.SLO_ALERT, "expr": '(min(model_auc{service="model-svc"})) < 0.8', "for": "2m",
        "labels": AUC_ALERT,
        "annotations": {"summary": "model-svc: auc is outside its target (> 0.8)",
                        "description": 'Query min(model_auc{service="model-svc"}); target > 0.8, breach held for 2m.'},
    }


def test_rules_command_prints_to_stdout_and_refuses_a_bad_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "policy.yaml"
    good.write_text(POLICY)
    assert main(["rules", "--policy", str(good)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Prometheus alerting rules generated by `rollback-bot rules` from policy.yaml.")
    assert yaml.safe_load(printed) == rules.rule_groups(parse_policy(POLICY))

    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("objective: 0.999", "objective: 99.9"))
    assert main(["rules", "--policy", str(bad), "--out", str(tmp_path / "never.yml")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:11: services.model-svc.slos[0].burn_rate.objective: objective is the share" in err
    assert not (tmp_path / "never.yml").exists()


GROUPED = """\
services:
  svc-a:
    channel: C0MODELSVC
    approvers: [U0APPROVER]
    model: recommender-a
    slos:
      - {name: auc, query: 'min by (service) (model_auc)', by: service, below: 0.8}
    rollback:
      - mlflow_alias: {model: recommender-a}
  svc-b:
    channel: C0MODELSVC
    approvers: [U0APPROVER]
    model: recommender-b
    slos:
      - {name: auc, query: 'min by (service) (model_auc)', by: service, below: 0.8}
    rollback:
      - mlflow_alias: {model: recommender-b}
"""


def test_a_grouped_slo_pages_only_for_its_own_service(promtool_bin: str, tmp_path: Path) -> None:
    """Services sharing one `by: service` query each alert on their own series, never on another's."""
    policy = tmp_path / "grouped.yaml"
    policy.write_text(GROUPED)
    out = tmp_path / "rules.yml"
    assert main(["rules", "--policy", str(policy), "--out", str(out)]) == 0
    checked = promtool(promtool_bin, "check", "rules", out)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    only_b = {"service": "svc-b", "slo": "auc", "severity": "page"}
    group = {
        "name": "svc-b degraded, svc-a healthy",
        "interval": "1m",
        "input_series": [{"series": 'model_auc{service="svc-a"}', "values": "0.9x10"},
                         {"series": 'model_auc{service="svc-b"}', "values": "0.7x10"}],
        "alert_rule_test": [{"eval_time": "5m", "alertname": rules.SLO_ALERT,
                             "exp_alerts": [{"exp_labels": only_b,
                                             "exp_annotations": rule_annotations(out, only_b)}]}],
    }
    tested = promtool(promtool_bin, "test", "rules", write_tests(tmp_path, out, [group]))
    assert tested.returncode == 0, tested.stdout + tested.stderr
