"""PagerDuty Events API v2: trigger, acknowledge and resolve one alert per incident, through PagerDuty's own client
library (`pagerduty.EventsApiV2Client`, on httpx2).

Built by the wiring (bot.app) from PAGERDUTY_ROUTING_KEY and PAGERDUTY_EVENTS_URL (`from_env`) and called by the
escalation in bot.incidents. Every call returns a `Result` and never raises: PagerDuty being down must never block a
rollback, and what went wrong goes into the Result for the thread.

- 429, 5xx and connection errors are retried `retries` times, after 0.5 s, 1 s, 2 s (`sleep` is injectable). The
  library's own loop would sleep with time.sleep for 3 s, 6 s, ... and retry a 429 without limit, so `_OneTry`
  makes it one attempt per call and this module does the retrying. A retried trigger is safe: the bot chooses the
  dedup_key, so PagerDuty folds a repeat into the same alert.
- 400 (and any other 4xx) is not retried; the error names PagerDuty's `message` and `errors`.
- An untrusted TLS certificate is not retried either; the error says so. Verification is always on. The CA bundle
  is REQUESTS_CA_BUNDLE, else SSL_CERT_FILE, else the library's default (the system's store; it reads SSL_CERT_DIR).
  httpx2 does not read REQUESTS_CA_BUNDLE by itself, so `ca_bundle()` does.
- The routing key is a secret: it travels only in the request body, and every text this module produces (Result
  errors, log lines) goes through a Redactor that knows it, then bot.infra.redact.redact.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httpx2
import pagerduty

from bot.infra.redact import Redactor, redact

log = logging.getLogger(__name__)

DEFAULT_URL = "https://events.pagerduty.com/v2/enqueue"
ENQUEUE_PATH = "/v2/enqueue"  # the library posts here, under its base URL
SEVERITIES = ("critical", "error", "warning", "info")
MAX_SUMMARY = 1024  # PagerDuty rejects a longer payload.summary
MAX_ERROR_TEXT = 400
FIRST_BACKOFF = 0.5  # seconds before the first retry; doubles after each


@dataclass(frozen=True)
class Result:
    """What one event came to. `status` is the last HTTP status (None: no answer at all). `message` is the text for
    the thread: PagerDuty's own ("Event processed") when ok, else the same text as `error`, which says why not.
    Neither ever contains the routing key."""

    ok: bool
    action: str  # trigger | acknowledge | resolve
    status: int | None
    message: str = ""
    error: str | None = None
    dedup_key: str | None = None
    attempts: int = 0


class _Retry(Exception):
    """A 429 or 5xx: raised out of the library's request loop, so that `PagerDuty._send` retries with its own backoff."""

    def __init__(self, response: httpx2.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class _OneTry(pagerduty.EventsApiV2Client):
    """The library's Events API v2 client, one HTTP attempt per call, remembering the last response per thread."""

    max_network_attempts = 0  # a connection error raises pagerduty.Error at once (the cause attached)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last = threading.local()

    def postprocess(self, response: httpx2.Response) -> None:
        # The library calls this right after each response, before its own retry logic, which it thereby skips.
        self._last.response = response
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retry(response)

    def last_response(self) -> httpx2.Response | None:
        return getattr(self._last, "response", None)

    def forget(self) -> None:
        self._last.response = None


def ca_bundle(environ: Mapping[str, str] = os.environ) -> str | None:
    """The CA file (or directory) clients trust: REQUESTS_CA_BUNDLE, else SSL_CERT_FILE; None: the default store."""
    return environ.get("REQUESTS_CA_BUNDLE") or environ.get("SSL_CERT_FILE") or None


def _ssl_context(bundle: str) -> ssl.SSLContext:
    try:
        if os.path.isdir(bundle):
            return ssl.create_default_context(capath=bundle)
        return ssl.create_default_context(cafile=bundle)
    except (OSError, ssl.SSLError) as e:  # a missing or unreadable bundle is a configuration error: say which
        raise ValueError(f"the CA bundle {bundle} (REQUESTS_CA_BUNDLE / SSL_CERT_FILE) cannot be loaded: {e}") from e


def _base_url(events_url: str) -> str:
    parts = urlsplit(events_url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"PAGERDUTY_EVENTS_URL must be an https:// URL, not {redact(events_url)}")
    if parts.query or parts.fragment or not parts.path.rstrip("/").endswith(ENQUEUE_PATH):
        raise ValueError(f"PAGERDUTY_EVENTS_URL must end with {ENQUEUE_PATH}, not {redact(events_url)}")
    return events_url.rstrip("/")[: -len(ENQUEUE_PATH)]


def _cert_not_trusted(error: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _pagerduty_says(response: httpx2.Response) -> str:
    """PagerDuty's `message` and `errors` from an error body, else the body's start."""
    try:
        body = response.json()
    except ValueError:  # not JSON (a proxy's HTML page): show its start
        return response.text.strip()[:200] or "(empty body)"
    if not isinstance(body, dict):
        return str(body)[:200]
    errors = body.get("errors")
    if isinstance(errors, list):
        errors = "; ".join(str(e) for e in errors)
    said = [str(part) for part in (body.get("message"), errors) if part]
    return ": ".join(said) if said else str(body)[:200]


class PagerDuty:
    """One Events API v2 integration (its routing key) at one enqueue URL; thread-safe."""

    def __init__(self, routing_key: str, events_url: str = DEFAULT_URL, *, timeout: float = 5.0, retries: int = 3,
                 sleep: Callable[[float], None] = time.sleep, environ: Mapping[str, str] = os.environ) -> None:
        if not routing_key:
            raise ValueError("PAGERDUTY_ROUTING_KEY is empty")
        self._redactor = Redactor([routing_key])
        self.events_url = events_url
        self.retries = max(0, retries)
        self._sleep = sleep
        bundle = ca_bundle(environ)
        verify: ssl.SSLContext | bool = _ssl_context(bundle) if bundle else True
        self._client = _OneTry(routing_key, base_url=_base_url(events_url), verify=verify)
        # The library sends this as httpx2's timeout on every request; it annotates it int after its default (60).
        self._client.timeout = timeout  # type: ignore[assignment]
        host = urlsplit(events_url)
        self._where = f"{host.hostname}:{host.port or 443}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **kwargs: Any) -> PagerDuty | None:
        """A client from PAGERDUTY_ROUTING_KEY and PAGERDUTY_EVENTS_URL (default DEFAULT_URL); None without a key."""
        key = environ.get("PAGERDUTY_ROUTING_KEY", "").strip()
        if not key:
            return None
        return cls(key, environ.get("PAGERDUTY_EVENTS_URL") or DEFAULT_URL, environ=environ, **kwargs)

    def close(self) -> None:
        self._client.close()

    def trigger(self, dedup_key: str, summary: str, source: str, severity: str = "critical",
                links: Sequence[Mapping[str, str]] | None = None,
                custom_details: Mapping[str, Any] | None = None) -> Result:
        """Open (or add a trigger to) the alert `dedup_key`. `links`: [{"href": ..., "text": ...}]."""
        if severity not in SEVERITIES:
            why = f"PagerDuty trigger not sent: severity must be one of {', '.join(SEVERITIES)}, not {severity!r}"
            return Result(False, "trigger", None, message=why, error=why, dedup_key=dedup_key)
        if len(summary) > MAX_SUMMARY:
            summary = summary[: MAX_SUMMARY - 1] + "…"
        link_list = [dict(link) for link in links or ()]
        details = dict(custom_details) if custom_details else None
        return self._send("trigger", dedup_key, lambda: self._client.trigger(
            summary, source, dedup_key=dedup_key, severity=severity, custom_details=details, links=link_list or None))

    def acknowledge(self, dedup_key: str) -> Result:
        """Mark the alert `dedup_key` acknowledged (someone is on it)."""
        return self._send("acknowledge", dedup_key, lambda: self._client.acknowledge(dedup_key))

    def resolve(self, dedup_key: str) -> Result:
        """Resolve the alert `dedup_key`."""
        return self._send("resolve", dedup_key, lambda: self._client.resolve(dedup_key))

    def _clean(self, text: str) -> str:
        text = redact(self._redactor(text))
        return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"

    def _send(self, action: str, dedup_key: str, call: Callable[[], str]) -> Result:
        attempts = 0
        while True:
            attempts += 1
            self._client.forget()
            outcome, retry = self._attempt(action, dedup_key, call, attempts)
            if not retry or attempts > self.retries:
                if outcome.ok:
                    log.info("PagerDuty %s for %s accepted (HTTP %s)", action, dedup_key, outcome.status)
                else:
                    log.warning("PagerDuty %s for %s failed: %s", action, dedup_key, outcome.error)
                return outcome
            delay = FIRST_BACKOFF * 2 ** (attempts - 1)
            log.warning("PagerDuty %s for %s: %s; retrying in %g s", action, dedup_key, outcome.error, delay)
            self._sleep(delay)

    def _attempt(self, action: str, dedup_key: str, call: Callable[[], str], attempts: int) -> tuple[Result, bool]:
        """One POST: (its Result, whether it is worth retrying)."""

        def failed(status: int | None, text: str) -> Result:
            why = self._clean(text)
            return Result(False, action, status, message=why, error=why, dedup_key=dedup_key, attempts=attempts)

        try:
            key = call()
        except _Retry as e:  # 429 / 5xx: PagerDuty says try again later
            return failed(e.response.status_code, f"PagerDuty answered HTTP {e.response.status_code} to the "
                                                  f"{action}: {_pagerduty_says(e.response)}"), True
        except pagerduty.HttpError as e:  # 4xx: the event itself is wrong, so the same event would fail again
            response = cast(httpx2.Response, e.response)  # an HttpError always carries its response
            status = response.status_code
            verb = "refused the" if status >= 400 else f"answered HTTP {status} to the"  # 3xx, or 202 sans dedup_key
            return failed(status, f"PagerDuty {verb} {action} (HTTP {status}): {_pagerduty_says(response)}"), False
        except pagerduty.Error as e:  # no HTTP answer: a connection error, a timeout or TLS
            untrusted = _cert_not_trusted(e)
            if untrusted is not None:  # retrying cannot make the certificate trusted
                return failed(None, f"PagerDuty's TLS certificate at {self._where} is not trusted "
                                    f"({untrusted.verify_message or untrusted}); set REQUESTS_CA_BUNDLE or "
                                    "SSL_CERT_FILE to the CA that signs it"), False
            cause = _root_cause(e)
            return failed(None, f"could not reach PagerDuty at {self._where} for the {action}: "
                                f"{type(cause).__name__}: {cause}"), True
        except (pagerduty.UrlError, httpx2.HTTPError, httpx2.InvalidURL, ValueError, TypeError) as e:
            # the library refused the arguments, or httpx2 failed outside the library's wrapping: not transient
            return failed(None, f"PagerDuty {action} not sent: {type(e).__name__}: {e}"), False
        except Exception as e:  # never raise to the escalation: PagerDuty must not block a rollback; this reaches the thread
            return failed(None, f"PagerDuty {action} failed unexpectedly: {type(e).__name__}: {e}"), False
        last = self._client.last_response()
        answered = last.status_code if last is not None else None
        message = ""
        if last is not None:
            try:
                body = last.json()
                message = str(body.get("message", "")) if isinstance(body, dict) else ""
            except ValueError:  # the library already decoded it once; an odd body only loses the message
                message = ""
        return Result(True, action, answered, message=self._clean(message), dedup_key=key, attempts=attempts), False
