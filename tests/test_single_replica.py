"""One `rollback-bot serve` per SQLite file (bot.infra.single_replica, taken by bot.cli's `_serve`): a second serve
on the same file exits 2 with one line naming the file and PostgreSQL, and the first keeps serving; the lock goes
with its process (a SIGKILLed serve leaves nothing that blocks the next start); in-memory SQLite and PostgreSQL
take no lock.

The whole-process test starts a real serve (tests/story_env.BotProcess: the fake Slack Web API, Prometheus and
MLflow unreachable, which serve rides out), the rest call the lock in subprocesses of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from bot.infra import single_replica
from sandbox.servers import free_port
from sandbox.slack_api import FakeSlackAPI
from tests.story_env import BotProcess

ROOT = Path(__file__).resolve().parents[1]
POLICY = """
evaluate_every: 1s
services:
  model-svc:
    channel: C0123456789
    approvers: [U0123456789]
    model: recommender
    slos:
      - {name: latency, query: 'vector(0.1)', above: 0.25}
    rollback:
      - mlflow_alias: {model: recommender}
"""
# Holds the serve lock of argv[1]'s database, says so, and keeps it until its stdin closes.
_HOLDER = """
import sys
from bot.infra import single_replica
try:
    print(single_replica.hold(sys.argv[1]), flush=True)
except single_replica.AlreadyServing as exc:
    print(f"refused: {exc}", flush=True)
    sys.exit(2)
sys.stdin.read()
"""


def _hold_in_child(url: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc


def _second_serve(tmp_path: Path, bot: BotProcess) -> subprocess.CompletedProcess[str]:
    """`rollback-bot serve` again, with the first one's environment (so its database) on another port."""
    cmd = [*bot.cmd[:-1], str(free_port())]
    return subprocess.run(cmd, env=bot.env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)


def test_a_second_serve_on_the_same_sqlite_file_refuses_naming_postgresql(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    down = f"http://127.0.0.1:{free_port()}"
    with FakeSlackAPI() as slack:
        bot = BotProcess(tmp_path, policy, slack_url=slack.url, prometheus_url=down, mlflow_url=down)
        try:
            bot.start()
            second = _second_serve(tmp_path, bot)
            assert second.returncode == 2, second.stdout + second.stderr
            database = tmp_path / "bot.db"
            assert second.stderr.strip().splitlines() == [
                f"refusing to start: another `rollback-bot serve` (pid {bot.proc.pid if bot.proc else 0}) is using "
                f"{database.resolve()}: SQLite serves one replica; for more than one replica set "
                "DATABASE_URL=postgresql+psycopg://… (PostgreSQL)"]
            assert bot.proc is not None and bot.proc.poll() is None, "the first serve keeps running"
            assert requests.get(f"{bot.url}/healthz", timeout=5).status_code == 200
            bot.kill()  # SIGKILL: no shutdown code runs, the kernel drops the lock with the process
            bot.start()
            assert requests.get(f"{bot.url}/healthz", timeout=5).status_code == 200, "a restart is not blocked"
        finally:
            bot.stop()


def test_the_lock_is_per_file_and_released_with_its_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    first = _hold_in_child(url)
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == str(tmp_path / "a.db.serve.lock")
        refused = _hold_in_child(url)
        out, _err = refused.communicate(timeout=30)
        assert refused.returncode == 2
        assert out.startswith(f"refused: another `rollback-bot serve` (pid {first.pid}) is using {tmp_path / 'a.db'}")
        assert "PostgreSQL" in out
        other = _hold_in_child(f"sqlite:///{tmp_path / 'b.db'}")  # another file: its own lock
        try:
            assert other.stdout is not None and other.stdout.readline().strip().endswith("b.db.serve.lock")
        finally:
            other.communicate("", timeout=30)
    finally:
        first.communicate("", timeout=30)  # ends it: its lock goes with it
    again = _hold_in_child(url)
    out, _err = again.communicate("", timeout=30)
    assert again.returncode == 0 and out.strip().endswith("a.db.serve.lock")


def test_a_relative_path_locks_the_same_file_as_the_absolute_one(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert single_replica.sqlite_file("sqlite:///bot.db") == tmp_path.resolve() / "bot.db"
    assert single_replica.sqlite_file(f"sqlite:///{tmp_path}/./bot.db") == tmp_path.resolve() / "bot.db"


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:mem?mode=memory&uri=true",
                                 "postgresql+psycopg://rb@127.0.0.1:5432/db"])
def test_in_memory_sqlite_and_postgresql_take_no_lock(url: str) -> None:
    assert single_replica.sqlite_file(url) is None
    assert single_replica.hold(url) is None
