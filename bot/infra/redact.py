"""Credentials out of every text that leaves the process: URLs' userinfo, token-like query parameters and the
exact configured secret values become `***`.

`redact_urls(text)` rewrites each URL in a text: `scheme://user:pw@host` and `scheme://token@host` become
`scheme://***@host`, and the value of a token-like query parameter (token, access_token, password, secret, key,
api_key, sig, signature, auth, ... and names ending in _token, _secret, _key...) becomes `***`. `redact(text)`
does that and also replaces the exact secret values the process was configured with: bot.app.build calls
`configure(settings, policy)` with Settings.secrets() and the passwords and tokens found in PROMETHEUS_URL,
MLFLOW_TRACKING_URI, DATABASE_URL and the policy's git repo URLs (`url_secrets`).

Called at the exits: bot.slack.slack_out (every text and Block Kit string of a Web API call, and SlackError
messages), bot.app.RedactSecrets (the log filter) and bot.infra.store `audit()`. A leaf module: it imports nothing from
the bot. executors/git_revert.py keeps its own userinfo-only helper, since executors must not import bot/; what
it misses is caught here on the way out.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:
    from bot.infra.config import Settings
    from bot.slo.policy import Policy

MASK = "***"
# Shorter URL-derived values are not replaced as bare text (a 3-letter password would mangle every message);
# inside a URL they are removed by the URL rule whatever their length.
MIN_SECRET_LENGTH = 6
# A URL as it appears in prose, logs, JSON or Slack's <url|label>: a scheme, ://, and no whitespace or delimiter.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s<>\"'`|\\]+")
# The userinfo: everything after :// up to the last @ before the path, query or fragment.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
_PARAM = re.compile(r"([?&;])([^=&#;]+)=([^&#;]*)")
_SECRET_NAMES = frozenset({
    "token", "access_token", "refresh_token", "id_token", "password", "passwd", "pwd", "pass", "secret", "key",
    "apikey", "api_key", "api-key", "sig", "signature", "auth", "authorization", "credential", "credentials",
    "private_token", "x-amz-signature", "x-amz-security-token", "x-amz-credential", "sessiontoken",
})
_SECRET_SUFFIXES = ("token", "secret", "password", "passwd", "_key", "-key", "apikey", "signature", "_sig", "-sig",
                    "_auth", "-auth", "credential")


def secret_param(name: str) -> bool:
    """Whether a query parameter's name says its value is a credential (case-insensitive)."""
    lowered = unquote(name).strip().lower()
    return lowered in _SECRET_NAMES or lowered.endswith(_SECRET_SUFFIXES)


def _one_url(match: re.Match[str]) -> str:
    url = _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", match.group(0), count=1)
    return _PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}={MASK}" if secret_param(m.group(2)) and m.group(3)
                      else m.group(0), url)


def redact_urls(text: str) -> str:
    """`text` with the userinfo and token-like query parameter values of every URL in it replaced by ***."""
    if "://" not in text:
        return text
    return _URL.sub(_one_url, text)


def url_secrets(url: str | None) -> list[str]:
    """The credentials a configured URL carries, as they could appear in text without the URL around them: the
    userinfo's password (or a lone token as user), and token-like query parameter values; raw and decoded."""
    if not url or "://" not in url:
        return []
    rest = url.split("://", 1)[1]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo = authority.rpartition("@")[0]
    found: list[str] = []
    if userinfo:
        user, _, password = userinfo.partition(":")
        found.append(password or user)  # `scheme://token@host` carries its token as the user
    query = rest.partition("?")[2].partition("#")[0]
    found += [value for _, name, value in _PARAM.findall("?" + query) if secret_param(name)]
    values = {v for raw in found for v in (raw, unquote(raw)) if len(v) >= MIN_SECRET_LENGTH and v != MASK}
    return sorted(values)


class Redactor:
    """redact_urls plus the exact secret values it was given, longest first (a token containing another)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self.add(secrets)

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            merged = set(self._secrets) | {s for s in secrets if s and s != MASK}
            self._secrets = tuple(sorted(merged, key=lambda s: (-len(s), s)))

    def __call__(self, text: str) -> str:
        text = redact_urls(text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def deep(self, value: Any) -> Any:
        """Every string inside a JSON-like value (dicts, lists, tuples) redacted; other values as they are."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.deep(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.deep(v) for v in value)
        return value


# The process's redactor: configured by bot.app.build, used by redact() at the exits.
REDACTOR = Redactor()


def configured_secrets(settings: Settings, policy: Policy | None = None) -> list[str]:
    """Settings.secrets() plus what PROMETHEUS_URL, MLFLOW_TRACKING_URI, DATABASE_URL and the policy's step URLs
    (a git_revert repo with a token in it) carry."""
    urls = [settings.prometheus_url, settings.mlflow_tracking_uri, settings.database_url, settings.slack_api_url]
    for service in (policy.services.values() if policy is not None else ()):
        for step in service.rollback:
            urls += [v for v in _strings(step.config.model_dump()) if "://" in v]
    return [*settings.secrets(), *(s for url in urls for s in url_secrets(url))]


def configure(settings: Settings, policy: Policy | None = None) -> list[str]:
    """Add this process's configured secrets to REDACTOR; returns them (for the log filter)."""
    secrets = configured_secrets(settings, policy)
    REDACTOR.add(secrets)
    return secrets


def redact(text: str) -> str:
    """`text` as it may leave the process: URLs' credentials and every configured secret replaced by ***."""
    return REDACTOR(text)


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
