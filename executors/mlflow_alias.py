"""MLflow model-registry alias flip: point `alias` (champion) back at the version behind `to`
(previous_champion).

Built by bot.incidents.runner from a policy step `mlflow_alias: {model, alias, to}`. The target version is resolved
when the incident opens and pinned, so the flip goes exactly where the warning said even if someone moves
`previous_champion` meanwhile. MLflow errors become ExecutorError in _mlflow_errors() only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from executors.base import (
    Change,
    ExecutorError,
    ModelPin,
    StepContext,
    StepOutcome,
    StepPlan,
    TemporaryExecutorError,
)
from executors.spec import Clients, ExecutorSpec, Target

BLOCK_TAG = "rollback_blocked"  # the tag the freeze puts on a bad version (bot.infra.model_registry writes it)


class MlflowAliasConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str
    alias: str = "champion"
    to: str = "previous_champion"


@contextmanager
def _mlflow_errors(what: str) -> Iterator[None]:
    """The one place MLflow and transport errors become the project's errors."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        # 5xx and 429 from the tracking server may pass on a later try; 4xx (not found, bad request) will not.
        status = exc.get_http_status_code()
        cls = TemporaryExecutorError if status >= 500 or status == 429 else ExecutorError
        raise cls(f"{what}: {exc.message}") from exc
    except OSError as exc:
        # Connection refused / reset / timeout talking to the tracking server.
        raise TemporaryExecutorError(f"{what}: {exc}") from exc


def _version_by_alias(client: Any, model: str, alias: str) -> Any:
    with _mlflow_errors(f"reading {model}@{alias}"):
        return client.get_model_version_by_alias(model, alias)


def live_text(model: str, alias: str, version: Any) -> str:
    """What the alias serves now and where that version came from (a ModelVersion's own fields): the warning's
    "What changed" line, e.g. "`recommender` v5 is @champion — registered 2026-12-02 12:01 UTC by alice, run
    `abc123`, source `runs:/abc123/model`". Fields MLflow left empty are left out."""
    made = getattr(version, "creation_timestamp", None)
    parts = [f"registered {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(made / 1000))}" if made else "registered"]
    if getattr(version, "user_id", None):
        parts[0] += f" by {version.user_id}"
    if getattr(version, "run_id", None):
        parts.append(f"run `{version.run_id}`")
    if getattr(version, "source", None):
        parts.append(f"source `{version.source}`")
    return f"`{model}` v{version.version} is @{alias} — " + ", ".join(parts)


class MlflowAlias:
    """Flip a registered model's alias back to a known-good version."""

    name: ClassVar[str] = "mlflow_alias"

    def __init__(self, config: MlflowAliasConfig, client: Any) -> None:
        self.config = config
        self.client = client

    def plan(self, *, context: StepContext) -> StepPlan:
        cfg = self.config
        current = _version_by_alias(self.client, cfg.model, cfg.alias)
        if context.pin is not None:
            with _mlflow_errors(f"reading {cfg.model} v{context.pin}"):
                target = self.client.get_model_version(cfg.model, context.pin)
        else:
            target = _version_by_alias(self.client, cfg.model, cfg.to)
        old, new = str(current.version), str(target.version)
        if str((getattr(target, "tags", None) or {}).get(BLOCK_TAG, "")).lower() == "true":
            # The version was rolled back from before: it is never a way back (unblocked only by hand).
            raise ExecutorError(f"{cfg.model} version {new} is tagged {BLOCK_TAG}=true (a version rolled back "
                                f"from before); it is not a way back until someone unblocks it")
        resource = f"models:/{cfg.model}@{cfg.alias}"
        return StepPlan(
            executor=self.name,
            summary=f"point {resource} from version {old} to version {new} (was @{cfg.to}, run {target.run_id})",
            changes=(Change(resource=resource, field="version", old=old, new=new),),
            command=(
                "python -c \"from mlflow import MlflowClient; "
                f"MlflowClient().set_registered_model_alias('{cfg.model}', '{cfg.alias}', '{new}')\""
            ),
            pin=new,
            noop=old == new,
            data={"model": cfg.model, "from_version": old, "to_version": new, "to_run_id": target.run_id,
                  "from_run_id": current.run_id},
            model_pin=ModelPin(model=cfg.model, version=new, run_id=target.run_id, replaces=old),
            live=live_text(cfg.model, cfg.alias, current),
        )

    def execute(self, *, plan: StepPlan, context: StepContext) -> StepOutcome:
        cfg = self.config
        planned_old, new = plan.data["from_version"], plan.data["to_version"]
        current = str(_version_by_alias(self.client, cfg.model, cfg.alias).version)
        if current == new:
            return StepOutcome(self.name, True, f"{cfg.model}@{cfg.alias} already at version {new}",
                               plan.changes, data=dict(plan.data, noop=True))
        if current != planned_old:
            raise ExecutorError(
                f"{cfg.model}@{cfg.alias} moved to version {current} since the plan (expected {planned_old}); "
                "refusing to overwrite a change made by someone else"
            )
        with _mlflow_errors(f"setting {cfg.model}@{cfg.alias} to version {new}"):
            self.client.set_registered_model_alias(cfg.model, cfg.alias, new)
        after = str(_version_by_alias(self.client, cfg.model, cfg.alias).version)
        if after != new:
            raise TemporaryExecutorError(f"{cfg.model}@{cfg.alias} reads back version {after}, expected {new}")
        return StepOutcome(
            self.name, True, f"{cfg.model}@{cfg.alias}: version {planned_old} -> {new}", plan.changes,
            data=dict(plan.data),
        )


def _build(config: MlflowAliasConfig, clients: Clients) -> MlflowAlias:
    if clients.mlflow is None:
        raise ExecutorError("mlflow_alias needs an MLflow client (set MLFLOW_TRACKING_URI)")
    return MlflowAlias(config, clients.mlflow)


SPEC = ExecutorSpec(name=MlflowAlias.name, config=MlflowAliasConfig, build=_build,
                    target=Target(r"[0-9]{1,9}", "an MLflow model version number, e.g. `3`",
                                  was="from_version"))
