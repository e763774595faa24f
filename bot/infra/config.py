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
    # Many replicas on one PostgreSQL database (bot.infra.replica): this replica's id (default hostname-pid; a
    # restarted replica may reuse it) and the lease ttl in seconds (a dead replica's work moves after at most this).
    replica_id: str | None = None
    lease_ttl: float = 15.0
    # Escalation (bot.incidents.escalation): the Events API v2 integration key (None = nobody is paged) and the
    # enqueue endpoint.
    pagerduty_routing_key: str | None = field(default=None, repr=False)
    pagerduty_events_url: str = "https://events.pagerduty.com/v2/enqueue"

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
            replica_id=_replica_id(env.get("ROLLBACK_REPLICA_ID")),
            lease_ttl=_lease_ttl(env.get("ROLLBACK_LEASE_TTL")),
            pagerduty_routing_key=env.get("PAGERDUTY_ROUTING_KEY") or None,
            pagerduty_events_url=_https(env.get("PAGERDUTY_EVENTS_URL") or "https://events.pagerduty.com/v2/enqueue"),
        )

    @property
    def exclusive(self) -> bool:
        """Whether this database can have one replica only (SQLite: one `serve` per file)."""
        return self.database_url.startswith("sqlite")

    def secrets(self) -> list[str]:
        """Values that must never be printed; used by the log filter."""
        return [s for s in (self.slack_bot_token, self.slack_signing_secret, self.slack_app_token,
                            self.alertmanager_token, self.pagerduty_routing_key) if s]


def _https(url: str) -> str:
    if not url.startswith("https://"):
        raise ConfigError(f"PAGERDUTY_EVENTS_URL must be an https:// URL (PagerDuty's client speaks only TLS), got "
                          f"{url[:100]!r}")
    return url


def _replica_id(value: str | None) -> str | None:
    if not value:
        return None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}", value):
        raise ConfigError(f"ROLLBACK_REPLICA_ID must be 1-100 letters, digits or . _ : - (got {value[:120]!r})")
    return value


def _lease_ttl(value: str | None) -> float:
    if not value:
        return 15.0
    try:
        ttl = float(value)
    except ValueError:
        raise ConfigError(f"ROLLBACK_LEASE_TTL must be a number of seconds, got {value[:40]!r}") from None
    if not 1.0 <= ttl <= 600.0:
        raise ConfigError(f"ROLLBACK_LEASE_TTL must be between 1 and 600 seconds, got {ttl:g}")
    return ttl
