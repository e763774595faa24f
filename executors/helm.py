"""Helm release rollback: `helm rollback RELEASE REV -n NS --wait --timeout ...` back to a known-good revision.

Built by bot.incidents.runner from a policy step `helm: {release, namespace, revision}` (`revision: previous` or a revision
number). `previous` is resolved from `helm history` when the incident opens and pinned, so the rollback goes to
exactly the revision number the warning showed. helm runs as a subprocess with an argument list, never through a
shell; the executable is Clients.helm. Process failures become ExecutorError in _helm_errors() only.
`manages:` (optional) lists the kinds the chart manages, so `rollback-bot rbac` can grant helm what its rollback
does to them (access() says what and why).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from executors.base import (
    Change,
    ExecutorError,
    StepContext,
    StepOutcome,
    StepPlan,
    TemporaryExecutorError,
)
from executors.spec import Access, Clients, ExecutorSpec, Target

# Statuses of a revision that once ran successfully, so a rollback target (helm's `helm history` STATUS column).
GOOD_STATUSES = ("deployed", "superseded")
BUSY_STATUSES = ("pending-install", "pending-upgrade", "pending-rollback", "uninstalling")
# helm's stderr for failures that may pass on a later try: --wait ran out, the API server was unreachable,
# or another helm operation holds the release.
_TEMPORARY = re.compile(
    r"timed out waiting|context deadline exceeded|cluster unreachable|connection refused|i/o timeout|"
    r"another operation \(install/upgrade/rollback\) is in progress|TLS handshake timeout|the server is currently unable",
    re.IGNORECASE,
)
_DURATION_PART = re.compile(r"(\d+)(h|m|s)")
_UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1}
# helm's description of the revision a rollback creates: f"Rollback to {N}" (pkg/action/rollback.go).
ROLLBACK_DESCRIPTION = "Rollback to"
STDERR_LINES = 5  # how much of helm's stderr an error carries


def parse_seconds(value: Any) -> int:
    """Whole seconds from a bare number or `5m`, `90s`, `1h30m`, `5m0s` (Go's form, as helm prints it)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 5m, 90s or 1h30m; got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip() and re.fullmatch(r"(?:\d+[hms])+", value.strip()):
        seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value.strip()))
    elif isinstance(value, str) and re.fullmatch(r"\d+(?:\.\d+)?", value.strip()):
        seconds = float(value)
    else:
        raise ValueError(f"expected a duration like 5m, 90s or 1h30m; got {value!r}")
    if seconds < 1 or seconds != int(seconds):
        raise ValueError(f"the timeout must be a whole number of seconds, at least 1s; got {value!r}")
    return int(seconds)


def go_duration(seconds: int) -> str:
    """Seconds the way Go's time.Duration prints them, as `helm --timeout` reads them: 300 -> 5m0s."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# Kinds a namespaced Role cannot grant: a chart that manages them needs cluster-wide rights the bot is never given.
CLUSTER_SCOPED = frozenset({
    ("", "namespaces"), ("", "nodes"), ("", "persistentvolumes"), ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("rbac.authorization.k8s.io", "clusterroles"), ("rbac.authorization.k8s.io", "clusterrolebindings"),
    ("storage.k8s.io", "storageclasses"), ("scheduling.k8s.io", "priorityclasses"),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"), ("apiregistration.k8s.io", "apiservices"),
})


class ManagedKind(BaseModel):
    """One kind of object the release's chart renders, as RBAC names it: `{group: apps, resource: deployments}`
    (group "" or omitted for the core group: services, configmaps)."""

    model_config = ConfigDict(extra="forbid")

    group: str = Field(default="", pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$", max_length=253)
    resource: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)

    @model_validator(mode="after")
    def _namespaced(self) -> ManagedKind:
        if (self.group, self.resource) in CLUSTER_SCOPED:
            raise ValueError(f"{self.resource} are cluster-scoped: the bot's namespaced Role cannot grant them, so a "
                             "chart managing them cannot be rolled back by the bot")
        return self


class HelmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    release: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]{0,51}[a-z0-9])?$")
    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    revision: Literal["previous"] | int = "previous"
    timeout: int = 300
    kube_context: str | None = Field(default=None, min_length=1)
    manages: tuple[ManagedKind, ...] = ()  # the kinds the chart manages, for `rollback-bot rbac` (access())

    @field_validator("revision", mode="before")
    @classmethod
    def _revision(cls, value: Any) -> Any:
        if value == "previous":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"revision must be `previous` or a revision number (1, 2, ...); got {value!r}")
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> int:
        return parse_seconds(value)


@contextmanager
def _helm_errors(what: str, binary: str) -> Iterator[None]:
    """The one place process failures of helm become the project's errors."""
    try:
        yield
    except FileNotFoundError as exc:
        # No such executable: nothing a retry fixes until someone installs helm.
        raise ExecutorError(f"{what}: the helm executable {binary!r} was not found (install helm or fix PATH)") from exc
    except PermissionError as exc:
        # Present but not executable: a deployment problem, not a transient one.
        raise ExecutorError(f"{what}: cannot run {binary!r}: {exc.strerror}") from exc
    except subprocess.TimeoutExpired as exc:
        # helm itself hung past its own --timeout plus grace; the cluster may answer later.
        raise TemporaryExecutorError(f"{what}: helm did not finish within {exc.timeout:.0f}s") from exc
    except subprocess.CalledProcessError as exc:
        # helm ran and said no: carry its first lines of stderr so the thread shows the reason.
        lines = [line for line in (exc.stderr or "").strip().splitlines() if line.strip()]
        # helm prints kubeconfig permission warnings before the error; keep them only if nothing else is said.
        lines = [line for line in lines if not line.startswith("WARNING:")] or lines
        detail = "\n".join(lines[:STDERR_LINES]) or f"no error output (stdout: {(exc.stdout or '').strip()[:200]!r})"
        cls = TemporaryExecutorError if _TEMPORARY.search(detail) else ExecutorError
        raise cls(f"{what}: helm exited with status {exc.returncode}: {detail}") from exc


class Helm:
    """Roll a Helm release back to a known-good revision and check that helm recorded it as deployed."""

    name: ClassVar[str] = "helm"

    def __init__(self, config: HelmConfig, binary: str) -> None:
        self.config = config
        self.binary = binary

    @property
    def _where(self) -> str:
        return f"{self.config.namespace}/{self.config.release}"

    def _scope(self) -> list[str]:
        cfg = self.config
        return ["-n", cfg.namespace] + (["--kube-context", cfg.kube_context] if cfg.kube_context else [])

    def _run(self, what: str, args: Sequence[str], timeout: float) -> str:
        argv = [self.binary, *args]
        with _helm_errors(what, self.binary):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True, shell=False)
        return done.stdout

    def history(self) -> list[dict[str, Any]]:
        """`helm history RELEASE -n NS -o json`: revisions oldest first, as helm prints them."""
        what = f"reading the history of helm release {self._where}"
        out = self._run(what, ["history", self.config.release, *self._scope(), "-o", "json"], timeout=120)
        try:
            rows = json.loads(out)
            revisions = [dict(row, revision=int(row["revision"]), status=str(row["status"])) for row in rows]
        except (ValueError, TypeError, KeyError) as exc:
            # Not the JSON list helm prints: an incompatible helm or a wrapper in the way; retrying will not help.
            raise ExecutorError(f"{what}: unexpected output from helm: {out[:200]!r}") from exc
        if not revisions:
            raise ExecutorError(f"{what}: helm lists no revisions")
        return sorted(revisions, key=lambda row: row["revision"])

    def _target(self, history: list[dict[str, Any]], context: StepContext) -> dict[str, Any]:
        by_number = {row["revision"]: row for row in history}
        current = history[-1]
        if context.pin is not None or self.config.revision != "previous":
            number = int(context.pin) if context.pin is not None else int(self.config.revision)
            if number not in by_number:
                raise ExecutorError(
                    f"helm release {self._where} has no revision {number} (history has "
                    f"{history[0]['revision']}..{current['revision']})"
                )
            return by_number[number]
        earlier = [r for r in history if r["revision"] < current["revision"] and r["status"] in GOOD_STATUSES]
        if not earlier:
            raise ExecutorError(
                f"helm release {self._where} has no deployed or superseded revision before revision "
                f"{current['revision']} to roll back to"
            )
        return earlier[-1]

    def command(self, revision: int) -> list[str]:
        timeout = go_duration(self.config.timeout)
        return ["rollback", self.config.release, str(revision), *self._scope(), "--wait", "--timeout", timeout]

    def plan(self, *, context: StepContext) -> StepPlan:
        history = self.history()
        current, target = history[-1], self._target(history, context)
        old, new = current["revision"], target["revision"]
        resource = f"helm release {self._where}"
        noop = current["status"] == "deployed" and (old == new or rolled_back_to(current, new))
        return StepPlan(
            executor=self.name,
            summary=(
                f"roll back {resource} from revision {old} ({_label(current)}, {current['status']}) to revision {new} "
                f"({_label(target)}); helm records it as a new revision"
            ),
            changes=(
                Change(resource=resource, field="revision", old=str(old), new=str(new)),
                Change(resource=resource, field="chart", old=_label(current), new=_label(target)),
            ),
            command=shlex.join(["helm", *self.command(new)]),
            pin=str(new),
            noop=noop,
            data={"release": self.config.release, "namespace": self.config.namespace, "from_revision": old,
                  "to_revision": new, "from_chart": _label(current), "to_chart": _label(target)},
            live=live_text(self.config.release, current),
        )

    def execute(self, *, plan: StepPlan, context: StepContext) -> StepOutcome:
        target, planned_from = int(plan.data["to_revision"]), int(plan.data["from_revision"])
        current = self.history()[-1]
        if current["status"] == "deployed" and (current["revision"] == target or rolled_back_to(current, target)):
            return StepOutcome(self.name, True, f"helm release {self._where} is already at revision {target} "
                               f"(current revision {current['revision']}: {current.get('description')})", plan.changes,
                               data=dict(plan.data, new_revision=current["revision"], noop=True))
        if current["status"] in BUSY_STATUSES:
            raise TemporaryExecutorError(
                f"helm release {self._where} is busy: revision {current['revision']} is {current['status']}"
            )
        if current["revision"] != planned_from:
            raise ExecutorError(
                f"helm release {self._where} moved to revision {current['revision']} since the plan (expected "
                f"{planned_from}); refusing to roll back over a change made by someone else"
            )
        self._run(f"rolling back helm release {self._where} to revision {target}", self.command(target),
                  timeout=self.config.timeout + 60)
        after = self.history()[-1]
        if after["revision"] <= planned_from or after["status"] != "deployed" or not rolled_back_to(after, target):
            raise TemporaryExecutorError(
                f"helm release {self._where} reads back revision {after['revision']} {after['status']} "
                f"({after.get('description')!r}), expected a deployed revision rolled back to {target}"
            )
        return StepOutcome(
            self.name, True,
            f"helm release {self._where}: revision {planned_from} -> {target} ({plan.data['to_chart']}), "
            f"deployed as revision {after['revision']}",
            plan.changes, data=dict(plan.data, new_revision=after["revision"]),
        )


def rolled_back_to(row: dict[str, Any], revision: int) -> bool:
    """Whether a history row is helm's record of a rollback to `revision`.

    helm writes the description `Rollback to N` on the new revision (pkg/action/rollback.go, helm 3 and 4; the
    `helm history` help text's "Rolled back to N" is not what helm writes); helm 4 also prints `rollback_revision`.
    """
    return row.get("description") == f"{ROLLBACK_DESCRIPTION} {revision}" or row.get("rollback_revision") == revision


def live_text(release: str, row: dict[str, Any]) -> str:
    """The release's newest revision from its `helm history -o json` row (revision, updated, status, chart,
    app_version, description, as helm prints them): the warning's "What changed" line, e.g. "`model-svc` revision 7
    deployed 2026-12-02 12:01 UTC — chart model-svc-1.4.0, app 1.4.0 (Upgrade complete)"."""
    when = _utc_minute(row.get("updated"))
    said = f"`{release}` revision {row['revision']} {row.get('status', '?')}" + (f" {when}" if when else "")
    said += f" — chart {row.get('chart', '?')}, app {row.get('app_version') or '?'}"
    return said + (f" ({row['description']})" if row.get("description") else "")


def _utc_minute(updated: Any) -> str | None:
    """helm's `updated` (Go's RFC 3339 with nanoseconds, in the machine's zone; "" when unset) as UTC to the minute;
    None when absent, the raw text when it is not a timestamp."""
    if not updated:
        return None
    try:
        at = datetime.fromisoformat(str(updated))
    except ValueError:  # a helm that prints another format: show its words rather than drop the time
        return str(updated)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _label(row: dict[str, Any]) -> str:
    return f"{row.get('chart', '?')} app {row.get('app_version', '?')}"


def _build(config: HelmConfig, clients: Clients) -> Helm:
    return Helm(config, clients.helm)


RELEASE_SECRET_VERBS = ("create", "delete", "get", "list", "update")
MANAGED_VERBS = ("create", "delete", "get", "list", "patch", "watch")


def access(config: HelmConfig) -> tuple[Access, ...]:
    """What `helm history` and `helm rollback --wait` (helm 3 and 4, Secret storage) do in the release's namespace.

    Release records (pkg/storage, pkg/storage/driver/secrets.go): history and "last" list the Secrets labelled
    owner=helm,name=RELEASE; the target revision is a get of sh.helm.release.v1.RELEASE.vN; the rollback creates
    the next revision's Secret and updates it and the superseded ones; with --history-max (helm's default 10) the
    oldest are pruned by a get and a delete. All namespace-wide: list and create cannot be limited by resourceNames,
    the new revision's name is not known in advance, and a list returns every Secret's data anyway, so naming
    the gets would protect nothing. Keep other Secrets out of a namespace whose releases the bot rolls back.

    The chart's kinds (`manages:`; pkg/kube/client.go update()): a get of each object, then a create when it is
    missing, a patch (client-side three-way or server-side apply) when it exists, a delete of objects the target
    revision no longer has; no update, since the executor never passes --force. Hooks and helm 4's `--wait`
    watcher list and watch them; helm 3's `--wait` lists a Deployment's ReplicaSets to find the new one.
    """
    ns = config.namespace
    grants = [Access("", "secrets", ns, RELEASE_SECRET_VERBS)]
    grants += [Access(kind.group, kind.resource, ns, MANAGED_VERBS) for kind in config.manages]
    if any((kind.group, kind.resource) == ("apps", "deployments") for kind in config.manages):
        grants.append(Access("apps", "replicasets", ns, ("list",)))
    return tuple(grants)


SPEC = ExecutorSpec(name=Helm.name, config=HelmConfig, build=_build, access=access,
                    target=Target(r"[0-9]{1,9}", "a helm revision number, e.g. `4`", was="from_revision"))
