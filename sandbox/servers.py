"""Launchers for the real servers the tests and the local demo run: Prometheus, Alertmanager and an MLflow
tracking server.

Called by tests/conftest.py (session fixtures), the story tests and the local demo. Each launcher starts one
child process from an argument list (never a shell) bound to 127.0.0.1 on a free port, waits until the
server answers its readiness endpoint, and stops it again: SIGTERM to the child's process group, SIGKILL
after a grace period. Every launcher is a context manager, so a failing test still cleans up; a launcher
whose start() fails stops what it started before raising ServerStartError with the tail of the server log.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import requests
import yaml

HOST = "127.0.0.1"
_POLL_SECONDS = 0.1
_STOP_GRACE_SECONDS = 5.0
_LOG_TAIL_LINES = 40
_PORT_ATTEMPTS = 3


class ServerStartError(RuntimeError):
    """A server did not become ready; the message carries the command and the tail of its log."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1, found by binding port 0.

    The port is released before the server binds it, so another process could take it in between;
    the launchers retry with a new port when the server reports the address as in use.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def prometheus_binary() -> str | None:
    """Path of the `prometheus` executable on PATH, or None when it is not installed."""
    return shutil.which("prometheus")


def alertmanager_binary() -> str | None:
    """Path of Debian's `prometheus-alertmanager` (or upstream's `alertmanager`) on PATH, or None."""
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def _log_tail(path: Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    """The last `lines` lines written to `path` after byte `offset` (this attempt's output only)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:  # the process may have died before creating its log: say so instead of failing again
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class _Server:
    """Common process handling: start on a free port, poll a readiness URL, stop the process group."""

    name = "server"
    ready_path = "/"
    ready_timeout = 30.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir).resolve()
        self.port = 0
        self.log_path = self.workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- to override -------------------------------------------------------------------------------------
    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _prepare(self) -> None:
        """Write config files and create directories before the first start attempt."""

    # -- public ------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError(f"{self.name} is not started")
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float | None = None) -> Self:
        """Start the server and block until its readiness endpoint answers 200."""
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        limit = self.ready_timeout if timeout is None else timeout
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self.port = free_port()
            try:
                self._spawn_and_wait(limit)
                return self
            except ServerStartError as exc:
                self.stop()
                retry = attempt < _PORT_ATTEMPTS and "address already in use" in str(exc).lower()
                if not retry:
                    self.port = 0
                    raise
            except BaseException:  # Ctrl-C or a test timeout mid-start: do not leak the half-started server
                self.stop()
                self.port = 0
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Terminate the server's process group; kill it if it is still alive after a grace period."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        # start_new_session=True made the child the leader of its own group, so its pid is the group id:
        # this reaches the servers' own children (mlflow runs uvicorn as a child) and nothing else.
        self._signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:  # ignored SIGTERM: force it, a leaked server outlives the test run
            self._signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=_STOP_GRACE_SECONDS)
        # Children that outlived the leader would keep the port busy.
        self._signal_group(proc, signal.SIGKILL)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self.url if self.port else "not started"
        return f"<{type(self).__name__} {state}>"

    # -- internals ---------------------------------------------------------------------------------------
    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the whole group is already gone, which is what we want
            pass

    def _spawn_and_wait(self, timeout: float) -> None:
        cmd = self._command(self.port)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"\n--- {time.strftime('%H:%M:%S')} starting: {cmd}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    cmd,
                    cwd=self.workdir,
                    env=self._env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:  # missing or non-executable binary: report it like any other start failure
                raise ServerStartError(f"{self.name}: cannot run {cmd[0]!r}: {exc}") from exc
        ready_url = self.url + self.ready_path
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise ServerStartError(self._failure(f"exited with code {code} before it was ready", cmd))
            try:
                resp = requests.get(ready_url, timeout=1.0)
                if resp.status_code == 200:
                    return
                last = f"HTTP {resp.status_code}"
            except requests.RequestException as exc:  # not listening yet: keep polling until the deadline
                last = type(exc).__name__
            time.sleep(_POLL_SECONDS)
        raise ServerStartError(self._failure(f"not ready at {ready_url} within {timeout:.0f}s (last: {last})", cmd))

    def _failure(self, what: str, cmd: Sequence[str]) -> str:
        return (
            f"{self.name} {what}\ncommand: {list(cmd)}\n"
            f"--- last lines of {self.log_path} ---\n{_log_tail(self.log_path, self._log_offset)}"
        )


class PrometheusServer(_Server):
    """A real Prometheus scraping `targets` (host:port strings) as job `model-svc`.

    Ready in ~0.1 s, but the first scrape comes ~5 s later (2.42 hands new targets to the scrape manager
    at most every 5 s and has no flag to shorten that): use wait_for_series() before asserting on data.
    """

    name = "prometheus"
    ready_path = "/-/ready"
    ready_timeout = 15.0
    job = "model-svc"

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        scrape_interval: str = "1s",
        binary: str = "prometheus",
        rule_files: Sequence[Path] = (),
    ) -> None:
        super().__init__(workdir)
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.binary = binary
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.config_path = self.workdir / "prometheus.yml"
        self.data_dir = self.workdir / "prometheus-data"

    def config(self) -> dict[str, Any]:
        """The prometheus.yml content for the current targets and rule files."""
        cfg: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": list(self.targets)}]}],
        }
        if self.rule_files:
            cfg["rule_files"] = [str(p) for p in self.rule_files]
        return cfg

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def _command(self, port: int) -> list[str]:
        binary = shutil.which(self.binary) or self.binary
        return [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address={HOST}:{port}",
            "--web.enable-lifecycle",
        ]

    def reload(self, targets: list[str] | None = None, rule_files: Sequence[Path] | None = None) -> None:
        """Rewrite prometheus.yml (new targets and/or rule files) and make the running server reload it."""
        if targets is not None:
            self.targets = list(targets)
        if rule_files is not None:
            self.rule_files = [Path(p).resolve() for p in rule_files]
        self._prepare()
        resp = requests.post(self.url + "/-/reload", timeout=10)
        resp.raise_for_status()

    def query(self, query: str) -> list[dict[str, Any]]:
        """One instant query; the `result` list of the answer."""
        resp = requests.get(self.url + "/api/v1/query", params={"query": query}, timeout=10)
        resp.raise_for_status()
        body = resp.json()
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query {query!r} failed: {body}")
        return list(body["data"]["result"])

    def wait_for_series(self, query: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Poll `query` until its result is non-empty and return that result; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(query)
            if result:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no series for {query!r} after {timeout}s at {self.url}")
            time.sleep(0.25)


class AlertmanagerServer(_Server):
    """A real Alertmanager (Debian's `prometheus-alertmanager`, clustering off) whose one receiver posts every
    group to `webhook_url` with `Authorization: Bearer <token>`, resolved notifications included.

    group_wait / group_interval default to 1 s so a pushed alert reaches the webhook within ~1-2 s; a short
    repeat_interval makes it re-send unchanged groups, which is how tests see deduplication against it.
    """

    name = "alertmanager"
    ready_path = "/-/ready"
    ready_timeout = 15.0

    def __init__(
        self,
        workdir: Path,
        webhook_url: str,
        token: str,
        *,
        group_by: Sequence[str] = ("alertname", "service"),
        group_wait: str = "1s",
        group_interval: str = "1s",
        repeat_interval: str = "1h",
        binary: str = "prometheus-alertmanager",
    ) -> None:
        super().__init__(workdir)
        self.webhook_url = webhook_url
        self.token = token
        self.route = {"receiver": "rollback-bot", "group_by": list(group_by), "group_wait": group_wait,
                      "group_interval": group_interval, "repeat_interval": repeat_interval}
        self.binary = binary
        self.config_path = self.workdir / "alertmanager.yml"
        self.data_dir = self.workdir / "alertmanager-data"

    def config(self) -> dict[str, Any]:
        """The alertmanager.yml content: one route, one webhook receiver with the bearer token."""
        webhook = {"url": self.webhook_url, "send_resolved": True,
                   "http_config": {"authorization": {"credentials": self.token}}}
        return {"route": dict(self.route), "receivers": [{"name": "rollback-bot", "webhook_configs": [webhook]}]}

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.touch(mode=0o600)  # it holds the token
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def _command(self, port: int) -> list[str]:
        binary = shutil.which(self.binary) or self.binary
        return [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.data_dir}",
            f"--web.listen-address={HOST}:{port}",
            "--cluster.listen-address=",
        ]

    def push(self, alerts: list[dict[str, Any]]) -> None:
        """POST /api/v2/alerts, as Prometheus does: each {labels, annotations, startsAt, endsAt, generatorURL};
        an endsAt in the past resolves the alert."""
        resp = requests.post(self.url + "/api/v2/alerts", json=alerts, timeout=10)
        if resp.status_code != 200:
            raise RuntimeError(f"alertmanager refused the alerts: HTTP {resp.status_code} {resp.text[:300]}")

    def alerts(self) -> list[dict[str, Any]]:
        """GET /api/v2/alerts: what Alertmanager holds now (fingerprint, status.state, ...)."""
        resp = requests.get(self.url + "/api/v2/alerts", timeout=10)
        resp.raise_for_status()
        return list(resp.json())


class MlflowServer(_Server):
    """A real MLflow tracking and registry server with a sqlite store inside `workdir`."""

    name = "mlflow"
    ready_path = "/health"
    ready_timeout = 90.0

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.db_path = self.workdir / "mlflow.db"
        self.artifact_root = self.workdir / "artifacts"

    @property
    def backend_store_uri(self) -> str:
        return f"sqlite:///{self.db_path}"

    def _prepare(self) -> None:
        self.artifact_root.mkdir(parents=True, exist_ok=True)

    def _env(self) -> dict[str, str]:
        # Without this the server also starts the job runner: 9 processes and ~2.4 GB instead of ~500 MB.
        return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    def _command(self, port: int) -> list[str]:
        exe = Path(sys.executable).with_name("mlflow")
        base = [str(exe)] if exe.is_file() else [sys.executable, "-m", "mlflow"]
        return [
            *base,
            "server",
            "--backend-store-uri",
            self.backend_store_uri,
            "--default-artifact-root",
            str(self.artifact_root),
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            "1",
        ]
