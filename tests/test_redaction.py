"""Finding 8: credentials in configured URLs never leave the process. bot/infra/redact.py's URL rule (userinfo and
token-like query parameters become ***) and its configured secrets, unit by unit; then end to end: a runtime
whose MLFLOW_TRACKING_URI carries a password, so MLflow's own error text carries it too, opens an incident with
a signed `/rollback model-svc` and shows a dry run, and the password is in no Slack call, no audit row, not in
/metrics and not in the log written through the filter `serve` installs.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from bot.app import RedactSecrets, build
from bot.infra import redact
from bot.infra.config import Settings
from bot.infra.redact import Redactor, configured_secrets, redact_urls, url_secrets
from bot.slack.slack_out import SlackOut, make_client
from bot.slo.policy_file import parse_policy
from sandbox.servers import free_port
from sandbox.slack_api import FakeSlackAPI
from tests.handler_env import APPROVER, MODEL_CHANNEL, HandlerEnv, policy_yaml, wait_until

PASSWORD = "s3cretpw"


# -- the URL rule --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("http://user:s3cretpw@127.0.0.1:5000/api", "http://***@127.0.0.1:5000/api"),
    ("git clone https://ghp_abcdef123456@github.com/org/deploy.git", "git clone https://***@github.com/org/deploy.git"),
    ("postgresql+psycopg://rb:p@ss@db:5432/rb", "postgresql+psycopg://***@db:5432/rb"),  # a raw @ in the password
    ("http://h/q?token=abc&name=m1&Api_Key=k1&X-Amz-Signature=f00#top",
     "http://h/q?token=***&name=m1&Api_Key=***&X-Amz-Signature=***#top"),
    ("http://h/?access_token=a;password=b&passwd=c&pwd=d&secret=e&key=f&apikey=g&sig=h&auth=i&client_secret=j",
     "http://h/?access_token=***;password=***&passwd=***&pwd=***&secret=***&key=***&apikey=***&sig=***&auth=***"
     "&client_secret=***"),
    ("<https://h/x?sig=abc|the chart> and (https://u:p@h/y).", "<https://h/x?sig=***|the chart> and (https://***@h/y)."),
])
def test_finding8_urls_lose_their_userinfo_and_token_parameters(text: str, expected: str) -> None:
    assert redact_urls(text) == expected


def test_finding8_several_urls_in_one_text_are_all_redacted() -> None:
    text = ("API request to http://user:s3cretpw@127.0.0.1:5000/api/2.0/mlflow failed; Prometheus at "
            "https://prom:pw2@prom.internal/api/v1/query?query=up&token=tok3 and git://tok4@git.internal/deploy.git")
    assert redact_urls(text) == (
        "API request to http://***@127.0.0.1:5000/api/2.0/mlflow failed; Prometheus at "
        "https://***@prom.internal/api/v1/query?query=up&token=*** and git://***@git.internal/deploy.git")


@pytest.mark.parametrize("text", [
    "http://***@127.0.0.1:5000/api?token=***",  # already redacted
    "no URL here: alice@example.com wrote token=abc and key: value",  # query-like text outside a URL
    "http://127.0.0.1:9090/api/v1/query?query=up&step=15",  # a URL without credentials
    "mailto:oncall@example.com",
    "",
])
def test_finding8_text_without_credentials_is_unchanged(text: str) -> None:
    assert redact_urls(text) == text
    assert redact_urls(redact_urls(text)) == text


def test_finding8_configured_secrets_are_the_urls_passwords_and_settings_secrets() -> None:
    assert url_secrets("http://user:s3cret%21pw@h:1/x?access_token=abcdefgh&q=1") == ["abcdefgh", "s3cret!pw",
                                                                                      "s3cret%21pw"]
    assert url_secrets("https://ghp_abcdef123456@github.com/o/r.git") == ["ghp_abcdef123456"]
    assert url_secrets("http://u:pw@h/") == []  # too short to replace as bare text; the URL rule still applies
    assert url_secrets("sqlite:///tmp/bot.db") == url_secrets(None) == []
    settings = Settings(slack_bot_token="xoxb-redaction-token", slack_signing_secret="redaction-signing",
                        prometheus_url="http://prom:promsecret1@127.0.0.1:9090",
                        mlflow_tracking_uri=f"http://user:{PASSWORD}@127.0.0.1:5000",
                        database_url="postgresql+psycopg://rb:dbsecret42@127.0.0.1:5432/rb")
    policy = parse_policy("""
services:
  model-svc:
    channel: C0MODELSVC
    approvers: [U0APPROVER]
    model: m1
    slos: [{name: auc, query: 'min(model_auc)', below: 0.8}]
    rollback:
      - git_revert: {repo: 'https://bot:gitsecret7@git.internal/deploy.git', commit: last}
      - mlflow_alias: {model: m1}
""")
    assert set(configured_secrets(settings, policy)) == {"xoxb-redaction-token", "redaction-signing", "promsecret1",
                                                          PASSWORD, "dbsecret42", "gitsecret7"}
    scrub = Redactor(configured_secrets(settings, policy))
    assert scrub(f"auth failed for rb with dbsecret42; {PASSWORD} rejected at http://a:b@h/") == (
        "auth failed for rb with ***; *** rejected at http://***@h/")


def test_finding8_slack_out_redacts_every_string_it_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redact, "REDACTOR", Redactor(["bare-secret-value"]))
    with FakeSlackAPI() as slack:
        out = SlackOut(make_client("xoxb-redaction-test", slack.url))
        url = f"http://user:{PASSWORD}@127.0.0.1:5000/api"
        ts = out.post(MODEL_CHANNEL, f"failed: {url}", blocks=[
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*error* {url} bare-secret-value"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": "see https://h/x?token=abc123"}]}])
        out.update(MODEL_CHANNEL, ts, f"edited {url}")
        out.ephemeral(MODEL_CHANNEL, APPROVER, f"refused: {url}")
        sent = json.dumps([c.params for c in slack.calls()])
    assert PASSWORD not in sent and "bare-secret-value" not in sent and "abc123" not in sent
    assert sent.count("http://***@127.0.0.1:5000/api") == 4 and "token=***" in sent


def test_finding8_the_log_filter_redacts_urls_and_configured_passwords() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactSecrets(["xoxb-log-token"]))
    log = logging.getLogger("tests.test_redaction.log")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise ConnectionError(f"API request to http://user:{PASSWORD}@127.0.0.1:1/api failed")
        except ConnectionError:
            log.exception("mlflow at %s is down (token %s)", f"http://user:{PASSWORD}@127.0.0.1:1", "xoxb-log-token")
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert "mlflow at http://***@127.0.0.1:1 is down (token ***)" in text
    assert "ConnectionError: API request to http://***@127.0.0.1:1/api failed" in text
    assert PASSWORD not in text and "xoxb-log-token" not in text


# -- end to end --------------------------------------------------------------------------------------------
@pytest.fixture
def captured_log() -> Iterator[logging.StreamHandler[io.StringIO]]:
    """A handler on the root logger at DEBUG; the test adds the filter `rollback-bot serve` installs (bot.cli)."""
    handler = logging.StreamHandler(io.StringIO())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def _tables(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: "\n".join(repr(row) for row in conn.execute(f'SELECT * FROM "{name}"')) for name in names}


def test_finding8_a_password_in_mlflow_tracking_uri_reaches_no_slack_call_audit_row_metrics_or_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, captured_log: logging.StreamHandler[io.StringIO]) -> None:
    # MLflow answers nothing at once (a closed port, no retries), so its error text, with the URL, is the plan.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://user:{PASSWORD}@127.0.0.1:{free_port()}"
    mlflow = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with FakeSlackAPI() as slack:
        bench = HandlerEnv(tmp_path, slack, mlflow, {"model-svc": "recommender", "ranker-svc": "ranker"},
                           mlflow_url=uri)
        captured_log.addFilter(RedactSecrets(bench.settings.secrets()))  # as bot.cli does
        bench.start()
        try:
            incident, warning = bench.open_warning()
            bench.click(warning, "rollback_dry_run", user=APPROVER)
            dry_run = wait_until(lambda: next((t for t in bench.thread_texts(incident) if "Dry run" in t), None),
                                 "the dry run in the thread", timeout=20)
            wait_until(lambda: bench.audits(incident.id, "dry_run"), "the dry run's audit row")
            logging.getLogger("tests.test_redaction").warning("dry run posted: %s", dry_run)
            metrics = requests.get(f"{bench.url}/metrics", timeout=5).text
            tables = _tables(tmp_path / "bot.db")
        finally:
            bench.stop()
        calls = json.dumps([{"method": c.method, "params": c.params, "headers": c.headers} for c in slack.calls()],
                           default=str)
    # MLflow's error really carried the URL: the thread and the audit row show it, redacted.
    assert f"API request to http://***@127.0.0.1:{uri.rsplit(':', 1)[1]}/api/2.0/mlflow" in dry_run
    assert "http://***@127.0.0.1" in calls
    assert "http://***@127.0.0.1" in tables["audit"]
    stored = {f"the {name} rows": text for name, text in tables.items()}
    leaks = [where for where, text in {"Slack calls": calls, **stored, "/metrics": metrics,
                                       "the log": captured_log.stream.getvalue()}.items() if PASSWORD in text]
    assert leaks == []
    assert "http://***@127.0.0.1" in tables["events"] and "http://***@127.0.0.1" in tables["incidents"]
    assert "dry run posted: " in captured_log.stream.getvalue()


def test_finding8_build_configures_the_process_wide_secrets(tmp_path: Path) -> None:
    """build() adds the URLs' passwords to bot.infra.redact, so even a bare password (an error that quotes it without
    its URL) is cut from Slack messages, logs and audit rows."""
    settings = Settings(slack_bot_token="xoxb-build-token", slack_signing_secret="build-signing-secret",
                        prometheus_url="https://prom:promsecret2@127.0.0.1:1",
                        mlflow_tracking_uri=f"http://user:{PASSWORD}@127.0.0.1:1",
                        database_url=f"sqlite:///{tmp_path / 'bot.db'}")
    runtime = build(settings, parse_policy(policy_yaml({"model-svc": "m1", "ranker-svc": "m2"})), mlflow=object())
    try:
        assert redact.redact(f"login {PASSWORD} / promsecret2 refused") == "login *** / *** refused"
        runtime.bot.store.audit(actor="U1", action="probe", result="ok", detail={"why": f"pw {PASSWORD}"})
        assert runtime.bot.store.audits()[-1]["detail"] == {"why": "pw ***"}
    finally:
        runtime.bot.store.engine.dispose()
