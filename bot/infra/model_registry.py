"""The bot's own reads and writes on the MLflow model registry: which version an alias points at, the
`rollback_blocked` tag that freezes a bad version, and the promotion the gate performs.

Called by bot.slo.gate, bot.incidents.planning and bot.incidents.oncall. The rollback itself is the
executors.mlflow_alias executor; this module never flips an alias back. Versions are normalised to str (int from a
sqlite store, str over HTTP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException

BLOCK_TAG = "rollback_blocked"
INCIDENT_TAG = "rollback_incident"


class RegistryError(Exception):
    """The model registry could not be read or written."""


@dataclass(frozen=True)
class Version:
    model: str
    version: str
    run_id: str | None
    tags: dict[str, str]

    @property
    def blocked(self) -> bool:
        return self.tags.get(BLOCK_TAG, "").lower() == "true"


class ModelRegistry:
    def __init__(self, client: Any) -> None:
        self.client = client

    def by_alias(self, model: str, alias: str) -> Version | None:
        """The version behind an alias, or None when the alias is not set."""
        try:
            mv = self.client.get_model_version_by_alias(model, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None  # alias (or model) not set: a normal answer, not a failure
            raise RegistryError(f"reading {model}@{alias}: {exc.message}") from exc
        return Version(model, str(mv.version), mv.run_id, dict(mv.tags or {}))

    def aliases(self, model: str) -> dict[str, str]:
        """Every alias of a model and its version, in one read ({} when the model does not exist)."""
        try:
            found = self.client.get_registered_model(model)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise RegistryError(f"reading the aliases of {model}: {exc.message}") from exc
        return {str(alias): str(version) for alias, version in (found.aliases or {}).items()}

    def all_aliases(self, page_size: int = 1000) -> dict[str, dict[str, str]]:
        """The aliases of every registered model, a page of `page_size` models per read."""
        out: dict[str, dict[str, str]] = {}
        token = None
        try:
            while True:
                page = self.client.search_registered_models(max_results=page_size, page_token=token)
                for found in page:
                    out[found.name] = {str(a): str(v) for a, v in (found.aliases or {}).items()}
                token = page.token
                if not token:
                    return out
        except MlflowException as exc:
            raise RegistryError(f"listing the registered models: {exc.message}") from exc

    def get(self, model: str, version: str) -> Version:
        try:
            mv = self.client.get_model_version(model, version)
        except MlflowException as exc:
            raise RegistryError(f"reading {model} v{version}: {exc.message}") from exc
        return Version(model, str(mv.version), mv.run_id, dict(mv.tags or {}))

    def block(self, model: str, version: str, incident_id: int) -> None:
        try:
            self.client.set_model_version_tag(model, version, BLOCK_TAG, "true")
            self.client.set_model_version_tag(model, version, INCIDENT_TAG, str(incident_id))
        except MlflowException as exc:
            raise RegistryError(f"tagging {model} v{version} {BLOCK_TAG}: {exc.message}") from exc

    def unblock(self, model: str, version: str) -> None:
        """Lift `rollback_blocked` from a version (only ever on an explicit `unfreeze --unblock`)."""
        try:
            self.client.get_model_version(model, version)
            for key in (BLOCK_TAG, INCIDENT_TAG):
                self.client.delete_model_version_tag(model, version, key)
        except MlflowException as exc:
            raise RegistryError(f"unblocking {model} v{version}: {exc.message}") from exc

    def promote(self, model: str, *, version: str, to: str, previous: str) -> str | None:
        """Point `to` at `version`, and `previous` at what `to` pointed at before. Returns that old version."""
        old = self.by_alias(model, to)
        try:
            if old is not None and old.version == version:  # promoted meanwhile: previous must stay the one before
                return None
            if old is not None:
                self.client.set_registered_model_alias(model, previous, old.version)
            self.client.set_registered_model_alias(model, to, version)
        except MlflowException as exc:
            raise RegistryError(f"promoting {model} v{version} to @{to}: {exc.message}") from exc
        return old.version if old else None
