"""What ships around the code: the Slack app manifest, the console script and the example policy. The import
layers are import-linter contracts (pyproject.toml), checked in tests/test_lint.py.
"""

from __future__ import annotations

import json
import re
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
    assert {"chat:write", "commands", "usergroups:read", "files:write", "channels:history", "groups:history"} <= set(
        manifest["oauth_config"]["scopes"]["bot"])


def test_console_script_entry_point() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["rollback-bot"] == "bot.cli:main"


def test_example_policy_passes_check_policy() -> None:
    result = _check_policy(EXAMPLE)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "model-svc" in result.stdout
    assert ("model-svc/auc-drop: allowed −3% vs the baseline recorded at each promotion (breach only beyond 0.005)"
            in result.stdout)
    assert ("model-svc: promotes @candidate only if not significantly worse than @champion on auc-by-version "
            "(Mann-Whitney U, one-sided at 95%, at least 10 samples per version by model_version)") in result.stdout


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


def test_the_container_reads_the_policy_where_the_readme_says_to_mount_it() -> None:
    """The Dockerfile's `serve --policy` path, its usage comment and the README's mount instruction are one path
    (a package move once rewrote it to /etc/rollback-bot/slo/policy.yaml in all three)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE).group(1))  # type: ignore[union-attr]
    path = cmd[cmd.index("--policy") + 1]
    assert path == "/etc/rollback-bot/policy.yaml"
    assert f":{path}:ro" in dockerfile
    assert f"Mount the policy at `{path}`" in (ROOT / "README.md").read_text()
