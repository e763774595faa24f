"""Settings from the environment (12-factor). Read once by the CLI; tokens never appear in repr or logs."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field


class ConfigError(Exception):
    """A required setting is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    slack_bot_token: str = field(repr=False)
    slack_signing_secret: str = field(repr=False)
    slack_app_token: str | None = field(default=None, repr=False)
    slack_api_url: str | None = None
    prometheus_url: str = "http://127.0.0.1:9090"
    mlflow_tracking_uri: str | None = None
    database_url: str = "sqlite:///rollback-bot.db"
    # POST /alertmanager: the bearer token Alertmanager sends (None = the route is off) and the alert label
    # that names the service.
    alertmanager_token: str | None = field(default=None, repr=False)
    alertmanager_service_label: str = "service"
    # Executors: the helm binary (PATH lookup) and where git_revert keeps its clones (None = a temp dir each
    # time). Kubernetes credentials come from KUBECONFIG or the in-cluster service account, read by executors.
    helm_bin: str = "helm"
    git_workdir: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        missing = [k for k in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "PROMETHEUS_URL", "MLFLOW_TRACKING_URI")
                   if not env.get(k)]
        if missing:
            raise ConfigError("missing environment variables: " + ", ".join(missing))
        api_url = env.get("SLACK_API_URL") or None
        label = env.get("ALERTMANAGER_SERVICE_LABEL") or "service"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", label):
            raise ConfigError(f"ALERTMANAGER_SERVICE_LABEL must be a Prometheus label name, got {label!r}")
        if api_url and not api_url.endswith("/"):
            api_url += "/"
        return cls(
            slack_bot_token=env["SLACK_BOT_TOKEN"],
            slack_signing_secret=env["SLACK_SIGNING_SECRET"],
            slack_app_token=env.get("SLACK_APP_TOKEN") or None,
            slack_api_url=api_url,
            prometheus_url=env["PROMETHEUS_URL"],
            mlflow_tracking_uri=env["MLFLOW_TRACKING_URI"],
            database_url=env.get("DATABASE_URL") or "sqlite:///" + os.path.join(os.getcwd(), "rollback-bot.db"),
            alertmanager_token=env.get("ALERTMANAGER_TOKEN") or None,
            alertmanager_service_label=label,
            helm_bin=env.get("HELM_BIN") or "helm",
            git_workdir=env.get("GIT_WORKDIR") or None,
        )

    def secrets(self) -> list[str]:
        """Values that must never be printed; used by the log filter."""
        return [s for s in (self.slack_bot_token, self.slack_signing_secret, self.slack_app_token,
                            self.alertmanager_token) if s]
