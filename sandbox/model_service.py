"""A simulated model service: Prometheus metrics for whichever MLflow version is the champion.

Used by the story tests and the local demo in place of a real inference service. It serves its own
prometheus_client registry on 127.0.0.1, generates `rps` synthetic requests per second with the latency and
error rate of the version it currently serves, and learns that version by polling `champion()` (usually
`alias_reader(client, model)`, i.e. the MLflow version behind the `champion` alias). Flipping the alias in
MLflow therefore changes the metrics a real Prometheus scrapes within a fraction of a second, which is what
the bot's SLO checks and rollbacks act on.

A second version can serve a share alongside (a canary or shadow), learnt by polling `canary()` the same way. Both
versions export a slightly noisy AUC series labelled with their version (`model_quality_auc{model_version}`), which
is what the promotion gate's statistical comparison (bot.slo.compare) reads. Everything is deterministic: the
noise is a fixed cycle, not random.

`seed_registry()` creates a registered model with a few versions on a (real) MLflow server for the same
tests and demo.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

HOST = "127.0.0.1"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0)
UNKNOWN_VERSION = "unknown"
TICK_SECONDS = 0.05
CHAMPION_POLL_SECONDS = 0.25
# Deterministic +-10% latency jitter, cycled request by request (mean 1.0).
_JITTER = (1.0, 0.94, 1.06, 0.9, 1.1, 0.97, 1.03, 0.92, 1.08, 1.0)
# Deterministic +-0.4% AUC noise for model_quality_auc, one step per traffic tick (mean exactly 1.0). No factor equals
# the one half a cycle away, so two versions started half a cycle apart never report the same factor at once. 23
# factors (prime): a cycle lasts 1.15 s, so a scrape every second sees a different one each time, not one forever.
_QUALITY_NOISE = (1.0, 0.997, 1.003, 0.9965, 1.0035, 0.999, 1.001, 0.996, 1.004, 0.998,
                  1.002, 0.9975, 1.0025, 0.9985, 1.0015, 0.9995, 1.0005, 0.9962, 1.0038, 1.0,
                  0.9968, 1.0032, 1.0)


@dataclass(frozen=True)
class VersionProfile:
    """How one model version behaves: request latency, share of 500 answers, and its quality gauges (AUC,
    RMSE, calibration error, share of requests it rejects)."""

    latency_seconds: float
    error_rate: float = 0.0
    auc: float = 0.9
    rmse: float = 0.1
    calibration_error: float = 0.02
    rejection_rate: float = 0.01


def alias_reader(client: MlflowClient, model: str, alias: str = "champion") -> Callable[[], str | None]:
    """A `champion` callable for ModelServiceSimulator: the version behind `model@alias`, as a string.

    Versions are str over HTTP and int from a direct sqlite store, hence str().
    """

    def read() -> str | None:
        return str(client.get_model_version_by_alias(model, alias).version)

    return read


class ModelServiceSimulator:
    """Serves synthetic request metrics for the version `champion()` names (and `canary()`'s, for quality); see the
    module docstring.

    Metrics (all on its own registry):
      model_request_latency_seconds{service,version}  Histogram
      model_requests_total{service,version,code}       Counter, code "200" / "500"
      model_auc{service}                               Gauge, the served version's AUC
      model_rmse{service}                              Gauge, the served version's RMSE
      model_calibration_error{service}                 Gauge, the served version's expected calibration error
      model_rejection_rate{service}                    Gauge, share of requests the served version rejects
      model_serving_version{service,version}           Gauge, 1 for the served version, 0 for earlier ones
      model_quality_auc{service,model_version}         Gauge, the AUC of the champion's and (when different) the
                                                       canary's version: the profile's auc times a deterministic
                                                       +-0.4% noise factor, a step per traffic tick, each version
                                                       at its own phase. A version no longer served (neither
                                                       champion nor canary) has its series removed.

    Requests (latency, answer codes) are only generated for the champion; the canary gets none.
    """

    def __init__(
        self,
        service: str = "model-svc",
        *,
        champion: Callable[[], str | None],
        canary: Callable[[], str | None] | None = None,
        profiles: dict[str, VersionProfile],
        default: VersionProfile,
        rps: float = 20,
        port: int = 0,
    ) -> None:
        self.service = service
        self.rps = rps
        self._champion = champion
        self._canary_reader = canary
        self._profiles = dict(profiles)
        self._default = default
        self._requested_port = port
        self._lock = threading.Lock()
        self._version: str | None = None
        self._canary: str | None = None
        self._switches: list[tuple[float, str]] = []
        self._last_error: BaseException | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._httpd: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None
        self._port = 0
        self._requests = 0
        self._error_budget = 0.0
        # model_quality_auc: each exported version's position in _QUALITY_NOISE, guarded by its own lock (the
        # traffic tick and the polls both update the gauge; an unguarded set could revive a removed series).
        self._quality_lock = threading.Lock()
        self._quality_steps: dict[str, int] = {}

        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "model_request_latency_seconds",
            "Latency of model inference requests.",
            ["service", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "model_requests_total",
            "Model inference requests by answer code.",
            ["service", "version", "code"],
            registry=self.registry,
        )
        self.auc = Gauge("model_auc", "AUC of the served model version.", ["service"], registry=self.registry)
        self.rmse = Gauge("model_rmse", "RMSE of the served model version.", ["service"], registry=self.registry)
        self.calibration_error = Gauge("model_calibration_error", "Expected calibration error of the served version.",
                                       ["service"], registry=self.registry)
        self.rejection_rate = Gauge("model_rejection_rate", "Share of requests the served version rejects.",
                                    ["service"], registry=self.registry)
        self.serving = Gauge(
            "model_serving_version",
            "1 for the model version currently served.",
            ["service", "version"],
            registry=self.registry,
        )
        self.quality_auc = Gauge(
            "model_quality_auc",
            "AUC of each model version serving traffic (champion and canary), with a little measurement noise.",
            ["service", "model_version"],
            registry=self.registry,
        )

    # -- public ------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("simulator is not started")
        return self._port

    @property
    def target(self) -> str:
        """The scrape target for Prometheus, "127.0.0.1:PORT"."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}/metrics"

    @property
    def version(self) -> str | None:
        """The version served now (None until champion() first answered)."""
        with self._lock:
            return self._version

    @property
    def canary_version(self) -> str | None:
        """The version serving a share next to the champion (None when there is no canary)."""
        with self._lock:
            return self._canary

    @property
    def switches(self) -> list[tuple[float, str]]:
        """(time.time(), version) each time the served version changed, the first version included."""
        with self._lock:
            return list(self._switches)

    @property
    def last_error(self) -> BaseException | None:
        """The last exception champion() or canary() raised (None after a poll where both answered); for
        diagnostics."""
        with self._lock:
            return self._last_error

    def profile(self, version: str | None) -> VersionProfile:
        return self._profiles.get(version, self._default) if version is not None else self._default

    def start(self) -> Self:
        """Learn the champion once, serve /metrics and start generating traffic."""
        if self._httpd is not None:
            raise RuntimeError("simulator already started")
        self._stop.clear()
        self._poll_champion()
        self._update_quality(advance=False)
        self._httpd, self._http_thread = start_http_server(self._requested_port, addr=HOST, registry=self.registry)
        self._port = int(self._httpd.server_port)
        self._threads = [
            threading.Thread(target=self._champion_loop, name=f"{self.service}-champion", daemon=True),
            threading.Thread(target=self._traffic_loop, name=f"{self.service}-traffic", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop traffic, champion polling and the HTTP server. Safe to call twice."""
        self._stop.set()
        for thread in self._threads:
            # champion() may be stuck in a slow MLflow call with retries; the threads are daemons, so a
            # bounded join is enough to stop traffic without hanging the caller.
            thread.join(timeout=5)
        self._threads = []
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)
            self._http_thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------------------
    def _poll_champion(self) -> None:
        """Ask champion() and canary() (when given) which versions serve now; called by start() and the poll loop."""
        error: BaseException | None = None
        try:
            version = self._champion()
        except Exception as exc:
            # A real service keeps serving its loaded model when the registry is unreachable or the alias
            # is briefly missing (e.g. mid-flip): keep the last known version and remember the error.
            error = exc
        else:
            if version is not None:
                self._serve(str(version))
        if self._canary_reader is not None:
            try:
                canary = self._canary_reader()
            except Exception as exc:
                # Same tolerance as for the champion: a canary keeps serving while its alias cannot be read.
                error = error or exc
            else:
                with self._lock:
                    self._canary = None if canary is None else str(canary)
        with self._lock:
            self._last_error = error

    def _serve(self, version: str) -> None:
        with self._lock:
            previous = self._version
            if version == previous:
                return
            self._version = version
            self._switches.append((time.time(), version))
        if previous is not None:
            self.serving.labels(self.service, previous).set(0)
        self.serving.labels(self.service, version).set(1)
        profile = self.profile(version)
        self.auc.labels(self.service).set(profile.auc)
        self.rmse.labels(self.service).set(profile.rmse)
        self.calibration_error.labels(self.service).set(profile.calibration_error)
        self.rejection_rate.labels(self.service).set(profile.rejection_rate)

    def _update_quality(self, *, advance: bool) -> None:
        """Set model_quality_auc for the champion's and canary's versions and remove every other version's series.

        Called after each poll (advance=False: a switch shows at once) and each traffic tick (advance=True: the
        noise moves one step). A newly exported version starts half a noise cycle away from the one already
        exported, so the two series never move in lockstep.
        """
        with self._lock:
            wanted = [v for v in dict.fromkeys((self._version, self._canary)) if v is not None]
        with self._quality_lock:
            for version in [v for v in self._quality_steps if v not in wanted]:
                del self._quality_steps[version]
                self.quality_auc.remove(self.service, version)
            if advance:
                for version in self._quality_steps:
                    self._quality_steps[version] += 1
            for version in wanted:
                if version not in self._quality_steps:
                    others = list(self._quality_steps.values())
                    self._quality_steps[version] = others[0] + len(_QUALITY_NOISE) // 2 if others else 0
                factor = _QUALITY_NOISE[self._quality_steps[version] % len(_QUALITY_NOISE)]
                self.quality_auc.labels(self.service, version).set(self.profile(version).auc * factor)

    def _champion_loop(self) -> None:
        while not self._stop.wait(CHAMPION_POLL_SECONDS):
            self._poll_champion()
            self._update_quality(advance=False)

    def _traffic_loop(self) -> None:
        owed = 0.0
        last = time.monotonic()
        while not self._stop.wait(TICK_SECONDS):
            now = time.monotonic()
            owed += self.rps * (now - last)
            last = now
            batch = int(owed)
            owed -= batch
            served = self.version
            version = served or UNKNOWN_VERSION
            profile = self.profile(served)
            for _ in range(batch):
                self._observe(version, profile)
            self._update_quality(advance=True)

    def _observe(self, version: str, profile: VersionProfile) -> None:
        jitter = _JITTER[self._requests % len(_JITTER)]
        self._requests += 1
        self.latency.labels(self.service, version).observe(profile.latency_seconds * jitter)
        # Error-diffusion: exactly error_rate of the requests fail, evenly spread, no randomness.
        self._error_budget += profile.error_rate
        code = "200"
        if self._error_budget >= 1.0:
            self._error_budget -= 1.0
            code = "500"
        self.requests.labels(self.service, version, code).inc()


def seed_registry(client: MlflowClient, model: str = "recommender", versions: int = 2) -> list[str]:
    """Create registered model `model` with `versions` versions, each backed by a real (empty) run.

    Returns the version strings in creation order ("1", "2", ...). No artifacts are logged: the registry
    only needs the run and the source URI. Called by tests and the demo on a fresh MLflow server.
    """
    experiment_name = f"{model}-training"
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(experiment_name)
    client.create_registered_model(model)
    created: list[str] = []
    for index in range(1, versions + 1):
        run = client.create_run(experiment_id, run_name=f"{model}-train-{index}")
        run_id = run.info.run_id
        client.set_terminated(run_id)
        mv = client.create_model_version(model, source=f"runs:/{run_id}/model", run_id=run_id)
        created.append(str(mv.version))
    return created
