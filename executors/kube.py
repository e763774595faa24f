"""Kubernetes access shared by the executors that act on a cluster (argo_rollouts, feature_flag, argocd).

`Kube` wraps a `kubernetes.client.ApiClient` (Clients.kube), or loads one on first use from KUBECONFIG or the
in-cluster service account. It reads and writes objects as plain JSON dicts through the real client's typed
APIs, retries reads and idempotent writes a bounded number of times with backoff, and is the one place where
kubernetes ApiException and urllib3 errors become ExecutorError (404/403/422 and other 4xx: permanent, with a
message naming the resource) or TemporaryExecutorError (409, 429, 5xx, timeouts, connection errors).
`wait_until` polls a read until a check passes, for the read-back after a change. `Seconds` is the duration
type of the executors' config fields (`2s`, `5m`, `500ms`, or bare seconds).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator

from executors.base import ExecutorError, TemporaryExecutorError

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read seconds for every API call
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(value: Any) -> float:
    """`2s`, `5m`, `1m30s`, `500ms` or a bare number of seconds, as float seconds."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected a duration like 30s, 5m or 500ms, got {value!r}")
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    elif re.fullmatch(r"(\d+(\.\d+)?(ms|s|m|h))+", text):
        seconds = sum(float(n) * _UNITS[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)(ms|s|m|h)", text))
    else:
        raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 5m, 1m30s, 500ms or a number of seconds")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"invalid duration {value!r}: must be more than zero")
    return seconds


Seconds = Annotated[float, BeforeValidator(_seconds)]


class NotFoundError(ExecutorError):
    """The API server answered 404 for the object (or the subresource) asked for."""


@dataclass(frozen=True)
class Ref:
    """One namespaced object: `plural` picks the API (rollouts, applications, deployments, configmaps)."""

    plural: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{_KINDS[self.plural][2]} {self.namespace}/{self.name}"


# plural -> (group, version, human kind) for the resources the executors touch
_KINDS = {
    "rollouts": ("argoproj.io", "v1alpha1", "Rollout"),
    "applications": ("argoproj.io", "v1alpha1", "Application"),
    "deployments": ("apps", "v1", "Deployment"),
    "replicasets": ("apps", "v1", "ReplicaSet"),
    "configmaps": ("", "v1", "ConfigMap"),
}


def load_api_client() -> Any:
    """An ApiClient from $KUBECONFIG (or ~/.kube/config), else from the in-cluster service account."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    kubeconfig = os.environ.get("KUBECONFIG")
    try:
        if kubeconfig:
            return config.new_client_from_config(config_file=kubeconfig.split(os.pathsep)[0])
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            from kubernetes import client

            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        return config.new_client_from_config()
    except (ConfigException, OSError) as exc:  # no usable credentials: say where the bot looked
        raise ExecutorError(
            f"no Kubernetes credentials: set KUBECONFIG or run in a pod with a service account ({exc})"
        ) from exc


def _status_message(exc: Any) -> str:
    """The `message` of the Status object the API server sent, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):  # no JSON Status in the body (a proxy's HTML page, an empty body)
        return str(exc.reason or "no details")
    return str(body.get("message") or exc.reason) if isinstance(body, dict) else str(exc.reason)


@contextmanager
def kube_errors(what: str) -> Iterator[None]:
    """The one place Kubernetes client and transport errors become the project's errors."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        # 409 (conflict), 429 and 5xx may pass on a later try; 404, 403, 422 and other 4xx will not.
        status = int(exc.status or 0)
        detail = _status_message(exc)
        if status in (409, 429) or status >= 500:
            raise TemporaryExecutorError(f"{what}: Kubernetes API answered {status}: {detail}") from exc
        hint = {404: "not found", 403: "forbidden: the bot's service account lacks RBAC permission",
                401: "unauthorized: the Kubernetes credentials were rejected",
                422: "rejected as invalid"}.get(status, "refused")
        cls = NotFoundError if status == 404 else ExecutorError
        raise cls(f"{what}: {hint} ({status}): {detail}") from exc
    except (HTTPError, OSError) as exc:
        # Connection refused / reset, read timeouts, urllib3 giving up: the API server may be back soon.
        raise TemporaryExecutorError(f"{what}: cannot reach the Kubernetes API: {exc}") from exc


class Kube:
    """Plain-JSON reads and writes on the Kubernetes API with error mapping and bounded retries."""

    def __init__(self, api_client: Any = None, *, attempts: int = 4, backoff: float = 0.25,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._api_client = api_client
        self.attempts = attempts
        self.backoff = backoff
        self.sleep = sleep

    @property
    def api_client(self) -> Any:
        if self._api_client is None:
            self._api_client = load_api_client()
        return self._api_client

    def _call(self, what: str, request: Callable[[], Any]) -> Any:
        """Run `request` (returns a raw urllib3 response) with retries on temporary errors; JSON back."""
        for attempt in range(1, self.attempts + 1):
            try:
                with kube_errors(what):
                    response = request()
                    return json.loads(response.data) if response.data else {}
            except TemporaryExecutorError as exc:
                if attempt == self.attempts:
                    raise TemporaryExecutorError(f"{exc} (gave up after {attempt} attempts)") from exc
                self.sleep(self.backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # the loop returns or raises

    def get(self, ref: Ref) -> Obj:
        from kubernetes import client

        api = self.api_client
        opts: dict[str, Any] = {"_preload_content": False, "_request_timeout": REQUEST_TIMEOUT}
        group, version, _ = _KINDS[ref.plural]
        if ref.plural == "deployments":
            return self._call(f"reading {ref}", lambda: client.AppsV1Api(api).read_namespaced_deployment(
                ref.name, ref.namespace, **opts))
        if ref.plural == "configmaps":
            return self._call(f"reading {ref}", lambda: client.CoreV1Api(api).read_namespaced_config_map(
                ref.name, ref.namespace, **opts))
        return self._call(f"reading {ref}", lambda: client.CustomObjectsApi(api).get_namespaced_custom_object(
            group, version, ref.namespace, ref.plural, ref.name, **opts))

    def patch(self, ref: Ref, body: Any, content_type: str, *, status: bool = False) -> Obj:
        """PATCH the object (or its status subresource) and return it as the API server answered.

        Only for idempotent patches: a retry after a lost answer must leave the same result.
        """
        from kubernetes import client

        api = self.api_client
        opts: dict[str, Any] = {"_preload_content": False, "_request_timeout": REQUEST_TIMEOUT,
                                "_content_type": content_type}
        group, version, _ = _KINDS[ref.plural]
        what = f"patching {ref}{' status' if status else ''}"
        if ref.plural == "deployments":
            return self._call(what, lambda: client.AppsV1Api(api).patch_namespaced_deployment(
                ref.name, ref.namespace, body, **opts))
        if ref.plural == "configmaps":
            return self._call(what, lambda: client.CoreV1Api(api).patch_namespaced_config_map(
                ref.name, ref.namespace, body, **opts))
        custom = client.CustomObjectsApi(api)
        patch = custom.patch_namespaced_custom_object_status if status else custom.patch_namespaced_custom_object
        return self._call(what, lambda: patch(group, version, ref.namespace, ref.plural, ref.name, body, **opts))

    def list_replicasets(self, namespace: str, label_selector: str) -> list[Obj]:
        from kubernetes import client

        api = self.api_client
        answer = self._call(
            f"listing ReplicaSets in {namespace} ({label_selector})",
            lambda: client.AppsV1Api(api).list_namespaced_replica_set(
                namespace, label_selector=label_selector, _preload_content=False, _request_timeout=REQUEST_TIMEOUT))
        return list(answer.get("items") or [])

    def wait_until(self, what: str, ref: Ref, check: Callable[[Obj], str | None], *, timeout: float,
                   clock: Callable[[], float] = time.monotonic) -> Obj:
        """Read `ref` until check(obj) returns None (done); it returns why not yet, which a timeout reports.

        Raises ExecutorError after `timeout` seconds naming the last reason; a temporary read error is retried
        within the same deadline.
        """
        deadline = clock() + timeout
        interval = min(2.0, max(0.05, timeout / 40))
        reason = "not read yet"
        while True:
            try:
                obj = self.get(ref)
                reason_now = check(obj)
                if reason_now is None:
                    return obj
                reason = reason_now
            except TemporaryExecutorError as exc:  # the read failed for now; keep polling until the deadline
                reason = str(exc)
            if clock() >= deadline:
                raise ExecutorError(f"{what}: not confirmed within {timeout:g}s; last seen on {ref}: {reason}")
            self.sleep(interval)


def match_labels_selector(selector: Obj | None, what: str) -> str:
    """`a=b,c=d` from a LabelSelector with matchLabels only (what the executors need); else ExecutorError."""
    selector = selector or {}
    labels = selector.get("matchLabels") or {}
    if selector.get("matchExpressions") or not labels:
        raise ExecutorError(f"{what}: only a selector with matchLabels (and no matchExpressions) is supported")
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
