"""The real Helm, driven from the test-only Python 3.12 virtualenv: lint and install a chart, validate what it renders.

Run by tests/test_chart_helm.py (under .venv's Python 3.11) as a subprocess of `.venv/helm-py312/bin/python`
(made by `make setup`), because helm-sdkpy, which bundles Helm v4 as a library, needs Python >= 3.12. This file
imports only the standard library, helm-sdkpy and kubernetes-validate, never the project.

    python helm_sdk_env.py lint CHART
    python helm_sdk_env.py install CHART --kubeconfig FILE --namespace NS --release NAME --values FILE.json

Each prints one JSON object on stdout and exits 0 (an install Helm refused is `{"ok": false, "error": ...}`);
exit 2 is a usage error.

- lint: Helm's lint action on the chart with its own values.yaml. `strict_ok` is helm lint --strict's verdict
  (no error and no warning); the messages are listed with their severity name and text.
- install: helm-sdkpy has no client-only rendering (no dry run, no template action), so this is a real
  `helm install` (client-side apply, wait only for hooks) into the Kubernetes API the kubeconfig names: the test's
  fake. It returns the release's manifest and hooks split into objects, and for each object kubernetes-validate's
  verdict against the offline schemas of Kubernetes `--kube-version` (strict: unknown fields are errors). Kinds
  that schema set does not know (prometheus-operator's CRDs) are listed under `unvalidated` with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

SEVERITIES = {0: "unknown", 1: "info", 2: "warning", 3: "error"}  # helm.sh/helm/v4/pkg/chart/v2/lint/support


def _lint(chart: str) -> dict[str, Any]:
    import helm_sdkpy

    config = helm_sdkpy.Configuration(namespace="default")
    result = asyncio.run(helm_sdkpy.Lint(config).run(chart))
    messages = [{"severity": SEVERITIES.get(m.get("Severity", 0), str(m.get("Severity"))), "path": m.get("Path", ""),
                 "text": _error_text(m.get("Err"))} for m in result.get("Messages") or []]
    errors = [_error_text(e) for e in result.get("Errors") or []]
    failing = [m for m in messages if m["severity"] in ("warning", "error")]
    return {"ok": not errors and not any(m["severity"] == "error" for m in messages),
            "strict_ok": not errors and not failing, "charts": result.get("TotalChartsLinted"),
            "messages": messages, "errors": errors, "raw": result}


def _error_text(err: Any) -> str:
    """Go errors marshal as `{}` or a struct; keep whatever text there is."""
    if isinstance(err, str):
        return err
    return json.dumps(err, sort_keys=True) if err else ""


def _install(args: argparse.Namespace) -> dict[str, Any]:
    import helm_sdkpy
    import yaml

    with open(args.values, encoding="utf-8") as f:
        values = json.load(f)
    config = helm_sdkpy.Configuration(namespace=args.namespace, kubeconfig=args.kubeconfig)
    try:
        release = asyncio.run(helm_sdkpy.Install(config).run(
            args.release, args.chart, values=values, wait=False, timeout=args.timeout))
    except helm_sdkpy.HelmError as exc:  # a `fail` in a template, a refused create: the test reads the message
        return {"ok": False, "error": str(exc)}
    objects = [o for o in yaml.safe_load_all(release.get("manifest") or "") if o]
    hooks = [o for h in release.get("hooks") or [] for o in yaml.safe_load_all(h.get("manifest") or "") if o]
    invalid, unvalidated = _validate(objects + hooks, args.kube_version)
    return {"ok": True, "objects": objects, "hooks": hooks, "invalid": invalid, "unvalidated": unvalidated,
            "notes": (release.get("info") or {}).get("notes", ""), "status": (release.get("info") or {}).get("status")}


def _validate(objects: list[dict[str, Any]], version: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    import kubernetes_validate

    invalid, unvalidated = [], []
    for obj in objects:
        where = {"kind": obj.get("kind", "?"), "name": (obj.get("metadata") or {}).get("name", "?")}
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as exc:  # a custom resource: no offline schema for it
            unvalidated.append({**where, "reason": str(exc)})
        except kubernetes_validate.ValidationError as exc:
            invalid.append({**where, "error": f"{'.'.join(str(p) for p in exc.path)}: {exc.message}"})
    return invalid, unvalidated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helm_sdk_env.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("lint")
    p.add_argument("chart")
    p = sub.add_parser("install")
    p.add_argument("chart")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--release", required=True)
    p.add_argument("--values", required=True, help="a JSON file of values")
    p.add_argument("--kube-version", default="1.37.0", help="kubernetes-validate's schema version")
    p.add_argument("--timeout", type=int, default=60, help="seconds for the whole install")
    args = parser.parse_args(argv)
    out = _lint(args.chart) if args.command == "lint" else _install(args)
    json.dump(out, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
