"""The fake `helm` (tests/bin/helm) put first on PATH, with its release history and argv log in a temp dir.

Used by tests/test_exec_helm.py and the no-shell test in tests/test_exec_git_revert.py: `FakeHelm.install`
seeds releases, points the fake at its state and log files and prepends tests/bin to PATH, so the executor
finds it exactly as it would find the real helm (Clients.helm = "helm").
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BIN = Path(__file__).resolve().parent / "bin"


def revisions(*specs: tuple[str, str, str]) -> list[dict[str, Any]]:
    """History rows, oldest first, from (status, app_version, description); charts follow the app version."""
    return [
        {"revision": i, "updated": f"2026-11-{i:02d}T10:00:00.000000+00:00", "status": status,
         "chart": f"model-svc-0.{i}.0", "app_version": app, "description": description}
        for i, (status, app, description) in enumerate(specs, start=1)
    ]


def standard_history() -> list[dict[str, Any]]:
    """v1 installed, v2 and v3 upgrades; v3 (the bad one) is deployed."""
    return revisions(("superseded", "1.0", "Install complete"), ("superseded", "1.1", "Upgrade complete"),
                     ("deployed", "1.2", "Upgrade complete"))


@dataclass
class FakeHelm:
    state_file: Path
    log_file: Path

    @classmethod
    def install(cls, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                releases: dict[str, list[dict[str, Any]]]) -> FakeHelm:
        fake = cls(tmp_path / "helm-state.json", tmp_path / "helm-argv.jsonl")
        fake.write({"releases": releases, "faults": {}})
        fake.log_file.touch()
        monkeypatch.setenv("FAKE_HELM_STATE", str(fake.state_file))
        monkeypatch.setenv("FAKE_HELM_LOG", str(fake.log_file))
        monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        return fake

    def read(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state_file.read_text())
        return state

    def write(self, state: dict[str, Any]) -> None:
        self.state_file.write_text(json.dumps(state, indent=1))

    def history(self, release: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.read()["releases"][release]
        return rows

    def fail(self, command: str, times: int | None = None, **fault: Any) -> None:
        """Make the next `command` calls fail: error="timeout"|"unreachable"|"busy", or stderr=..., exit=..."""
        state = self.read()
        state["faults"][command] = dict(fault, **({"times": times} if times is not None else {}))
        self.write(state)

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log_file.read_text().splitlines()]
