"""The git_revert executor against real git: a local bare repository as origin, seeded with commits, read back
with GitPython. A second writer really pushes in between (from a hook), and a last test watches every process
the helm and git executors start to prove none goes through a shell.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from git import Actor, Repo
from pydantic import ValidationError

from bot.incidents.runner import Runner
from bot.infra.store import Store
from bot.slo.policy import RollbackStep
from bot.slo.policy_file import parse_policy
from executors import git_revert as git_revert_module
from executors.base import ExecutorError, StepContext, StepOutcome, StepPlan, TemporaryExecutorError
from executors.git_revert import GitRevert, GitRevertConfig
from executors.helm import Helm, HelmConfig
from executors.registry import Clients, Registry, default_registry
from tests.helm_env import FakeHelm, standard_history

DEV = Actor("dev", "dev@example.com")
# A second writer, run from a git hook: commit one more file in its own clone and push it to origin.
WRITER = """
import os, subprocess, sys
clone, name = sys.argv[1], sys.argv[2]
env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
env.update(SECOND_WRITER="1", GIT_AUTHOR_NAME="alice", GIT_AUTHOR_EMAIL="alice@example.com",
           GIT_COMMITTER_NAME="alice", GIT_COMMITTER_EMAIL="alice@example.com")
def git(*args):
    subprocess.run(["git", "-C", clone, *args], check=True, env=env, stdout=subprocess.DEVNULL)
git("fetch", "-q", "origin", "main")
git("reset", "-q", "--hard", "origin/main")
with open(os.path.join(clone, name), "w") as f:
    f.write("alice was here\\n")
git("add", name)
git("commit", "-q", "-m", "alice: add " + name)
git("push", "-q", "origin", "HEAD:main")
"""
# A hook that, up to `limit` times, lets the second writer push first; it logs each time it fires.
HOOK = """#!{python}
import os, subprocess, sys
if os.environ.get("SECOND_WRITER"):
    sys.exit(0)
log = {log!r}
fired = len(open(log).read().splitlines())
if fired < {limit}:
    with open(log, "a") as f:
        f.write("fired\\n")
    subprocess.run([sys.executable, {writer!r}, {clone!r}, "other-%d.txt" % fired], check=True)
"""


@dataclass
class Origin:
    """A bare repository acting as the GitOps repo's origin, and a developer clone that seeds it."""

    bare: Path
    dev: Repo
    tmp: Path

    @property
    def url(self) -> str:
        return str(self.bare)

    def commit(self, message: str, files: dict[str, str], branch: str = "main") -> str:
        for name, text in files.items():
            (Path(self.dev.working_dir) / name).write_text(text)
        self.dev.index.add(list(files))
        sha = self.dev.index.commit(message, author=DEV, committer=DEV).hexsha
        self.dev.git.push("origin", f"HEAD:refs/heads/{branch}")
        return str(sha)

    def head(self, branch: str = "main") -> str:
        return str(Repo(self.bare).commit(branch).hexsha)

    def show(self, rev: str, path: str) -> str:
        return str(Repo(self.bare).git.show(f"{rev}:{path}"))

    def second_writer(self, limit: int, where: str = "pre-receive") -> Path:
        """Install a hook that lets another clone push first, up to `limit` times; returns its log file.

        pre-receive: on the bare origin, so the other push lands while ours is being received and ours then
        fails to update the ref. post-commit: in every clone this process makes (core.hooksPath through
        GIT_CONFIG_* env), so the other push lands after our revert commit and before our push (fetch first).
        """
        other = self.tmp / "alice"
        if not other.exists():
            Repo.clone_from(self.url, other)
        writer = self.tmp / "writer.py"
        writer.write_text(WRITER)
        log = self.tmp / f"{where}.log"
        log.write_text("")
        hooks = self.bare / "hooks" if where == "pre-receive" else self.tmp / "client-hooks"
        hooks.mkdir(exist_ok=True)
        hook = hooks / where
        hook.write_text(HOOK.format(python=sys.executable, log=str(log), limit=limit, writer=str(writer),
                                    clone=str(other)))
        hook.chmod(0o755)
        return log

    def decline_pushes(self, message: str) -> None:
        hook = self.bare / "hooks" / "pre-receive"
        hook.write_text(f"#!{sys.executable}\nimport sys\nprint({message!r}, file=sys.stderr)\nsys.exit(1)\n")
        hook.chmod(0o755)


def make_origin(tmp: Path, name: str = "deploy.git") -> Origin:
    bare = tmp / name
    Repo.init(bare, bare=True, initial_branch="main")
    dev = Repo.clone_from(str(bare), tmp / "dev")
    return Origin(bare, dev, tmp)


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return make_origin(tmp_path)


@pytest.fixture
def seeded(origin: Origin) -> dict[str, str]:
    """Three commits on main: the model config, the bad bump, an unrelated tweak."""
    return {
        "add": origin.commit("add model-svc config", {"model.yaml": "model: recommender\nversion: 1\n"}),
        "bump": origin.commit("bump model-svc to v2", {"model.yaml": "model: recommender\nversion: 2\n"}),
        "tweak": origin.commit("scale model-svc to 3 replicas", {"replicas.yaml": "replicas: 3\n"}),
    }


def _executor(origin: Origin, commit: Any, workdir: Path | None = None, **config: Any) -> GitRevert:
    spec = git_revert_module.SPEC
    built = spec.build(spec.config.model_validate({"repo": origin.url, "commit": commit, **config}),
                       Clients(workdir=str(workdir) if workdir else None))
    assert isinstance(built, GitRevert)
    return built


def _ctx(pin: str | None = None, incident: int = 7) -> StepContext:
    return StepContext("model-svc", incident, pin)


def _run(executor: GitRevert, pin: str | None = None) -> tuple[StepPlan, StepOutcome]:
    """What bot.incidents.runner does: plan at incident open (pin), plan again with the pin right before executing."""
    pin = pin or executor.plan(context=_ctx()).pin
    plan = executor.plan(context=_ctx(pin))
    return plan, executor.execute(plan=plan, context=_ctx(pin))


@pytest.mark.parametrize(("commit", "expected"), [
    ("last", "tweak"), ({"match": r"^bump .* v2"}, "bump"), ("SHA:add", "add")])
def test_plan_pins_the_commit_and_changes_nothing(origin: Origin, seeded: dict[str, str], commit: Any,
                                                  expected: str) -> None:
    if commit == "SHA:add":
        commit = seeded["add"][:10]
    plan = _executor(origin, commit).plan(context=_ctx())
    sha = seeded[expected]
    assert plan.pin == sha and not plan.noop
    assert plan.command == f"git revert --no-edit {sha[:12]} && git push origin main"
    assert plan.data["reverted"] == [sha] and plan.data["head"] == seeded["tweak"]
    assert [(c.field, c.old) for c in plan.changes] == [("head", seeded["tweak"][:12])]
    assert origin.head() == seeded["tweak"]


def test_execute_reverts_pushes_and_the_graph_is_exact(origin: Origin, seeded: dict[str, str]) -> None:
    plan, outcome = _run(_executor(origin, {"match": "bump"}))
    assert outcome.ok and outcome.data["reverted"] == [seeded["bump"]]
    pushed = outcome.data["revision"]
    bare = Repo(origin.bare)
    revert = bare.commit("main")
    assert revert.hexsha == pushed and [p.hexsha for p in revert.parents] == [seeded["tweak"]]
    assert (revert.author.name, revert.author.email) == ("rollback-bot", "rollback-bot@localhost")
    assert revert.committer.name == "rollback-bot"
    assert revert.message.splitlines()[0] == 'Revert "bump model-svc to v2"'
    assert f"This reverts commit {seeded['bump']}." in revert.message
    assert "incident #7 (service model-svc)" in revert.message
    assert origin.show("main", "model.yaml") == "model: recommender\nversion: 1"
    assert origin.show("main", "replicas.yaml") == "replicas: 3"  # the later, unrelated commit stays
    assert [c.hexsha for c in bare.iter_commits("main")] == [pushed, seeded["tweak"], seeded["bump"], seeded["add"]]


def test_a_second_run_finds_the_revert_and_pushes_nothing(origin: Origin, seeded: dict[str, str]) -> None:
    executor = _executor(origin, "last")
    pin = executor.plan(context=_ctx()).pin
    _, first = _run(executor, pin)
    plan, again = _run(executor, pin)
    assert plan.noop and again.ok and again.data["noop"]
    assert again.data["revision"] == first.data["revision"] == origin.head()


def test_a_revert_that_was_itself_reverted_does_not_count(origin: Origin, seeded: dict[str, str]) -> None:
    """Someone re-applied the bump after the last rollback: a new incident must revert it again."""
    _, first = _run(_executor(origin, seeded["bump"]))
    dev = origin.dev
    dev.git.pull("origin", "main")
    dev.git.revert("--no-edit", first.data["revision"], env={
        "GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.com",
        "GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.com"})
    dev.git.push("origin", "main")
    assert origin.show("main", "model.yaml").endswith("version: 2")
    plan, second = _run(_executor(origin, seeded["bump"]))
    assert not plan.noop and second.ok and not second.data.get("noop")
    assert second.data["revision"] != first.data["revision"] and second.data["revision"] == origin.head()
    assert origin.show("main", "model.yaml").endswith("version: 1")


def test_the_pinned_commit_wins_over_later_pushes(origin: Origin, seeded: dict[str, str], tmp_path: Path) -> None:
    executor = _executor(origin, "last", workdir=tmp_path / "work")
    pin = executor.plan(context=_ctx()).pin  # when the warning was posted: head = tweak
    later = origin.commit("unrelated docs", {"README.md": "docs\n"})
    assert _executor(origin, "last").plan(context=_ctx()).pin == later  # unpinned, `last` moved on
    plan, outcome = _run(executor, pin)
    assert plan.data["commit"] == seeded["tweak"] and plan.data["head"] == later
    revert = Repo(origin.bare).commit("main")
    assert outcome.data["revision"] == revert.hexsha and [p.hexsha for p in revert.parents] == [later]
    assert f"This reverts commit {seeded['tweak']}." in revert.message
    clones = list((tmp_path / "work").iterdir())
    assert len(clones) == 1 and clones[0].name.startswith("deploy-")  # the workdir clone is reused, fetched


def test_a_commit_off_the_branch_or_unknown_is_refused(origin: Origin, seeded: dict[str, str]) -> None:
    side = origin.commit("experiment", {"exp.yaml": "x: 1\n"}, branch="feature")
    with pytest.raises(ExecutorError, match=f"commit {side[:12]} is not on {origin.url} main"):
        _executor(origin, side).plan(context=_ctx())
    with pytest.raises(ExecutorError, match="commit deadbeef00 is not in"):
        _executor(origin, "deadbeef00").plan(context=_ctx())
    with pytest.raises(ExecutorError, match="no commit on .* has a message matching /rollback v9/"):
        _executor(origin, {"match": "rollback v9"}).plan(context=_ctx())
    assert origin.head() == seeded["tweak"]


def test_a_merge_is_reverted_against_its_first_parent(origin: Origin, seeded: dict[str, str]) -> None:
    dev = origin.dev
    dev.git.checkout("-b", "feature")
    origin.commit("canary weights", {"canary.yaml": "weight: 50\n"}, branch="feature")
    dev.git.checkout("main")
    dev.git.merge("--no-ff", "-m", "Merge feature: canary", "feature", env={
        "GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.com",
        "GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.com"})
    dev.git.push("origin", "main")
    merge = origin.head()
    plan, outcome = _run(_executor(origin, "last"))
    assert plan.command == f"git revert --no-edit -m 1 {merge[:12]} && git push origin main"
    bare = Repo(origin.bare)
    assert bare.commit("main").tree == bare.commit(seeded["tweak"]).tree  # the branch as before the merge
    assert outcome.data["reverted"] == [merge]


def test_a_revert_conflict_fails_clearly_and_pushes_nothing(origin: Origin, seeded: dict[str, str],
                                                            tmp_path: Path) -> None:
    later = origin.commit("bump model-svc to v3", {"model.yaml": "model: recommender\nversion: 3\n"})
    executor = _executor(origin, seeded["bump"], workdir=tmp_path / "work")
    with pytest.raises(ExecutorError) as caught:
        _run(executor)
    assert "conflicts with later changes in model.yaml; nothing was pushed" in str(caught.value)
    assert not caught.value.retryable
    assert origin.head() == later
    (clone,) = (tmp_path / "work").iterdir()
    assert not Repo(clone).is_dirty(untracked_files=True)  # the clone is left clean for the next run
    _, outcome = _run(_executor(origin, seeded["tweak"], workdir=tmp_path / "work"))  # the same clone works on
    assert outcome.ok and Repo(origin.bare).commit("main").parents[0].hexsha == later


@pytest.mark.parametrize("where", ["pre-receive", "post-commit"])
def test_a_push_that_loses_a_race_is_retried_on_top_of_the_other_push(
        origin: Origin, seeded: dict[str, str], monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    executor = _executor(origin, {"match": "bump"})
    pin = executor.plan(context=_ctx()).pin
    log = origin.second_writer(limit=1, where=where)
    if where == "post-commit":
        monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
        monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.hooksPath")
        monkeypatch.setenv("GIT_CONFIG_VALUE_0", str(origin.tmp / "client-hooks"))
    plan, outcome = _run(executor, pin)
    assert log.read_text().splitlines() == ["fired"]  # the other clone really pushed once, in between
    (lost,) = outcome.data["lost_races"]
    assert ("(failed to update ref)" if where == "pre-receive" else "(fetch first)") in lost
    assert outcome.ok and outcome.data["attempts"] == 2 and "after 1 retries" in outcome.summary
    bare = Repo(origin.bare)
    revert = bare.commit("main")
    (theirs,) = revert.parents
    assert revert.hexsha == outcome.data["revision"] and revert.author.name == "rollback-bot"
    assert theirs.author.name == "alice" and [p.hexsha for p in theirs.parents] == [seeded["tweak"]]
    assert plan.data["head"] == seeded["tweak"] and outcome.data["head"] == theirs.hexsha
    assert origin.show("main", "other-0.txt") == "alice was here"  # their work is kept
    assert origin.show("main", "model.yaml").endswith("version: 1")
    assert sum("rollback-bot" == c.author.name for c in bare.iter_commits("main")) == 1


def test_a_remote_that_keeps_moving_fails_after_the_bounded_retries(origin: Origin, seeded: dict[str, str]) -> None:
    executor = _executor(origin, "last", push_retries=2)
    pin = executor.plan(context=_ctx()).pin
    log = origin.second_writer(limit=99)
    with pytest.raises(TemporaryExecutorError) as caught:
        _run(executor, pin)
    message = str(caught.value)
    assert "the branch moved under us on all 3 attempts (push_retries=2); nothing was pushed" in message
    assert "failed to update ref" in message
    assert len(log.read_text().splitlines()) == 3  # one competing push per attempt, no more attempts
    authors = [c.author.name for c in Repo(origin.bare).iter_commits("main")]
    assert "rollback-bot" not in authors and authors.count("alice") == 3


def test_a_push_the_remote_refuses_is_not_retried(origin: Origin, seeded: dict[str, str]) -> None:
    executor = _executor(origin, "last")
    pin = executor.plan(context=_ctx()).pin
    origin.decline_pushes("main is protected: open a merge request")
    with pytest.raises(ExecutorError) as caught:
        _run(executor, pin)
    assert "main is protected: open a merge request" in str(caught.value)
    assert "pre-receive hook declined" in str(caught.value) and not caught.value.retryable
    assert "(attempt 1)" in str(caught.value)
    assert origin.head() == seeded["tweak"]


def test_a_push_that_hangs_is_killed_after_network_timeout(origin: Origin, seeded: dict[str, str]) -> None:
    executor = _executor(origin, "last", network_timeout=1)
    pin = executor.plan(context=_ctx()).pin
    release = origin.tmp / "release-hook"
    hook = origin.bare / "hooks" / "pre-receive"
    hook.write_text(f"#!{sys.executable}\nimport os, time\n"
                    f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.05)\n")
    hook.chmod(0o755)
    try:
        with pytest.raises(TemporaryExecutorError) as caught:
            _run(executor, pin)
    finally:
        release.touch()
    assert "did not complete in 1 secs" in str(caught.value)
    assert "running this step again finds the revert" in str(caught.value)
    _, again = _run(executor, pin)  # whether or not the killed push landed, there is exactly one revert
    authors = [c.author.name for c in Repo(origin.bare).iter_commits("main")]
    assert again.ok and authors.count("rollback-bot") == 1 and again.data["revision"] == origin.head()


@pytest.mark.parametrize("workdir", [False, True], ids=["temporary-clone", "workdir-clone"])
def test_finding6_a_clone_that_stalls_is_killed_after_network_timeout(stalled_server: int, tmp_path: Path,
                                                                      workdir: bool) -> None:
    """`git clone` from a server that never answers: network_timeout covers the clone too, so the step's plan
    fails within seconds saying the clone took too long (before the fix it hung for ever), and no partial clone
    is left in the workdir for the next call to mistake for a repository."""
    work = tmp_path / "work"
    executor = GitRevert(GitRevertConfig(repo=f"git://127.0.0.1:{stalled_server}/deploy.git", commit="last",
                                         network_timeout=2), str(work) if workdir else None)
    started = time.monotonic()
    with pytest.raises(TemporaryExecutorError) as caught:
        executor.plan(context=_ctx())
    took = time.monotonic() - started
    assert 1.5 < took < 15, f"the clone was stopped after {took:.1f}s"
    assert str(caught.value) == (
        f"cloning git://127.0.0.1:{stalled_server}/deploy.git (branch main): the clone took longer than 2s "
        "(network_timeout) and was stopped; nothing was changed")
    assert not work.exists() or list(work.iterdir()) == []


def test_a_missing_repository_or_branch_is_a_clear_error(origin: Origin, seeded: dict[str, str],
                                                         tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match="cloning .*nowhere.git"):
        GitRevert(GitRevertConfig(repo=str(tmp_path / "nowhere.git"), commit="last"), None).plan(context=_ctx())
    with pytest.raises(ExecutorError, match="branch release-9"):
        _executor(origin, "last", branch="release-9").plan(context=_ctx())


def test_an_unreachable_remote_is_temporary_and_its_token_is_not_shown() -> None:
    url = "http://rollback-bot:s3cret-token@127.0.0.1:9/deploy.git"  # port 9: nothing listens
    with pytest.raises(TemporaryExecutorError) as caught:
        GitRevert(GitRevertConfig(repo=url, commit="last"), None).plan(context=_ctx())
    assert "127.0.0.1" in str(caught.value) and "http://***@127.0.0.1:9/deploy.git" in str(caught.value)
    assert "s3cret-token" not in str(caught.value)


def test_without_a_git_executable_the_registry_loads_and_the_step_fails_clearly(origin: Origin, tmp_path: Path) -> None:
    script = (
        "from executors.registry import Clients, default_registry\n"
        "from executors.base import ExecutorError, StepContext\n"
        "spec = default_registry().get('git_revert')\n"
        f"config = spec.config.model_validate({{'repo': {origin.url!r}, 'commit': 'last'}})\n"
        "try:\n"
        "    spec.build(config, Clients()).plan(context=StepContext('model-svc', 1))\n"
        "except ExecutorError as exc:\n"
        "    print(exc)\n"
    )
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {"PATH": str(empty), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"cloning {origin.url} (branch main): git is not available: Failed to initialize")
    assert done.stdout.rstrip().endswith("(install git)")


@pytest.mark.parametrize(("config", "problem"), [
    ({"commit": "HEAD~1"}, "commit must be a commit sha (7-40 lowercase hex digits), `last`, or {match: <regex>}"),
    ({"commit": {"match": "v2 ("}}, "not a valid regular expression"),
    ({"commit": {"mach": "v2"}}, "Extra inputs are not permitted"),
    ({"commit": "last", "push_retries": -1}, "greater than or equal to 0"),
    ({"commit": "last", "branch": "--force"}, "not a valid branch name"),
    ({"commit": "last", "repo": "--upload-pack=touch x"}, "not an option"),
    ({"commit": "last", "reverts": 2}, "Extra inputs are not permitted"),
])
def test_config_errors_name_the_problem(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RollbackStep.model_validate({"git_revert": {"repo": "/srv/deploy.git", **config}},
                                    context={"registry": Registry([git_revert_module.SPEC])})
    assert problem in str(caught.value)


def test_no_executor_goes_through_a_shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Watch every child process the helm and git executors start, at the one place CPython starts them."""
    seen: list[dict[str, Any]] = []
    real = subprocess.Popen._execute_child  # type: ignore[attr-defined]
    params = list(inspect.signature(real).parameters)

    def spy(self: subprocess.Popen[Any], *args: Any) -> Any:
        call = dict(zip(params[1:], args, strict=True))
        seen.append({"args": call["args"], "shell": call["shell"], "executable": call["executable"]})
        return real(self, *args)

    def no_shell(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a shell was asked to run {args!r}")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", spy)
    monkeypatch.setattr(os, "system", no_shell)
    monkeypatch.setattr(os, "popen", no_shell)
    monkeypatch.chdir(tmp_path)
    weird = tmp_path / "repos $(touch PWNED); x"
    weird.mkdir()
    origin = make_origin(weird, "deploy `touch PWNED`.git")
    bump = origin.commit("bump model-svc to v2", {"model.yaml": "version: 2\n"})
    FakeHelm.install(monkeypatch, tmp_path, {"prod/model-svc": standard_history()})
    seen.clear()

    helm = Helm(HelmConfig(release="model-svc", namespace="prod"), "helm")
    plan = helm.plan(context=_ctx())
    assert helm.execute(plan=plan, context=_ctx(plan.pin)).ok
    _, outcome = _run(_executor(origin, "last"))
    assert outcome.ok and outcome.data["reverted"] == [bump]

    assert seen, "the spy saw no child process at all"
    assert all(call["shell"] is False for call in seen)
    assert all(isinstance(call["args"], (list, tuple)) for call in seen)
    programs = {os.path.basename(str(call["args"][0])) for call in seen}
    assert programs == {"helm", "git"}
    argv = [list(map(str, call["args"])) for call in seen]
    assert ["helm", "rollback", "model-svc", "2", "-n", "prod", "--wait", "--timeout", "5m0s"] in argv
    assert any(a[:2] == ["git", "push"] for a in argv)
    assert any(a[:2] == ["git", "clone"] and str(origin.bare) in a for a in argv)  # the odd path, one argument
    assert not list(tmp_path.rglob("PWNED"))



def test_the_runner_rolls_back_to_what_was_pinned_when_the_warning_was_posted(
        origin: Origin, seeded: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """bot.incidents.runner with both executors: pins taken at incident open hold after the repo and release move on."""
    fake = FakeHelm.install(monkeypatch, tmp_path, {"prod/model-svc": standard_history()})
    svc = parse_policy(f"""
services:
  model-svc:
    channel: C0MODELSVC
    approvers: [U0APPROVER]
    model: recommender
    slos: [{{name: auc, query: auc_query, below: 0.8}}]
    rollback:
      - git_revert: {{repo: '{origin.url}', branch: main, commit: {{match: '^bump'}}, push_retries: 1}}
      - helm: {{release: model-svc, namespace: prod, revision: previous, timeout: 2m}}
""").services["model-svc"]
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    incident = store.open_incident(service="model-svc", trigger="slo", detail={}, baseline={},
                                   breach_started_at=None, channel="C0MODELSVC")
    assert incident is not None
    runner = Runner(default_registry(), Clients(workdir=str(tmp_path / "work")), store)
    pins = [step.pin for step in runner.plan_all(svc, incident.id)]
    assert pins == [seeded["bump"], "2"]

    origin.commit("bump model-svc to v3", {"canary.yaml": "version: 3\n"})  # `^bump` would now match this
    state = fake.read()  # and someone upgrades the release: `previous` would now be revision 3
    state["releases"]["prod/model-svc"][-1]["status"] = "superseded"
    state["releases"]["prod/model-svc"].append(dict(state["releases"]["prod/model-svc"][-1], revision=4,
                                                    status="deployed", description="Upgrade complete"))
    fake.write(state)

    records: list[tuple[str, str]] = []
    result = runner.run(svc, incident.id, pins, lambda kind, text, data: records.append((kind, text)))
    assert result.ok, result.error
    revert = Repo(origin.bare).commit("main")
    assert f"This reverts commit {seeded['bump']}." in revert.message and f"incident #{incident.id}" in revert.message
    assert fake.history("prod/model-svc")[-1]["description"] == "Rollback to 2"
    (git_step, helm_step) = [step.outcome for step in store.steps(incident.id)]
    assert git_step["data"]["revision"] == revert.hexsha and git_step["data"]["reverted"] == [seeded["bump"]]
    assert helm_step["data"]["new_revision"] == 5 and "revision" not in helm_step["data"]
    assert [kind for kind, _ in records] == ["step_started", "step_done", "step_started", "step_done"]
