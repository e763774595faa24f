"""GitOps rollback: `git revert` a commit on a branch of a config repository and push it, so the deploy tool
(e.g. an argocd step after this one) rolls the service back.

Built by bot.incidents.runner from a policy step `git_revert: {repo, branch, commit}` with `commit` a sha, `last` (the
branch head) or `{match: <regex on the message>}` (the newest matching commit). The commit is resolved to a full
sha when the incident opens and pinned, so a later push to the branch does not change what gets reverted. Works
in a clone under Clients.workdir (fetched again on every call) or in a temporary one. A push rejected because
someone else pushed meanwhile is retried on top of their work up to `push_retries` times. The clone, every fetch
and every push are killed after `network_timeout` seconds. GitPython runs git with argument lists, never a shell;
its errors become ExecutorError in _git_errors() only (a clone killed by that timeout is told apart in
_fresh_clone).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from executors.base import (
    Change,
    ExecutorError,
    StepContext,
    StepOutcome,
    StepPlan,
    TemporaryExecutorError,
)
from executors.spec import Clients, ExecutorSpec

if TYPE_CHECKING:
    from git import Commit, Repo

AUTHOR = "rollback-bot"
STDERR_LINES = 5
# git's words for a push that lost a race with another writer: the remote moved on before ours landed.
_RACE = re.compile(r"\(fetch first\)|\(non-fast-forward\)|\(failed to update ref\)|cannot lock ref|stale info")
# Network trouble that may pass on a later try.
_NETWORK = re.compile(
    r"could not read from remote|connection (refused|reset|timed out)|timed out|could not resolve host|"
    r"failed to connect|couldn't connect to server|did not complete in \d+|"
    r"early eof|the remote end hung up|HTTP 5\d\d|returned error: 5\d\d",
    re.IGNORECASE,
)
_CONFLICT = re.compile(r"could not revert|CONFLICT|after resolving the conflicts", re.IGNORECASE)
_NO_PROMPT = {"GIT_TERMINAL_PROMPT": "0"}  # a missing credential fails at once instead of waiting for a human
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_clone_locks: dict[str, threading.Lock] = {}
_clone_locks_guard = threading.Lock()


class CommitMatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    match: str = Field(min_length=1)

    @field_validator("match")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            # A typo in the policy's regex: say where, at check-policy time.
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return pattern


class GitRevertConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: str = Field(min_length=1, description="clone URL or path of the config repository")
    branch: str = "main"
    commit: str | CommitMatch
    push_retries: int = Field(default=3, ge=0, le=20)
    network_timeout: int = Field(default=120, ge=1, description="seconds a clone, fetch or push may take")
    author_email: str = "rollback-bot@localhost"

    @field_validator("repo")
    @classmethod
    def _repo(cls, repo: str) -> str:
        if repo.startswith("-"):
            raise ValueError(f"repo must be a clone URL or a path, not an option: {repo!r}")
        return repo

    @field_validator("branch")
    @classmethod
    def _branch(cls, branch: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._/-]+", branch) or branch.startswith(("-", "/", ".")) or ".." in branch \
                or branch.endswith(("/", ".", ".lock")):
            raise ValueError(f"not a valid branch name: {branch!r}")
        return branch

    @field_validator("commit", mode="before")
    @classmethod
    def _commit(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return value
        if value == "last" or (isinstance(value, str) and re.fullmatch(r"[0-9a-f]{7,40}", value)):
            return value
        raise ValueError(
            f"commit must be a commit sha (7-40 lowercase hex digits), `last`, or {{match: <regex>}}; got {value!r}"
        )


class _PushRaced(TemporaryExecutorError):
    """The remote branch moved between our fetch and our push."""


class _RevertConflict(ExecutorError):
    """`git revert` stopped on a conflict."""


@contextmanager
def _git_errors(what: str) -> Iterator[None]:
    """The one place GitPython and git errors become the project's errors."""
    try:
        from git.exc import GitCommandError, GitError, InvalidGitRepositoryError, NoSuchPathError
    except ImportError as exc:
        # GitPython refuses to import when no git executable is installed.
        raise ExecutorError(f"{what}: git is not available: {str(exc).splitlines()[0]} (install git)") from exc
    try:
        yield
    except GitCommandError as exc:
        # git ran and failed: its stderr says why; a lost push race and network trouble may pass on a retry.
        stderr = (exc.stderr if isinstance(exc.stderr, str) else str(exc.stderr or "")).strip()
        if stderr.startswith("stderr: '") and stderr.endswith("'"):  # GitPython quotes git's stderr
            stderr = stderr[len("stderr: '"):-1]
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        # Leave out git's advice and progress chatter: the thread needs the reason.
        lines = [line for line in lines if not line.startswith(("hint:", "Cloning into"))]
        detail = "\n".join(lines[-STDERR_LINES:] if _RACE.search(stderr) else lines[:STDERR_LINES])
        detail = redact(detail)
        message = f"{what}: git exited with status {exc.status}: {detail or redact(str(exc))}"
        if _RACE.search(stderr):
            raise _PushRaced(message) from exc
        if _CONFLICT.search(stderr):
            raise _RevertConflict(detail) from exc
        cls = TemporaryExecutorError if _NETWORK.search(stderr) else ExecutorError
        raise cls(message) from exc
    except (InvalidGitRepositoryError, NoSuchPathError) as exc:
        # The clone directory under the workdir is not a usable repository: someone must look at it.
        raise ExecutorError(f"{what}: {type(exc).__name__}: {redact(str(exc))}") from exc
    except GitError as exc:
        # git missing (GitCommandNotFound), an unsafe protocol/option GitPython refused, or similar.
        raise ExecutorError(f"{what}: {type(exc).__name__}: {redact(str(exc))}") from exc


def redact(text: str) -> str:
    """`text` with any user:password@ (a token in a clone URL) cut out of URLs, for messages and logs."""
    return _USERINFO.sub("***@", text)


def _lock_for(path: str) -> threading.Lock:
    with _clone_locks_guard:
        return _clone_locks.setdefault(path, threading.Lock())


def _reverts(repo: Repo, sha: str, until: str) -> str | None:
    """The commit in sha..until that reverts `sha` and is still in force (not itself reverted later), if any."""
    marker = f"This reverts commit {sha}"
    for commit in repo.iter_commits(f"{sha}..{until}"):  # newest first
        if marker in str(commit.message):
            # A later "Revert \"Revert ...\"" put the change back: then `sha` is live again.
            return None if _reverts(repo, commit.hexsha, until) else str(commit.hexsha)
    return None


def _subject(commit: Commit) -> str:
    return str(commit.message).strip().splitlines()[0] if str(commit.message).strip() else "(no message)"


def live_text(commit: Commit, branch: str, reverted_by: str | None = None) -> str:
    """The commit a revert would undo: the warning's "What changed" line, e.g. "commit `3f2a9c1b0d4e` "bump model
    to v5" by alice, committed 2026-12-02 12:01 UTC on main"."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(commit.committed_date))
    said = f"commit `{commit.hexsha[:12]}` \"{_subject(commit)}\" by {commit.author.name}, committed {when} on {branch}"
    return said + (f" (already reverted by `{reverted_by[:12]}`)" if reverted_by else "")


class GitRevert:
    """Revert one commit on a branch and push the revert."""

    name: ClassVar[str] = "git_revert"

    def __init__(self, config: GitRevertConfig, workdir: str | None) -> None:
        self.config = config
        self.workdir = workdir

    @property
    def _shown(self) -> str:
        return redact(self.config.repo)

    @property
    def _where(self) -> str:
        return f"{self._shown} {self.config.branch}"

    @property
    def _remote_ref(self) -> str:
        return f"refs/remotes/origin/{self.config.branch}"

    @contextmanager
    def _clone(self) -> Iterator[Repo]:
        """A clone with origin/<branch> freshly fetched; one caller at a time per clone directory."""
        if self.workdir is None:
            with tempfile.TemporaryDirectory(prefix="rollback-bot-git-") as tmp:
                yield self._fresh_clone(Path(tmp) / "repo")
            return
        repo_id = hashlib.sha256(self.config.repo.encode()).hexdigest()[:12]
        base = re.sub(r"[^A-Za-z0-9._-]", "_", self.config.repo.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))
        path = Path(self.workdir) / f"{base or 'repo'}-{repo_id}"
        with _lock_for(str(path)):
            yield self._fresh_clone(path) if not path.exists() else self._fetched(path)

    def _fresh_clone(self, path: Path) -> Repo:
        """Clone the branch into `path`, killed after network_timeout like a fetch or push.

        Not Repo.clone_from: it runs git as a process and waits for it without a deadline, whatever
        kill_after_timeout says (GitPython 3.2). Git().clone(..., kill_after_timeout=N) runs git under GitPython's
        watchdog instead, after the protocol check clone_from makes (no `ext::` remote helpers).
        """
        cfg = self.config
        what = f"cloning {self._shown} (branch {cfg.branch})"
        try:
            with _git_errors(what):
                from git import Git, Repo
                from git.exc import GitCommandError

                url = Git.polish_url(cfg.repo, expand_vars=False)
                Git.check_unsafe_protocols(url)
                runner = Git()
                runner.update_environment(**_NO_PROMPT)
                try:
                    runner.clone("--branch", cfg.branch, "--", url, str(path), kill_after_timeout=cfg.network_timeout)
                except GitCommandError as exc:
                    # The watchdog killed git (SIGKILL, status -9): a stalled server, not git's own error.
                    if "did not complete in" not in str(exc.stderr):
                        raise
                    raise TemporaryExecutorError(
                        f"{what}: the clone took longer than {cfg.network_timeout}s (network_timeout) and was "
                        "stopped; nothing was changed"
                    ) from exc
                repo = Repo(path)
        except ExecutorError:
            # A killed or failed clone leaves a partial directory that a later call would take for a clone.
            shutil.rmtree(path, ignore_errors=True)
            raise
        repo.git.update_environment(**_NO_PROMPT)
        self._identity(repo)
        return repo

    def _fetched(self, path: Path) -> Repo:
        cfg = self.config
        with _git_errors(f"opening the clone of {self._shown} in {path}"):
            from git import Repo

            repo = Repo(path)
            repo.git.update_environment(**_NO_PROMPT)
            url = repo.remotes.origin.url
        if url != cfg.repo:
            raise ExecutorError(f"the clone in {path} has origin {redact(url)!r}, not {self._shown!r}; move it away")
        self._fetch(repo)
        self._identity(repo)
        return repo

    def _fetch(self, repo: Repo) -> None:
        cfg = self.config
        with _git_errors(f"fetching {cfg.branch} from {self._shown}"):
            repo.git.fetch("origin", f"+refs/heads/{cfg.branch}:{self._remote_ref}",
                           kill_after_timeout=cfg.network_timeout)

    def _identity(self, repo: Repo) -> None:
        with _git_errors("setting the commit author"), repo.config_writer() as config:
            config.set_value("user", "name", AUTHOR)
            config.set_value("user", "email", self.config.author_email)

    def _resolve(self, repo: Repo, context: StepContext) -> Commit:
        cfg = self.config
        head = repo.commit(self._remote_ref)
        wanted = context.pin if context.pin is not None else cfg.commit
        if wanted == "last":
            return head
        if isinstance(wanted, CommitMatch):
            pattern = re.compile(wanted.match)
            for commit in repo.iter_commits(self._remote_ref):
                if pattern.search(str(commit.message)):
                    return commit
            raise ExecutorError(f"no commit on {self._where} has a message matching /{wanted.match}/")
        with _git_errors(f"looking up commit {wanted} in {self._shown}"):
            sha = repo.git.rev_parse("--verify", "--quiet", f"{wanted}^{{commit}}", with_exceptions=False)
            found = repo.commit(sha) if sha else None
            on_branch = found is not None and repo.is_ancestor(found, head)
        pinned = " (pinned when the warning was posted)" if context.pin is not None else ""
        if found is None:
            raise ExecutorError(f"commit {wanted}{pinned} is not in {self._shown}")
        if not on_branch:
            raise ExecutorError(f"commit {found.hexsha[:12]}{pinned} is not on {self._where}")
        return found

    def _revert_args(self, commit: Commit) -> list[str]:
        # A merge is reverted against its first parent: the branch as it was before the merge.
        return ["--no-edit", *(["-m", "1"] if len(commit.parents) > 1 else []), commit.hexsha]

    def plan(self, *, context: StepContext) -> StepPlan:
        cfg = self.config
        with self._clone() as repo:
            target = self._resolve(repo, context)
            head = repo.commit(self._remote_ref)
            done = _reverts(repo, target.hexsha, head.hexsha)
            subject, short, head_short = _subject(target), target.hexsha[:12], head.hexsha[:12]
            author = f"{target.author.name} <{target.author.email}>"
            live = live_text(target, cfg.branch, done)
        revert_args = self._revert_args(target)
        revert_args[-1] = short
        return StepPlan(
            executor=self.name,
            summary=(
                f"revert commit {short} \"{subject}\" by {author} on {self._where} (head {head_short}) and push"
                + (f"; already reverted by {done[:12]}" if done else "")
            ),
            changes=(
                Change(resource=f"git {self._where}", field="head", old=head_short,
                       new=f"new commit reverting {short} \"{subject}\""),
            ),
            command=f"{shlex.join(['git', 'revert', *revert_args])} && {shlex.join(['git', 'push', 'origin', cfg.branch])}",
            pin=target.hexsha,
            noop=done is not None,
            data={"repo": self._shown, "branch": cfg.branch, "commit": target.hexsha, "subject": subject,
                  "head": head.hexsha, "reverted": [target.hexsha]},
            live=live,
        )

    def execute(self, *, plan: StepPlan, context: StepContext) -> StepOutcome:
        cfg = self.config
        sha = str(plan.data["commit"])
        attempts = cfg.push_retries + 1
        with self._clone() as repo:
            lost: list[str] = []  # why each earlier push was rejected
            for attempt in range(1, attempts + 1):
                self._resolve(repo, StepContext(context.service, context.incident_id, sha))  # still on the branch?
                head = repo.commit(self._remote_ref)
                done = _reverts(repo, sha, head.hexsha)
                if done is not None:
                    return StepOutcome(
                        self.name, True, f"{sha[:12]} is already reverted on {self._where} by {done[:12]}",
                        plan.changes, data=dict(plan.data, revision=done, noop=True),
                    )
                ours = self._commit_revert(repo, head.hexsha, sha, context)
                if ours is None:
                    return StepOutcome(
                        self.name, True, f"reverting {sha[:12]} changes nothing on {self._where} any more "
                        f"(head {head.hexsha[:12]}); nothing pushed", plan.changes,
                        data=dict(plan.data, revision=head.hexsha, noop=True),
                    )
                try:
                    with _git_errors(f"pushing the revert of {sha[:12]} to {self._where} (attempt {attempt})"):
                        repo.git.push("origin", f"{ours}:refs/heads/{cfg.branch}", kill_after_timeout=cfg.network_timeout)
                except _PushRaced as exc:
                    # Someone pushed between our fetch and our push: fetch their work and revert again on top.
                    lost.append(str(exc))
                    self._fetch(repo)
                    continue
                except TemporaryExecutorError as exc:
                    # Killed after network_timeout: the remote may still apply it, so say how to check safely.
                    if "did not complete in" not in str(exc):
                        raise
                    raise TemporaryExecutorError(
                        f"{exc} The push may still land; running this step again finds the revert instead of "
                        "pushing a second one."
                    ) from exc
                self._fetch(repo)
                if not repo.is_ancestor(repo.commit(ours), repo.commit(self._remote_ref)):
                    raise TemporaryExecutorError(f"{self._where} does not contain the pushed revert {ours[:12]}")
                return StepOutcome(
                    self.name, True,
                    f"reverted {sha[:12]} \"{plan.data['subject']}\" on {self._where}: pushed {ours[:12]}"
                    + (f" after {attempt - 1} retries" if attempt > 1 else ""),
                    plan.changes,
                    data=dict(plan.data, revision=ours, head=head.hexsha, attempts=attempt, lost_races=lost),
                )
        raise TemporaryExecutorError(
            f"gave up pushing the revert of {sha[:12]} to {self._where}: the branch moved under us on all "
            f"{attempts} attempts (push_retries={cfg.push_retries}); nothing was pushed. Last error: {lost[-1]}"
        )

    def _commit_revert(self, repo: Repo, onto: str, sha: str, context: StepContext) -> str | None:
        """Commit the revert of `sha` on top of `onto` (the fetched branch head); None when it would be empty."""
        cfg = self.config
        with _git_errors(f"resetting the clone of {self._shown} to {onto[:12]}"):
            repo.git.checkout("--force", "-B", cfg.branch, onto)
            repo.git.clean("-fdx")
        args = self._revert_args(repo.commit(sha))
        args[0] = "--no-commit"
        try:
            with _git_errors(f"reverting {sha[:12]} on {self._where}"):
                repo.git.revert(*args)
        except _RevertConflict as exc:
            # Later commits changed the same lines: a human must resolve it. Leave the clone clean, push nothing.
            with _git_errors(f"cleaning up the conflicted revert of {sha[:12]}"):
                files = repo.git.diff("--name-only", "--diff-filter=U").split()
                repo.git.reset("--hard", onto)
            raise ExecutorError(
                f"reverting {sha[:12]} on {self._where} conflicts with later changes in {', '.join(files) or '?'}; "
                f"nothing was pushed. Revert it by hand and resolve the conflict (git said: {exc})"
            ) from exc
        with _git_errors(f"committing the revert of {sha[:12]}"):
            if not repo.git.diff("--cached", "--name-only"):
                return None
            subject = _subject(repo.commit(sha))
            repo.git.commit(
                "-m", f'Revert "{subject}"', "-m", f"This reverts commit {sha}.",
                "-m", f"Rolled back by {AUTHOR} for incident #{context.incident_id} (service {context.service}).",
            )
            return str(repo.head.commit.hexsha)


def _build(config: GitRevertConfig, clients: Clients) -> GitRevert:
    return GitRevert(config, clients.workdir)


SPEC = ExecutorSpec(name=GitRevert.name, config=GitRevertConfig, build=_build)
