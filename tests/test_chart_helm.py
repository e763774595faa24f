"""The Helm chart deploy/helm/rollback-bot, linted and installed by the real Helm (v4, helm-sdkpy) into a fake API.

helm-sdkpy needs Python >= 3.12, so `make setup` builds .venv/helm-py312 from pyenv's python3.12 and these tests
run tests/helm_sdk_env.py there as a subprocess; without that virtualenv every test here is skipped with the reason.
helm-sdkpy offers no client-only rendering (no dry run, no `template`), so the chart is rendered by a real
`helm install` against `HelmKube` below: a Kubernetes API on 127.0.0.1 just wide enough for Helm (legacy discovery,
generic namespaced create/get/list/update/patch/delete, which also holds Helm's release Secrets). Every object the
release renders is validated offline by kubernetes-validate (Kubernetes 1.37 schemas, strict) in that virtualenv.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from sandbox.http import LoopbackServer

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "rollback-bot"
HELM_PYTHON = ROOT / ".venv" / "helm-py312" / "bin" / "python"
RUNNER = Path(__file__).with_name("helm_sdk_env.py")
NAMESPACE = "rollback"
POSTGRES = {"replicas": 3, "database": {"secretKey": "DATABASE_URL"}}

pytestmark = pytest.mark.skipif(
    not HELM_PYTHON.exists(),
    reason=f"no {HELM_PYTHON.relative_to(ROOT)}: `make setup` builds it from python3.12 (helm-sdkpy needs >= 3.12); "
           "this machine has no python3.12")

Obj = dict[str, Any]
# (group/version, plural, kind): what the chart renders, plus Helm's own release Secrets.
RESOURCES = [
    ("v1", "configmaps", "ConfigMap"), ("v1", "secrets", "Secret"), ("v1", "services", "Service"),
    ("v1", "serviceaccounts", "ServiceAccount"), ("v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
    ("v1", "pods", "Pod"), ("apps/v1", "deployments", "Deployment"), ("batch/v1", "jobs", "Job"),
    ("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget"), ("networking.k8s.io/v1", "ingresses", "Ingress"),
    ("rbac.authorization.k8s.io/v1", "roles", "Role"), ("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding"),
    ("monitoring.coreos.com/v1", "servicemonitors", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "prometheusrules", "PrometheusRule"),
]
_ITEM = re.compile(r"^/(?:api/v1|apis/(?P<group>[^/]+)/(?P<version>[^/]+))/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
                   r"(?:/(?P<name>[^/]+))?$")


class HelmKube(LoopbackServer):
    """A Kubernetes API for `helm install`: discovery in the legacy (non-aggregated) format and a generic store."""

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[tuple[str, str, str], Obj] = {}  # (plural, namespace, name) -> object
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._rv = 0

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.base}}],
            "users": [{"name": "fake", "user": {"token": "helm-test-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NAMESPACE}}]}))
        return path

    def created(self, kind: str) -> list[Obj]:
        return [o for o in self.objects.values() if o.get("kind") == kind]

    def handle(self, method: str, raw_path: str, body: Any) -> tuple[int, Obj]:
        url = urlsplit(raw_path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        with self._lock:
            self.requests.append((method, url.path))
            if method == "GET" and url.path in ("/version", "/version/"):
                return 200, {"major": "1", "minor": "37", "gitVersion": "v1.37.0", "platform": "linux/amd64"}
            if method == "GET" and url.path == "/api":
                return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": self.base.removeprefix("http://")}]}
            if method == "GET" and url.path == "/apis":
                return 200, _group_list()
            if method == "GET" and (url.path == "/api/v1" or url.path.startswith("/apis/")) and url.path.count("/") <= 3:
                listed = _resource_list(url.path.removeprefix("/api/").removeprefix("/apis/"))
                return (200, listed) if listed else (404, _status(404, f"the server could not find {url.path}"))
            m = _ITEM.match(url.path)
            if not m or m["plural"] not in {p for _, p, _ in RESOURCES}:
                return 404, _status(404, f"the server could not find the requested resource ({url.path})")
            return self._item(method, m["plural"], m["ns"], m["name"], query, body)

    def _item(self, method: str, plural: str, ns: str, name: str | None, query: dict[str, str], body: Any
              ) -> tuple[int, Obj]:
        key = (plural, ns, name or "")
        if method == "GET" and name is None:
            wanted = [t.split("=", 1) for t in (query.get("labelSelector") or "").split(",") if "=" in t]
            items = [o for (p, n, _), o in sorted(self.objects.items()) if p == plural and n == ns
                     and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in wanted)]
            return 200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": str(self._rv)},
                         "items": copy.deepcopy(items)}
        if method == "POST" and name is None:
            key = (plural, ns, body["metadata"]["name"])
            if key in self.objects:
                return 409, _status(409, f'{plural} "{key[2]}" already exists', "AlreadyExists")
            body["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp="2026-01-01T00:00:00Z")
            return 201, self._store(key, body)
        if key not in self.objects:
            return 404, _status(404, f'{plural} "{name}" not found', "NotFound")
        if method == "GET":
            return 200, copy.deepcopy(self.objects[key])
        if method == "PUT":
            body["metadata"]["uid"] = self.objects[key]["metadata"]["uid"]
            return 200, self._store(key, body)
        if method == "PATCH":
            return 200, self._store(key, _merge(copy.deepcopy(self.objects[key]), body))
        if method == "DELETE":
            self.objects.pop(key)
            return 200, _status(200, "deleted", "", "Success")
        return 405, _status(405, f"{method} is not supported here", "MethodNotAllowed")

    def _store(self, key: tuple[str, str, str], obj: Obj) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self.objects[key] = copy.deepcopy(obj)
        return obj


def _group_list() -> Obj:
    groups: dict[str, list[str]] = {}
    for gv, _, _ in RESOURCES:
        if "/" in gv:
            group, version = gv.split("/")
            groups.setdefault(group, [])
            if version not in groups[group]:
                groups[group].append(version)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
         "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}} for g, vs in groups.items()]}


def _resource_list(group_version: str) -> Obj | None:
    resources = [{"name": p, "singularName": k.lower(), "namespaced": True, "kind": k,
                  "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                 for gv, p, k in RESOURCES if gv == group_version]
    if not resources:
        return None
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def _status(code: int, message: str, reason: str = "", status: str = "Failure") -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": status, "message": message,
            "reason": reason, "code": code}


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return copy.deepcopy(patch)
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = _merge(target.get(k), v)
    return target


def _fields(data: bytes) -> list[tuple[int, Any]]:
    """Protocol-buffer wire format, one level: (field number, int or bytes) in order."""
    out: list[tuple[int, Any]] = []
    i = 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            out.append((number, varint()))
        elif wire == 2:
            size = varint()
            out.append((number, data[i:i + size]))
            i += size
        else:
            raise ValueError(f"protobuf wire type {wire} is not used by a v1.Secret")
    return out


def _secret_from_protobuf(raw: bytes) -> Obj:
    """A v1.Secret in Kubernetes' protobuf envelope (`k8s\\0` + runtime.Unknown), as the JSON object it stands for.

    client-go's typed client writes Helm's release Secrets this way (k8s.io/api/core/v1/generated.proto: Secret
    is 1 metadata, 2 data, 3 type, 5 immutable; ObjectMeta is 1 name, 3 namespace, 11 labels;
    runtime.Unknown is 1 typeMeta, 2 raw).
    """
    assert raw[:4] == b"k8s\x00", "not a Kubernetes protobuf envelope"
    unknown = dict(_fields(raw[4:]))
    meta: Obj = {"labels": {}}
    secret: Obj = {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": {}}
    for number, value in _fields(unknown[2]):
        if number == 1:
            for field, item in _fields(value):
                if field in (1, 3):
                    meta["name" if field == 1 else "namespace"] = item.decode()
                elif field == 11:
                    entry = dict(_fields(item))
                    meta["labels"][entry[1].decode()] = entry.get(2, b"").decode()
        elif number == 2:
            entry = dict(_fields(value))
            secret["data"][entry[1].decode()] = base64.b64encode(entry.get(2, b"")).decode()
        elif number == 3:
            secret["type"] = value.decode()
    return secret


class _Handler(BaseHTTPRequestHandler):
    fake: HelmKube

    def _serve(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if (self.headers.get("Content-Type") or "").startswith("application/vnd.kubernetes.protobuf"):
            body: Any = _secret_from_protobuf(raw)
        else:
            body = json.loads(raw) if raw else None
        code, out = self.fake.handle(self.command, self.path, body)
        data = json.dumps(out).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read HelmKube.requests instead
        pass


HelmKube.handler = _Handler


def _run(*args: str) -> Obj:
    done = subprocess.run([str(HELM_PYTHON), str(RUNNER), *args], capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode == 0, f"helm_sdk_env.py {args[0]} exited {done.returncode}: {done.stderr[-3000:]}"
    return json.loads(done.stdout)


def install(tmp_path: Path, values: Obj, release: str = "bot") -> tuple[Obj, HelmKube]:
    """`helm install RELEASE CHART` with these values into a fresh fake API; the runner's JSON and the fake."""
    values_file = tmp_path / f"{release}-values.json"
    values_file.write_text(json.dumps(values))
    with HelmKube() as kube:
        kubeconfig = kube.write_kubeconfig(tmp_path / f"{release}-kubeconfig")
        out = _run("install", str(CHART), "--kubeconfig", str(kubeconfig), "--namespace", NAMESPACE,
                   "--release", release, "--values", str(values_file))
    return out, kube


def of_kind(out: Obj, kind: str) -> list[Obj]:
    return [o for o in out["objects"] + out["hooks"] if o["kind"] == kind]


def _rbac_values() -> Obj | None:
    """`rollback-bot rbac --policy examples/policy.yaml --values` as values, or None while the command is missing."""
    done = subprocess.run([sys.executable, "-m", "bot.cli", "rbac", "--policy", str(ROOT / "examples" / "policy.yaml"),
                           "--values"], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    if done.returncode != 0 and "invalid choice" in done.stderr:
        return None
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


GIVEN_ROLES = [
    {"namespace": "prod", "rules": [
        {"apiGroups": ["argoproj.io"], "resources": ["rollouts"], "verbs": ["get", "patch"]},
        {"apiGroups": ["argoproj.io"], "resources": ["rollouts/status"], "verbs": ["patch"]},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list"]}]},
    {"namespace": "ml", "rules": [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["flags"], "verbs": ["get", "patch"]}]},
]


def test_helm_lint_passes_strict() -> None:
    out = _run("lint", str(CHART))
    assert out["charts"] == 1
    assert out["strict_ok"], out["messages"] + out["errors"]  # no error, no warning (helm lint --strict)


def test_default_install_renders_valid_objects_sqlite_and_non_root(tmp_path: Path) -> None:
    out, kube = install(tmp_path, {})
    assert out["ok"], out.get("error")
    assert out["invalid"] == [], out["invalid"]
    assert out["unvalidated"] == []  # no custom resources by default
    kinds = sorted(o["kind"] for o in out["objects"])
    assert kinds == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Service", "ServiceAccount"]
    # Helm really applied them: the fake holds exactly the rendered objects, and the release in Helm's storage (a
    # Secret, written as protobuf), deployed.
    release = [o for o in kube.objects.values() if o["kind"] == "Secret"]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in kube.objects.values() if o not in release) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in out["objects"])
    assert [{k: r["metadata"]["labels"][k] for k in ("name", "owner", "status")} for r in release] == [
        {"name": "bot", "owner": "helm", "status": "deployed"}]
    assert out["status"] == "deployed"

    (deploy,) = of_kind(out, "Deployment")
    spec = deploy["spec"]["template"]["spec"]
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"]["type"] == "Recreate"
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
    (bot,) = spec["containers"]
    assert bot["args"] == ["serve", "--policy", "/etc/rollback-bot/policy.yaml", "--port", "3000"]
    assert bot["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert bot[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    for container in spec["containers"] + spec["initContainers"]:
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts["/tmp"] == "tmp" and mounts["/data"] == "data"
        env = {e["name"]: e for e in container["env"]}
        assert env["DATABASE_URL"]["value"] == "sqlite:////data/rollback-bot.db"
        assert env["SLACK_BOT_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "rollback-bot", "key": "SLACK_BOT_TOKEN"}
        assert env["SLACK_APP_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert [c["args"] for c in spec["initContainers"]] == [["migrate"]]
    assert {m["mountPath"] for m in bot["volumeMounts"]} == {"/etc/rollback-bot", "/tmp", "/data"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["tmp"]
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "bot-rollback-bot-data"

    (config_map,) = of_kind(out, "ConfigMap")
    assert volumes["policy"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert "services:" in config_map["data"]["policy.yaml"]
    assert (deploy["spec"]["template"]["spec"]["serviceAccountName"]
            == of_kind(out, "ServiceAccount")[0]["metadata"]["name"])
    assert "placeholder" in out["notes"]


def test_replicas_without_database_url_fail_with_the_reason(tmp_path: Path) -> None:
    out, kube = install(tmp_path, {"replicas": 3})
    assert not out["ok"]
    assert "replicas=3 needs PostgreSQL: SQLite allows one replica only" in out["error"]
    assert "database.secretKey=DATABASE_URL" in out["error"]
    assert kube.objects == {}  # refused before anything was created


def test_three_replicas_on_postgres_with_everything_enabled(tmp_path: Path) -> None:
    rules = subprocess.run([sys.executable, "-m", "bot.cli", "rules", "--policy", str(ROOT / "examples" / "policy.yaml")],
                           capture_output=True, text=True, timeout=120, cwd=ROOT, check=True).stdout
    policy = (ROOT / "examples" / "policy.yaml").read_text()
    values = {**POSTGRES, "policy": policy, "rbac": {"roles": GIVEN_ROLES},
              "ingress": {"enabled": True, "host": "bot.example.org", "className": "nginx"},
              "serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True, "rules": rules}}
    out, _ = install(tmp_path, values)
    assert out["ok"], out.get("error")
    assert out["invalid"] == [], out["invalid"]
    assert sorted(u["kind"] for u in out["unvalidated"]) == ["PrometheusRule", "ServiceMonitor"]  # CRDs: no schema

    (deploy,) = of_kind(out, "Deployment")
    assert deploy["spec"]["replicas"] == 3 and deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    spec = deploy["spec"]["template"]["spec"]
    for container in spec["containers"] + spec["initContainers"]:
        env = {e["name"]: e for e in container["env"]}
        assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "rollback-bot", "key": "DATABASE_URL"}
        assert env["ROLLBACK_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert "/data" not in {m["mountPath"] for m in container["volumeMounts"]}
    assert of_kind(out, "PersistentVolumeClaim") == []
    assert of_kind(out, "ConfigMap")[0]["data"]["policy.yaml"].strip() == policy.strip()

    (pdb,) = of_kind(out, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    (ingress,) = of_kind(out, "Ingress")
    assert [p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]] == ["/slack/events", "/alertmanager"]
    (rule,) = of_kind(out, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(rules)["groups"]
    assert of_kind(out, "ServiceMonitor")[0]["spec"]["endpoints"][0]["path"] == "/metrics"
    assert_roles_match(out, GIVEN_ROLES)


def assert_roles_match(out: Obj, roles: list[Obj]) -> None:
    """Each given Role is rendered with exactly its rules, in its namespace, and bound to the chart's ServiceAccount."""
    (account,) = of_kind(out, "ServiceAccount")
    rendered = {r["metadata"]["namespace"]: r for r in of_kind(out, "Role")}
    assert sorted(rendered) == sorted(r["namespace"] for r in roles)
    for given in roles:
        assert rendered[given["namespace"]]["rules"] == given["rules"]
    bindings = of_kind(out, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(rendered)
    for binding in bindings:
        role = rendered[binding["metadata"]["namespace"]]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                        "namespace": NAMESPACE}]


def test_rbac_matches_rollback_bot_rbac(tmp_path: Path) -> None:
    generated = _rbac_values()
    if generated is None:
        pytest.skip("`rollback-bot rbac` does not exist yet (bot/slo/rbac.py): the chart's RBAC is checked against "
                    "given roles in test_three_replicas_on_postgres_with_everything_enabled")
    roles = generated["rbac"]["roles"]
    assert roles, "examples/policy.yaml has Kubernetes steps: rollback-bot rbac should print Roles"
    out, _ = install(tmp_path, {**POSTGRES, "policy": (ROOT / "examples" / "policy.yaml").read_text(), **generated})
    assert out["ok"], out.get("error")
    assert out["invalid"] == [], out["invalid"]
    assert_roles_match(out, roles)


def test_runner_imports_nothing_of_the_project() -> None:
    # The runner runs in the Python 3.12 virtualenv, which has only helm-sdkpy and kubernetes-validate.
    source = RUNNER.read_text()
    assert not re.search(r"^\s*(from|import) (bot|handlers|executors|sandbox)\b", source, re.M)
