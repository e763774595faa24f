"""The worlds of the six-step rollback story: a fake Kubernetes API (Argo Rollouts canary, the feature-flag
ConfigMap and its Deployment, an Argo CD Application with auto-sync), the fake `helm` with a release history,
and a local bare git repository as the GitOps origin, plus the policy that rolls all of them back in order.

Used by tests/test_story_layers.py. `LayersWorld` seeds everything and gives the environment a real
`rollback-bot serve` needs to reach it (KUBECONFIG, PATH with tests/bin first, FAKE_HELM_*, GIT_WORKDIR).
Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from git import Actor, Repo

from sandbox.kube_api import FakeKube, Request
from tests.helm_env import BIN, FakeHelm, standard_history
from tests.story_env import APPROVER, CHANNEL, GROUP, P95

NS, NAME = "prod", "model-svc"
ARGOCD_NS = "argocd"
IMAGES = ["model-svc:v1", "model-svc:v2", "model-svc:v3"]  # v3 is the bad canary, v2 the stable revision
FLAGS, FLAG = "model-svc-flags", "FEATURE_ENABLE_NEW"
ROLLOUT_PATH = f"/apis/argoproj.io/v1alpha1/namespaces/{NS}/rollouts/{NAME}"
CONFIGMAP_PATH = f"/api/v1/namespaces/{NS}/configmaps/{FLAGS}"
DEPLOYMENT_PATH = f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}"
APP_PATH = f"/apis/argoproj.io/v1alpha1/namespaces/{ARGOCD_NS}/applications/{NAME}"
MERGE, JSON_PATCH, STRATEGIC = ("application/merge-patch+json", "application/json-patch+json",
                                "application/strategic-merge-patch+json")
DEV = Actor("dev", "dev@example.com")


@dataclass
class GitOrigin:
    """A bare repository as the config repo's origin, seeded through a developer clone."""

    bare: Path
    dev: Repo

    @classmethod
    def create(cls, root: Path) -> GitOrigin:
        bare = root / "deploy.git"
        Repo.init(bare, bare=True, initial_branch="main")
        dev = Repo.clone_from(str(bare), root / "dev")
        return cls(bare, dev)

    def commit(self, message: str, files: dict[str, str]) -> str:
        for name, text in files.items():
            (Path(self.dev.working_dir) / name).write_text(text)
        self.dev.index.add(list(files))
        sha = str(self.dev.index.commit(message, author=DEV, committer=DEV).hexsha)
        self.dev.git.push("origin", "HEAD:refs/heads/main")
        return sha

    def head(self) -> str:
        return str(Repo(self.bare).commit("main").hexsha)

    def log(self) -> list[tuple[str, str]]:
        """(sha, full message) of main, newest first, read from the bare repository itself."""
        return [(str(c.hexsha), str(c.message)) for c in Repo(self.bare).iter_commits("main")]

    def close(self) -> None:
        self.dev.close()


class LayersWorld:
    """Everything the six executors act on, seeded mid-incident: the bad version is live in every layer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.kube = FakeKube()
        self.helm = FakeHelm(root / "helm-state.json", root / "helm-argv.jsonl")
        self.git = GitOrigin.create(root / "git")
        self.good_sha = self.git.commit("model config v2", {"model.yaml": "image: model-svc:v2\nthreshold: 0.5\n"})
        self.bad_sha = self.git.commit("bad model config: v3 with the new feature path",
                                       {"model.yaml": "image: model-svc:v3\nthreshold: 0.9\n"})

    def __enter__(self) -> LayersWorld:
        self.kube.start()
        self.kubeconfig = self.kube.write_kubeconfig(self.root / "kubeconfig")
        self.kube.seed_rollout(NS, NAME, IMAGES, stable=2, canary_weight=20)
        self.kube.seed_configmap(NS, FLAGS, {FLAG: "true", "OTHER": "1"})
        self.kube.seed_deployment(NS, NAME, "model-svc:v3")
        self.kube.seed_application(ARGOCD_NS, NAME, repo=str(self.git.bare), target_revision="main",
                                   dest_namespace=NS, automated=True, synced_revision=self.bad_sha)
        self.helm.write({"releases": {f"{NS}/{NAME}": standard_history()}, "faults": {}})
        self.helm.log_file.touch()
        self.kube.clear_requests()  # seeding is not part of the story
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kube.stop()
        self.git.close()

    def env(self) -> dict[str, str]:
        """What `rollback-bot serve` needs to find these worlds, as BotProcess(extra_env=...)."""
        return {"KUBECONFIG": str(self.kubeconfig), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "FAKE_HELM_STATE": str(self.helm.state_file), "FAKE_HELM_LOG": str(self.helm.log_file),
                "GIT_WORKDIR": str(self.root / "clones")}

    def kube_writes(self) -> list[Request]:
        return self.kube.writes()

    def helm_rollbacks(self) -> list[list[str]]:
        return [argv for argv in self.helm.calls() if argv[:1] == ["rollback"]]

    def rollout(self) -> dict[str, Any]:
        return self.kube.get("rollouts", NS, NAME)

    def application(self) -> dict[str, Any]:
        return self.kube.get("applications", ARGOCD_NS, NAME)

    def flag(self) -> str:
        return str(self.kube.get("configmaps", NS, FLAGS)["data"][FLAG])


def layers_policy_yaml(*, model: str, repo: Path, service: str = NAME) -> str:
    """The six-step plan in the order issue 7 names, with the story's fast evaluation and verification."""
    return f"""
evaluate_every: 1s
services:
  {service}:
    channel: {CHANNEL}
    approvers: [{APPROVER}, {GROUP}]
    confirm: dialog
    model: {model}
    slos:
      - name: p95-latency
        kind: latency
        query: '{P95.format(service=service)}'
        above: 0.25
        for: 3s
      - name: auc
        kind: quality
        query: 'min(model_auc{{service="{service}"}})'
        below: 0.8
        for: 3s
    rollback:
      - argo_rollouts: {{rollout: {NAME}, namespace: {NS}, action: undo, timeout: 60s}}
      - helm: {{release: {NAME}, namespace: {NS}, revision: previous}}
      - feature_flag: {{configmap: {FLAGS}, namespace: {NS}, key: {FLAG}, value: "false",
                        restart: deployment/{NAME}, timeout: 60s}}
      - git_revert: {{repo: '{repo}', branch: main, commit: last}}
      - argocd: {{app: {NAME}, namespace: {ARGOCD_NS}, sync: true, disable_auto_sync: true, timeout: 60s}}
      - mlflow_alias: {{model: {model}, alias: champion, to: previous_champion}}
    verify: {{every: 1s, within: 90s, stable_for: 3s}}
    promote: {{from: candidate, to: champion, healthy_for: 3s}}
"""
