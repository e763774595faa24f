"""The style gates run with the tests, so CI enforces them: ruff (E, F, I, B, PIE), mypy on the packages, and the
import layers as pyproject.toml's [tool.importlinter] contracts declare them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_layer_contracts_are_kept() -> None:
    """handlers -> bot -> executors, executors never import Slack, handlers never import sqlalchemy.
    lint-imports also fails when an ignored import no longer exists, so the contracts see real imports."""
    result = subprocess.run([str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout
