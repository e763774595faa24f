"""`rollback-bot demo --headless` end to end: the real CLI in a subprocess, with its own Prometheus, MLflow
sqlite registry, fake Slack, chat page and bot, plays the story and prints the transcript the README promises.
The scripted approver acts through the chat page's endpoints, so the page's signing path runs here too.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.servers import free_port

pytestmark = pytest.mark.story
ROOT = Path(__file__).resolve().parents[1]


def test_headless_demo_recovers_and_freezes(prometheus_bin: str) -> None:
    cmd = [sys.executable, "-m", "bot.cli", "demo", "--headless", "--port", str(free_port())]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # SIGTERM first: the demo then stops its servers and removes its temp dir
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        pytest.fail(f"demo did not finish in 120s:\n{out}")
    print(out)
    assert proc.returncode == 0, out
    assert "version 5 promoted to @champion" in out  # the gate promoted the bad candidate first
    assert "Drill after v5's promotion: rollback ready, 1 step planned in " in out  # the drill right after it
    assert ":rotating_light: model-svc:" in out  # the warning, posted in the channel
    assert "types `/rollback help`" in out and "Known services: `model-svc`" in out  # the ack, shown ephemerally
    assert 'clicks "Dry run"' in out and 'clicks "Roll back" and confirms the dialog' in out
    assert "version 5 -> 4" in out  # the alias flip, in the thread
    assert "Recovered:" in out and "OK: Recovered" in out
    assert "@champion is v4, v5 rollback_blocked=true; auto-promotion frozen" in out
    assert "within the 5m target" in out  # the summary's verdict
    assert "types `/rollback report model-svc`" in out and "1 of 1 within the 5m target" in out  # the report
