"""Versions of the model and its aliases: what the registry knows of a version (its metrics and
gate verdict, read from its tags), and reading, setting and removing an alias. Every function takes
the alias it acts on explicitly where one is meant (production's by default).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow.exceptions import MlflowException

from churnops.config import Settings
from churnops.errors import VersionNotFoundError
from churnops.registry.connection import MISSING, client, mlflow_errors

METRIC_TAGS = ("accuracy", "precision", "recall", "f1", "roc_auc", "baseline_f1")
GATE_PASSED_TAG = "gate_passed"
GATE_F1_TAG = "gate_f1"
INFERENCE_TAG = "inference"
THRESHOLD_TAG = "threshold"
ID_COLUMN_TAG = "id_column"


@dataclass(frozen=True)
class VersionInfo:
    """What the registry knows of one version of the model."""

    version: int
    created: datetime
    run_id: str | None
    gate_passed: bool
    metrics: dict[str, float]
    aliases: tuple[str, ...]
    tags: dict[str, str]

    @property
    def f1(self) -> float | None:
        """Held-out F1, or None for a version registered outside churnops."""
        return self.metrics.get("f1")


def version_info(
    version: int,
    run_id: str | None,
    tags: dict[str, str],
    created: datetime,
    aliases: tuple[str, ...] = (),
) -> VersionInfo:
    """A version as churnops reads it from its tags: metrics and gate verdict."""
    metrics = {}
    for name in METRIC_TAGS:
        with contextlib.suppress(KeyError, ValueError):
            metrics[name] = float(tags[name])
    return VersionInfo(
        version=version,
        created=created,
        run_id=run_id,
        gate_passed=tags.get(GATE_PASSED_TAG) == "true",
        metrics=metrics,
        aliases=aliases,
        tags=tags,
    )


def _version_info(mv: Any, aliases: tuple[str, ...] | None = None) -> VersionInfo:
    return version_info(
        int(mv.version),
        mv.run_id or None,
        dict(mv.tags or {}),
        datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC),
        tuple(sorted(mv.aliases or ())) if aliases is None else aliases,
    )


def set_version_tags(settings: Settings, version: int, tags: dict[str, str]) -> None:
    """Set tags on one version (monitoring's latest figures)."""
    tracking = client(settings)
    with mlflow_errors(settings):
        for key, value in tags.items():
            tracking.set_model_version_tag(settings.model_name, str(version), key, value)


def list_versions(settings: Settings) -> list[VersionInfo]:
    """Every version of the model, oldest first; empty when the model is not registered yet."""
    tracking = client(settings)
    with mlflow_errors(settings):
        wanted = f"name = '{settings.model_name}'"
        found = tracking.search_model_versions(wanted, max_results=10_000)
        if not found:
            return []
        # NB: search results carry no aliases; the registered model holds them all.
        by_version: dict[int, list[str]] = {}
        for alias, version in tracking.get_registered_model(settings.model_name).aliases.items():
            by_version.setdefault(int(version), []).append(alias)
    return sorted(
        (_version_info(mv, tuple(sorted(by_version.get(int(mv.version), [])))) for mv in found),
        key=lambda v: v.version,
    )


def get_version(settings: Settings, version: int) -> VersionInfo:
    """One version, or VersionNotFoundError naming the versions that exist."""
    with mlflow_errors(settings):
        try:
            return _version_info(
                client(settings).get_model_version(settings.model_name, str(version))
            )
        except MlflowException as exc:
            if exc.error_code not in MISSING:
                raise
    existing = [v.version for v in list_versions(settings)]
    known = ", ".join(map(str, existing)) if existing else "none yet (run `churnops train`)"
    raise VersionNotFoundError(
        f"{settings.model_name} has no version {version}; existing versions: {known}"
    )


def require_model(settings: Settings) -> None:
    """VersionNotFoundError, naming the registered models, when ``settings.model_name`` is not
    one of them (a misspelt CHURNOPS_MODEL_NAME)."""
    tracking = client(settings)
    with mlflow_errors(settings):
        try:
            tracking.get_registered_model(settings.model_name)
            return
        except MlflowException as exc:
            if exc.error_code not in MISSING:
                raise
        names = sorted(m.name for m in tracking.search_registered_models(max_results=50))
    known = ", ".join(names) if names else "none yet (run `churnops train`)"
    raise VersionNotFoundError(
        f"no registered model {settings.model_name!r}; registered models: {known} "
        "(set CHURNOPS_MODEL_NAME to one of them)"
    )


def latest_passing_version(settings: Settings) -> int | None:
    """The highest version number whose gate passed, or None."""
    with mlflow_errors(settings):
        found = client(settings).search_model_versions(
            f"name = '{settings.model_name}' and tags.{GATE_PASSED_TAG} = 'true'",
            max_results=1,
            order_by=["version_number DESC"],
        )
    return int(found[0].version) if found else None


def alias_target(settings: Settings, alias: str | None = None) -> tuple[int, dict[str, str]] | None:
    """The version ``alias`` (default: the serving alias) points at and its tags, in one request;
    None when the alias is not set."""
    with mlflow_errors(settings):
        try:
            mv = client(settings).get_model_version_by_alias(
                settings.model_name, alias or settings.alias
            )
        except MlflowException as exc:
            if exc.error_code in MISSING:
                return None
            raise
    return int(mv.version), dict(mv.tags or {})


def alias_version(settings: Settings, alias: str | None = None) -> int | None:
    """The version ``alias`` (default: the serving alias) points at, or None when it is not set."""
    target = alias_target(settings, alias)
    return None if target is None else target[0]


def set_alias(settings: Settings, version: int, alias: str | None = None) -> None:
    """Point ``alias`` (default: the serving alias) at ``version``."""
    with mlflow_errors(settings):
        client(settings).set_registered_model_alias(
            settings.model_name, alias or settings.alias, str(version)
        )


def delete_alias(settings: Settings, alias: str | None = None) -> None:
    """Remove ``alias`` (default: the serving alias) from the model; nothing happens when it is
    not set."""
    with mlflow_errors(settings):
        try:
            client(settings).delete_registered_model_alias(
                settings.model_name, alias or settings.alias
            )
        except MlflowException as exc:
            if exc.error_code not in MISSING:
                raise
