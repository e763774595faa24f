"""What ships around the code: the Slack app manifest, the console script, the example policy, and the
import layers (handlers -> bot -> executors; executors never see Slack).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "policy.yaml"


def _check_policy(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.cli", "check-policy", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_manifest_declares_command_interactivity_and_scopes() -> None:
    manifest = yaml.safe_load((ROOT / "manifest.yml").read_text())
    assert manifest["display_information"]["name"] == "rollback-bot"
    assert manifest["display_information"]["description"]
    assert "bot_user" in manifest["features"]
    (command,) = [c for c in manifest["features"]["slash_commands"] if c["command"] == "/rollback"]
    assert command["url"].startswith("https://") and command["url"].endswith("/slack/events")
    assert "<service>" in command["usage_hint"] and "status" in command["usage_hint"]
    assert command["should_escape"] is False
    settings = manifest["settings"]
    assert settings["interactivity"] == {"is_enabled": True, "request_url": command["url"]}
    assert settings["socket_mode_enabled"] is False
    assert {"chat:write", "commands", "usergroups:read", "files:write"} <= set(manifest["oauth_config"]["scopes"]["bot"])


def test_console_script_entry_point() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["rollback-bot"] == "bot.cli:main"


def test_example_policy_passes_check_policy() -> None:
    result = _check_policy(EXAMPLE)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "model-svc" in result.stdout


def test_typo_in_policy_names_line_and_field(tmp_path: Path) -> None:
    lines = EXAMPLE.read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if line.strip().startswith("stable_for:"))
    lines[index] = lines[index].replace("stable_for:", "stabel_for:")
    bad = tmp_path / "policy.yaml"
    bad.write_text("".join(lines))
    result = _check_policy(bad)
    assert result.returncode == 2
    assert f"{bad}:{index + 1}: services.model-svc.verify.stabel_for: unknown field" in result.stderr
    assert "did you mean 'stable_for'" in result.stderr


def _imports(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _violations(layer: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    found = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in allowed:
            continue
        bad = sorted(n for n in _imports(path) if any(n == f or n.startswith(f + ".") for f in forbidden))
        found += [f"{rel} imports {name}" for name in bad]
    return found


def test_import_layers() -> None:
    assert _violations("executors", ("slack_bolt", "slack_sdk", "handlers", "bot")) == []
    assert _violations("bot", ("handlers",), allowed=("bot/app.py",)) == []  # the app factory wires handlers
    assert _violations("handlers", ("executors",)) == []
    assert "handlers" in _imports(ROOT / "bot" / "app.py")  # the check sees real imports
