"""Fake Kubernetes API server over real HTTP, used by the executor tests, the demo and story tests.

`FakeKube` answers the Kubernetes REST wire format for the resources the rollback executors touch: Argo
Rollouts (`/apis/argoproj.io/v1alpha1/namespaces/{ns}/rollouts/{name}` and its `/status` subresource),
ReplicaSets (list with labelSelector), Deployments, ConfigMaps and Argo CD Applications. GET, PATCH (merge,
JSON and strategic-merge patch content types) and PUT (409 on a stale resourceVersion) behave like the API
server, errors are `Status` objects shaped like the real ones, and every request is recorded (method, path,
query, content type, parsed body) so tests assert exactly what a client sent.

The real `kubernetes` client talks to it through the kubeconfig that `write_kubeconfig()` writes (server
http://127.0.0.1:PORT, a bearer token). Controllers are simulated just enough, `controller_delay` seconds
after a write (run lazily on the next request): a Rollout abort sends all traffic to the stable ReplicaSet
and leaves the Rollout Degraded (RolloutAborted); a template equal to the stable ReplicaSet's is Healthy at
once; any other new template is Progressing until `status.promoteFull`; a Deployment template change rolls
out; an Application `operation` becomes an operationState (Succeeded unless told otherwise). `fail()` makes
the next matching requests answer an error Status; `hold_controllers()` stops all reconciling.

Strategic merge patches are applied as JSON merge patches (maps merge, lists are replaced): enough for the
annotation patch of `kubectl rollout restart`, not for `$patch` directives.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from sandbox.http import LoopbackServer

log = logging.getLogger(__name__)

Obj = dict[str, Any]
HASH_LABEL = "rollouts-pod-template-hash"
REVISION = "rollout.argoproj.io/revision"
MERGE, JSON_PATCH, STRATEGIC = ("application/merge-patch+json", "application/json-patch+json",
                                "application/strategic-merge-patch+json")


@dataclass(frozen=True)
class Kind:
    api: str  # "argoproj.io/v1alpha1" or "v1"
    plural: str
    kind: str
    status_subresource: bool

    @property
    def group(self) -> str:
        return self.api.split("/")[0] if "/" in self.api else ""

    @property
    def resource(self) -> str:
        """`rollouts.argoproj.io`, `configmaps`: how the API server names a resource in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


KINDS = {k.plural: k for k in (
    Kind("argoproj.io/v1alpha1", "rollouts", "Rollout", True),
    Kind("argoproj.io/v1alpha1", "applications", "Application", False),
    Kind("apps/v1", "replicasets", "ReplicaSet", True),
    Kind("apps/v1", "deployments", "Deployment", True),
    Kind("v1", "configmaps", "ConfigMap", False),
)}
_PATH = re.compile(r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))/namespaces/(?P<ns>[^/]+)/"
                   r"(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>status))?$")
_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
            415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable", 504: "Timeout"}


@dataclass(frozen=True)
class Request:
    """One request the fake received: method, path, query params, Content-Type, parsed JSON body."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    body: Any


class ApiError(Exception):
    """Answered as a Kubernetes `Status` object with this HTTP code."""

    def __init__(self, code: int, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details

    def status(self) -> Obj:
        body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "message": self.message, "reason": _REASONS.get(self.code, "Unknown"), "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


@dataclass
class _Failure:
    method: str
    path: re.Pattern[str]
    code: int
    left: int | None  # None = forever
    message: str | None


class FakeKube(LoopbackServer):
    """In-process HTTP server speaking the Kubernetes REST wire format, with seed and read helpers."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, token: str = "sandbox-kube-token",
                 controller_delay: float = 0.0) -> None:
        super().__init__(host, port)
        self.token = token
        self.controller_delay = controller_delay
        self._lock = threading.RLock()
        self.reset()

    @property
    def url(self) -> str:
        return self.base

    def write_kubeconfig(self, path: str | Path) -> Path:
        """Write a kubeconfig pointing at this server with a bearer token; returns the path."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "sandbox", "preferences": {},
            "clusters": [{"name": "sandbox", "cluster": {"server": self.url}}],
            "users": [{"name": "rollback-bot", "user": {"token": self.token}}],
            "contexts": [{"name": "sandbox", "context": {"cluster": "sandbox", "user": "rollback-bot",
                                                         "namespace": "default"}}],
        }
        target = Path(path)
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        return target

    def reset(self) -> None:
        """Forget objects, requests, pending failures and controller work; controllers run again."""
        with self._lock:
            self._objects: dict[tuple[str, str, str], Obj] = {}
            self._requests: list[Request] = []
            self._failures: list[_Failure] = []
            self._due: dict[tuple[str, str, str], float] = {}
            self._sync_results: dict[tuple[str, str], list[tuple[str, str]]] = {}
            self._held = False
            self._rv = 1000

    # ---- test controls and readers ---------------------------------------------------------------------
    def requests(self, method: str | None = None, path: str | None = None) -> list[Request]:
        """Requests received so far, oldest first; `path` is a regex searched in the request path."""
        with self._lock:
            return [r for r in self._requests
                    if method in (None, r.method) and (path is None or re.search(path, r.path))]

    def writes(self) -> list[Request]:
        """Only the requests that change something (PATCH, PUT, POST, DELETE)."""
        return [r for r in self.requests() if r.method != "GET"]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def clear_failures(self) -> None:
        """Drop every pending injected failure (the fault is fixed); objects and recorded requests stay."""
        with self._lock:
            self._failures.clear()

    def fail(self, method: str, path_regex: str, status: int, times: int | None = 1,
             message: str | None = None) -> None:
        """Answer the next `times` requests (None = all) matching method and path with an error Status."""
        with self._lock:
            self._failures.append(_Failure(method.upper(), re.compile(path_regex), status, times, message))

    @contextmanager
    def held_controllers(self) -> Iterator[None]:
        """While inside, no controller reconciles anything (writes are stored, status never follows)."""
        self.hold_controllers(True)
        try:
            yield
        finally:
            self.hold_controllers(False)

    def hold_controllers(self, held: bool = True) -> None:
        with self._lock:
            self._held = held

    def next_sync(self, namespace: str, app: str, phase: str, message: str = "") -> None:
        """Make the next sync operation of an Application end in `phase` (Failed, Error) with `message`."""
        with self._lock:
            self._sync_results.setdefault((namespace, app), []).append((phase, message))

    def get(self, plural: str, namespace: str, name: str) -> Obj:
        """A deep copy of a stored object (after running due controller work); KeyError when absent."""
        with self._lock:
            self._reconcile_due()
            return copy.deepcopy(self._objects[(plural, namespace, name)])

    def objects(self, plural: str, namespace: str) -> list[Obj]:
        with self._lock:
            self._reconcile_due()
            return [copy.deepcopy(o) for (p, ns, _), o in sorted(self._objects.items()) if (p, ns) == (plural, namespace)]

    def put_object(self, plural: str, obj: Obj) -> Obj:
        """Store `obj` as is (metadata filled in), without controllers: for seeding odd states."""
        kind = KINDS[plural]
        with self._lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta.setdefault("namespace", "default")
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("generation", 1)
            meta.setdefault("creationTimestamp", _now())
            meta["resourceVersion"] = self._next_rv()
            obj["apiVersion"], obj["kind"] = kind.api, kind.kind
            self._objects[(plural, meta["namespace"], meta["name"])] = obj
            return copy.deepcopy(obj)

    # ---- seeds -----------------------------------------------------------------------------------------
    def seed_rollout(self, namespace: str, name: str, images: list[str], *, stable: int, desired: int | None = None,
                     canary_weight: int = 20, replicas: int = 3, aborted: bool = False) -> Obj:
        """A canary Rollout with one ReplicaSet per image (revision i+1 runs images[i]).

        `stable` is the stable revision; `desired` (default: the last) is the one in spec.template. When
        they differ the canary is in progress at `canary_weight`% (or aborted, with all traffic on stable).
        """
        desired = desired or len(images)
        labels = {"app": name}
        uid = str(uuid.uuid4())
        templates = [_template(name, image) for image in images]
        hashes = [_pod_hash(t) for t in templates]
        with self._lock:
            for revision, (template, pod_hash) in enumerate(zip(templates, hashes, strict=True), start=1):
                rs_template = copy.deepcopy(template)
                rs_template["metadata"]["labels"][HASH_LABEL] = pod_hash
                self.put_object("replicasets", {
                    "metadata": {"name": f"{name}-{pod_hash}", "namespace": namespace,
                                 "labels": {**labels, HASH_LABEL: pod_hash},
                                 "annotations": {REVISION: str(revision)},
                                 "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
                                                      "name": name, "uid": uid, "controller": True,
                                                      "blockOwnerDeletion": True}]},
                    "spec": {"replicas": replicas if revision in (stable, desired) else 0,
                             "selector": {"matchLabels": {**labels, HASH_LABEL: pod_hash}}, "template": rs_template},
                    "status": {"replicas": 0, "observedGeneration": 1},
                })
            rollout = {
                "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": 1,
                             "annotations": {REVISION: str(desired)}},
                "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                         "template": copy.deepcopy(templates[desired - 1]),
                         "strategy": {"canary": {"steps": [{"setWeight": canary_weight}, {"pause": {}},
                                                           {"setWeight": 50}, {"pause": {"duration": "5m"}}]}}},
                "status": {"stableRS": hashes[stable - 1], "currentPodHash": hashes[desired - 1],
                           "observedGeneration": "1", "currentStepIndex": 1 if desired != stable else 4},
            }
            stored = self.put_object("rollouts", rollout)
            st = stored["status"]
            if desired == stable:
                _rollout_healthy(st)
            elif aborted:
                st["abort"] = True
                _rollout_aborted(st, desired)
            else:
                _rollout_weights(st, canary_weight)
                st.update(phase="Progressing", message="more replicas need to be updated")
            self._objects[("rollouts", namespace, name)] = stored
            return copy.deepcopy(stored)

    def seed_deployment(self, namespace: str, name: str, image: str, *, replicas: int = 3) -> Obj:
        """A Deployment that has finished rolling out."""
        self.put_object("deployments", {
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": _template(name, image), "progressDeadlineSeconds": 600},
        })
        with self._lock:
            _deployment_done(self._objects[("deployments", namespace, name)])
            return self.get("deployments", namespace, name)

    def seed_configmap(self, namespace: str, name: str, data: dict[str, str]) -> Obj:
        return self.put_object("configmaps", {"metadata": {"name": name, "namespace": namespace}, "data": dict(data)})

    def seed_application(self, namespace: str, name: str, *, repo: str = "https://git.example.com/deploy.git",
                         path: str = "model-svc", target_revision: str = "main", dest_namespace: str = "prod",
                         automated: bool = True, synced_revision: str = "0" * 40) -> Obj:
        """An Argo CD Application synced at `synced_revision`, with an automated sync policy by default."""
        spec: Obj = {"project": "default",
                     "source": {"repoURL": repo, "path": path, "targetRevision": target_revision},
                     "destination": {"server": "https://kubernetes.default.svc", "namespace": dest_namespace}}
        if automated:
            spec["syncPolicy"] = {"automated": {"prune": True, "selfHeal": True}, "syncOptions": ["CreateNamespace=true"]}
        return self.put_object("applications", {
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
            "status": {"sync": {"status": "Synced", "revision": synced_revision},
                       "health": {"status": "Healthy"}},
        })

    # ---- request handling ------------------------------------------------------------------------------
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def handle(self, method: str, raw_path: str, headers: dict[str, str], raw: bytes) -> tuple[int, Obj]:
        """Answer one request: (HTTP status, JSON body). Records it first, then checks injected failures."""
        split = urlsplit(raw_path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        content_type = next((v.split(";")[0].strip() for k, v in headers.items() if k.lower() == "content-type"), None)
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        with self._lock:
            try:
                body = json.loads(raw) if raw else None
            except (ValueError, UnicodeDecodeError) as exc:  # record the raw text and answer 400 like the API server
                self._requests.append(Request(method, split.path, query, content_type, raw.decode("utf-8", "replace")))
                return 400, ApiError(400, f"invalid JSON body: {exc}").status()
            self._requests.append(Request(method, split.path, query, content_type, body))
            try:
                if auth != f"Bearer {self.token}":
                    raise ApiError(401, "Unauthorized")
                self._injected(method, split.path)
                self._reconcile_due()
                return 200, self._route(method, split.path, query, content_type, body)
            except ApiError as exc:
                return exc.code, exc.status()

    def _injected(self, method: str, path: str) -> None:
        for failure in self._failures:
            if failure.method == method and failure.path.search(path) and failure.left != 0:
                if failure.left is not None:
                    failure.left -= 1
                message = failure.message or {
                    409: "Operation cannot be fulfilled: the object has been modified; please apply your changes "
                         "to the latest version and try again",
                    500: "Internal error occurred: injected by the test",
                }.get(failure.code, f"injected {failure.code}")
                raise ApiError(failure.code, message)

    def _route(self, method: str, path: str, query: dict[str, str], content_type: str | None, body: Any) -> Obj:
        match = _PATH.match(path)
        kind = KINDS.get(match["plural"]) if match else None
        api = (match["core"] or f"{match['group']}/{match['version']}") if match else None
        if match is None or kind is None or api != kind.api or (match["sub"] and not kind.status_subresource):
            raise ApiError(404, "the server could not find the requested resource")
        ns, name, sub = match["ns"], match["name"], match["sub"]
        if name is None:
            if method != "GET":
                raise ApiError(405, f"method {method} not supported on a collection here")
            return self._list(kind, ns, query.get("labelSelector", ""))
        key = (kind.plural, ns, name)
        current = self._objects.get(key)
        if current is None:
            raise ApiError(404, f'{kind.resource} "{name}" not found',
                           {"name": name, "group": kind.group, "kind": kind.plural})
        if method == "GET":
            return copy.deepcopy(current)
        if method == "PATCH":
            updated = _patched(current, body, content_type)
        elif method == "PUT":
            updated = self._replaced(kind, current, body)
        else:
            raise ApiError(405, f"method {method} not supported")
        return self._store(kind, key, current, updated, status_only=sub == "status")

    def _list(self, kind: Kind, ns: str, selector: str) -> Obj:
        wanted = _selector(selector)
        items = [copy.deepcopy(o) for (p, n, _), o in sorted(self._objects.items())
                 if p == kind.plural and n == ns and _matches(o["metadata"].get("labels") or {}, wanted)]
        for item in items:  # list items come without kind/apiVersion, like the real API
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {"kind": f"{kind.kind}List", "apiVersion": kind.api, "metadata": {"resourceVersion": str(self._rv)},
                "items": items}

    def _replaced(self, kind: Kind, current: Obj, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "the body of a PUT must be an object")
        meta = body.get("metadata") or {}
        name = current["metadata"]["name"]
        if meta.get("name") != name:
            raise ApiError(400, f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})")
        sent_rv = meta.get("resourceVersion")
        if sent_rv is not None and sent_rv != current["metadata"]["resourceVersion"]:
            raise ApiError(409, f'Operation cannot be fulfilled on {kind.resource} "{name}": the object has been '
                                "modified; please apply your changes to the latest version and try again",
                           {"name": name, "group": kind.group, "kind": kind.plural})
        return copy.deepcopy(body)

    def _store(self, kind: Kind, key: tuple[str, str, str], current: Obj, updated: Obj, *, status_only: bool) -> Obj:
        """Keep what the request may not change (identity; status vs the rest), bump versions, queue controllers."""
        if not isinstance(updated, dict):
            raise ApiError(422, f"{kind.kind} must be an object")
        if kind.status_subresource:
            if status_only:
                updated = {**copy.deepcopy(current), "status": updated.get("status", {})}
            else:
                updated["status"] = copy.deepcopy(current.get("status", {}))
        meta = updated.setdefault("metadata", {})
        old_meta = current["metadata"]
        for field in ("name", "namespace", "uid", "creationTimestamp", "generation"):
            meta[field] = old_meta[field]
        updated["apiVersion"], updated["kind"] = kind.api, kind.kind
        ignored = ("metadata", "status") if kind.status_subresource else ("metadata",)
        if any(updated.get(k) != current.get(k) for k in set(updated) | set(current) if k not in ignored):
            meta["generation"] = old_meta["generation"] + 1
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if updated == current:
            return copy.deepcopy(current)  # a no-op write changes nothing, not even the resourceVersion
        meta["resourceVersion"] = self._next_rv()
        self._objects[key] = updated
        if kind.plural in ("rollouts", "deployments", "applications"):
            self._due.setdefault(key, time.monotonic() + self.controller_delay)
        return copy.deepcopy(updated)

    # ---- controllers -----------------------------------------------------------------------------------
    def _reconcile_due(self) -> None:
        if self._held:
            return
        now = time.monotonic()
        for key, due in list(self._due.items()):
            if due <= now and key in self._objects:
                del self._due[key]
                obj = self._objects[key]
                {"rollouts": self._reconcile_rollout, "deployments": _deployment_done,
                 "applications": self._reconcile_application}[key[0]](obj)
                obj["metadata"]["resourceVersion"] = self._next_rv()

    def _replicasets(self, rollout: Obj) -> list[Obj]:
        uid = rollout["metadata"]["uid"]
        return [o for (p, ns, _), o in self._objects.items()
                if p == "replicasets" and ns == rollout["metadata"]["namespace"]
                and any(ref.get("uid") == uid and ref.get("controller") for ref in o["metadata"].get("ownerReferences", []))]

    def _reconcile_rollout(self, ro: Obj) -> None:
        meta, spec, st = ro["metadata"], ro["spec"], ro.setdefault("status", {})
        template = copy.deepcopy(spec["template"])
        template.setdefault("metadata", {}).setdefault("labels", {}).pop(HASH_LABEL, None)
        pod_hash = _pod_hash(template)
        rss = self._replicasets(ro)
        newest = max((int(rs["metadata"]["annotations"].get(REVISION, "0")) for rs in rss), default=0)
        rs = next((r for r in rss if r["metadata"]["labels"].get(HASH_LABEL) == pod_hash), None)
        if rs is None:
            template["metadata"]["labels"][HASH_LABEL] = pod_hash
            rs = self.put_object("replicasets", {
                "metadata": {"name": f"{meta['name']}-{pod_hash}", "namespace": meta["namespace"],
                             "labels": {**spec["selector"]["matchLabels"], HASH_LABEL: pod_hash},
                             "annotations": {REVISION: str(newest + 1)},
                             "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
                                                  "name": meta["name"], "uid": meta["uid"], "controller": True}]},
                "spec": {"replicas": spec.get("replicas", 1), "template": template,
                         "selector": {"matchLabels": {**spec["selector"]["matchLabels"], HASH_LABEL: pod_hash}}},
            })
        elif pod_hash != st.get("currentPodHash") and int(rs["metadata"]["annotations"].get(REVISION, "0")) != newest:
            stored = self._objects[("replicasets", meta["namespace"], rs["metadata"]["name"])]
            stored["metadata"]["annotations"][REVISION] = str(newest + 1)  # a revived ReplicaSet gets the next number
            stored["metadata"]["resourceVersion"] = self._next_rv()
            rs = stored
        revision = int(rs["metadata"]["annotations"][REVISION])
        meta.setdefault("annotations", {})[REVISION] = str(revision)
        if pod_hash != st.get("currentPodHash"):  # a new desired version: start over, forget abort
            st.update(currentPodHash=pod_hash, currentStepIndex=0, abort=False, promoteFull=False)
            st.pop("abortedAt", None)
        steps = spec.get("strategy", {}).get("canary", {}).get("steps", [])
        if pod_hash == st.get("stableRS"):
            _rollout_healthy(st, len(steps))
        elif st.get("abort"):
            _rollout_aborted(st, revision)
        elif st.get("promoteFull"):
            st["stableRS"] = pod_hash
            _rollout_healthy(st, len(steps))
        else:
            weight = next((s["setWeight"] for s in steps if "setWeight" in s), 100)
            _rollout_weights(st, weight)
            st.update(phase="Progressing", message="more replicas need to be updated", conditions=[
                {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                 "message": f"Rollout is progressing to revision {revision}"}])
        st["observedGeneration"] = str(meta["generation"])

    def _reconcile_application(self, app: Obj) -> None:
        operation = app.pop("operation", None)
        if operation is None:
            return
        meta = app["metadata"]
        queued = self._sync_results.get((meta["namespace"], meta["name"]))
        phase, message = queued.pop(0) if queued else ("Succeeded", "")
        source = app["spec"].get("source", {})
        revision = (operation.get("sync") or {}).get("revision") or source.get("targetRevision", "HEAD")
        started = _now()
        status = app.setdefault("status", {})
        status["operationState"] = {
            "operation": operation, "phase": phase, "startedAt": started, "finishedAt": _now(),
            "message": message or ("successfully synced (all tasks run)" if phase == "Succeeded" else "sync failed"),
            "syncResult": {"revision": revision, "source": copy.deepcopy(source), "resources": []},
        }
        if phase == "Succeeded":
            status["sync"] = {"status": "Synced", "revision": revision,
                              "comparedTo": {"source": copy.deepcopy(source),
                                             "destination": copy.deepcopy(app["spec"].get("destination", {}))}}
            status["health"] = {"status": "Healthy"}
        status["reconciledAt"] = _now()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _template(name: str, image: str) -> Obj:
    return {"metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": name, "image": image, "ports": [{"containerPort": 8080}]}]}}


def _pod_hash(template: Obj) -> str:
    """A stable short hash of a pod template without its hash label (the controllers' pod-template-hash)."""
    clean = copy.deepcopy(template)
    (clean.get("metadata") or {}).get("labels", {}).pop(HASH_LABEL, None)
    digest = hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()
    return "".join("bcdfghjklmnpqrstvwxz2456789"[int(digest[i:i + 2], 16) % 27] for i in range(0, 20, 2))


def _rollout_weights(st: Obj, canary: int) -> None:
    st["canary"] = {"weights": {"canary": {"podTemplateHash": st.get("currentPodHash"), "weight": canary},
                                "stable": {"podTemplateHash": st.get("stableRS"), "weight": 100 - canary}}}


def _rollout_healthy(st: Obj, steps: int = 4) -> None:
    st.update(currentPodHash=st.get("stableRS"), phase="Healthy", message="", abort=False, promoteFull=False,
              currentStepIndex=steps, conditions=[
                  {"type": "Available", "status": "True", "reason": "AvailableReason",
                   "message": "Rollout has minimum availability"},
                  {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                   "message": "Rollout has completed rolling update"}])
    st.pop("abortedAt", None)
    _rollout_weights(st, 0)


def _rollout_aborted(st: Obj, revision: int) -> None:
    message = f"Rollout aborted update to revision {revision}"
    st.update(phase="Degraded", message=f"RolloutAborted: {message}", currentStepIndex=0,
              conditions=[{"type": "Progressing", "status": "False", "reason": "RolloutAborted", "message": message}])
    st.setdefault("abortedAt", _now())
    _rollout_weights(st, 0)


def _deployment_done(dep: Obj) -> None:
    replicas = dep["spec"].get("replicas", 1)
    dep["status"] = {
        "observedGeneration": dep["metadata"]["generation"], "replicas": replicas, "updatedReplicas": replicas,
        "readyReplicas": replicas, "availableReplicas": replicas,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                       {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
    }


def _selector(text: str) -> list[tuple[str, str, str]]:
    """`a=b,c!=d,e`: (key, op, value) terms; anything else is a 400 like the API server's."""
    terms = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        found = re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)", part) or re.fullmatch(r"(!?)([\w./-]+)", part)
        if found is None:
            raise ApiError(400, f"unable to parse requirement: {part!r}")
        if len(found.groups()) == 3:
            key, op, value = found.groups()
            terms.append((key, "!=" if op == "!=" else "=", value))
        else:
            bang, key = found.groups()
            terms.append((key, "!exists" if bang else "exists", ""))
    return terms


def _matches(labels: dict[str, str], terms: list[tuple[str, str, str]]) -> bool:
    checks = {"=": lambda k, v: labels.get(k) == v, "!=": lambda k, v: labels.get(k) != v,
              "exists": lambda k, v: k in labels, "!exists": lambda k, v: k not in labels}
    return all(checks[op](key, value) for key, op, value in terms)


def _patched(current: Obj, body: Any, content_type: str | None) -> Obj:
    if content_type in (MERGE, STRATEGIC):
        if not isinstance(body, dict):
            raise ApiError(400, f"a {content_type} body must be a JSON object")
        return _merge(copy.deepcopy(current), body)
    if content_type == JSON_PATCH:
        if not isinstance(body, list):
            raise ApiError(400, "a JSON Patch body must be a list of operations")
        return _json_patch(copy.deepcopy(current), body)
    raise ApiError(415, f"the body of the request was in an unknown format - accepted media types include: "
                        f"{JSON_PATCH}, {MERGE}, {STRATEGIC}, application/apply-patch+yaml")


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _json_patch(doc: Obj, ops: list[Any]) -> Obj:
    """RFC 6902 add / replace / remove / test; a failing operation is a 422 like the API server's."""
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError(400, f"invalid JSON Patch operation: {op!r}")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in str(op["path"]).split("/")[1:]]
        if not parts:
            raise ApiError(422, "JSON Patch on the whole document is not supported")
        parent: Any = doc
        for part in parts[:-1]:
            parent = _step(parent, part, op)
        last = parts[-1]
        kind = op["op"]
        exists = (last in parent) if isinstance(parent, dict) else (last.isdigit() and int(last) < len(parent))
        if kind in ("replace", "remove", "test") and not exists:
            raise ApiError(422, f"jsonpatch {kind} operation does not apply: doc is missing path: {op['path']}")
        if kind == "test":
            if _step(parent, last, op) != op.get("value"):
                raise ApiError(422, f"testing value {op['path']} failed")
        elif kind == "remove":
            del parent[last if isinstance(parent, dict) else int(last)]
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                parent[index:index + (kind == "replace")] = [copy.deepcopy(op.get("value"))]
            else:
                parent[last] = copy.deepcopy(op.get("value"))
        else:
            raise ApiError(422, f"unsupported JSON Patch operation {kind!r}")
    return doc


def _step(node: Any, part: str, op: Obj) -> Any:
    try:
        return node[int(part)] if isinstance(node, list) else node[part]
    except (KeyError, IndexError, ValueError, TypeError) as exc:  # a path through nothing: the API server's 422
        raise ApiError(422, f"jsonpatch {op['op']} operation does not apply: doc is missing path: {op['path']}") from exc


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKube  # set on the per-server subclass made in LoopbackServer.start()

    def _serve(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        code, body = self.fake.handle(self.command, self.path, dict(self.headers.items()), raw)
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code == 429:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = do_PUT = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fake kube: " + format, *args)


FakeKube.handler = _Handler
