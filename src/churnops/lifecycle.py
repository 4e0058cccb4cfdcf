"""The life-cycle operations the CLI exposes: train, promote, roll back and report status.

Each is one function over Settings returning a small result; the decisions (which version a rollback
picks, whether the gate lets a version through) are pure functions beside them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from churnops import data, registry, training
from churnops.config import Settings
from churnops.errors import GateRefusedError, NoRollbackTargetError, VersionNotFoundError
from churnops.gate import GateVerdict
from churnops.registry import VersionInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainReport:
    """What one `churnops train` produced."""

    run_id: str
    version: int
    metrics: dict[str, float]
    verdict: GateVerdict


@dataclass(frozen=True)
class AliasMove:
    """One move of the serving alias."""

    model_name: str
    alias: str
    from_version: int | None
    to_version: int

    def describe(self) -> str:
        """`churn_model@production: v1 -> v2`."""
        before = f"v{self.from_version}" if self.from_version is not None else "none"
        return f"{self.model_name}@{self.alias}: {before} -> v{self.to_version}"


@dataclass(frozen=True)
class Status:
    """The registry as churnops sees it."""

    tracking_uri: str
    model_name: str
    alias: str
    production_version: int | None
    versions: list[VersionInfo]


def train(
    settings: Settings,
    *,
    data_file: Path | None,
    version_label: str,
    seed: int,
    gate_f1: float,
    target: str = data.TARGET,
) -> TrainReport:
    """Train on a CSV (or the built-in synthetic data) and register the result as a new version."""
    registry.ping(settings)
    if data_file is None:
        dataset = data.from_frame(data.generate(seed=seed), source="built-in synthetic data")
    else:
        dataset = data.load_csv(data_file, target=target)
    result = training.train(dataset, seed=seed, gate_f1=gate_f1)
    registered = registry.log_training(
        settings, result, version_label=version_label, seed=seed, data_source=dataset.source
    )
    log.info("registered %s version %s", settings.model_name, registered.version)
    return TrainReport(registered.run_id, registered.version, result.metrics, result.verdict)


def _refuse_unless_gate_passed(settings: Settings, target: VersionInfo, force: bool) -> None:
    if target.gate_passed or force:
        return
    reason = target.tags.get("gate_reason", "it carries no gate verdict")
    raise GateRefusedError(
        f"version {target.version} failed the quality gate ({reason}); "
        f"{settings.alias} stays where it is. Pass --force to override."
    )


def _move(settings: Settings, target: VersionInfo, current: int | None) -> AliasMove:
    if current != target.version:
        registry.set_alias(settings, target.version)
    return AliasMove(settings.model_name, settings.alias, current, target.version)


def promote(settings: Settings, version: int | None = None, force: bool = False) -> AliasMove:
    """Point the serving alias at ``version`` (default: the latest), if its gate passed."""
    registry.ping(settings)
    if version is None:
        versions = registry.list_versions(settings)
        if not versions:
            raise VersionNotFoundError(
                f"{settings.model_name} has no versions yet; run `churnops train` first"
            )
        target = versions[-1]
    else:
        target = registry.get_version(settings, version)
    _refuse_unless_gate_passed(settings, target, force)
    return _move(settings, target, registry.alias_version(settings))


def rollback_target(versions: list[VersionInfo], current: int | None) -> VersionInfo | None:
    """The nearest version below ``current`` that passed the gate, or None."""
    if current is None:
        return None
    earlier = [v for v in versions if v.version < current and v.gate_passed]
    return earlier[-1] if earlier else None


def rollback(settings: Settings, version: int | None = None, force: bool = False) -> AliasMove:
    """Move the serving alias back to ``version``, or to the nearest earlier version that passed."""
    registry.ping(settings)
    current = registry.alias_version(settings)
    if version is not None:
        target = registry.get_version(settings, version)
        _refuse_unless_gate_passed(settings, target, force)
        return _move(settings, target, current)
    if current is None:
        raise NoRollbackTargetError(
            f"{settings.model_name}@{settings.alias} is not set, so there is nothing to roll back; "
            "use `churnops promote`"
        )
    found = rollback_target(registry.list_versions(settings), current)
    if found is None:
        raise NoRollbackTargetError(
            f"no version before v{current} passed the gate; {settings.alias} stays at v{current}"
        )
    return _move(settings, found, current)


def status(settings: Settings) -> Status:
    """Every version with its metrics, verdict and aliases."""
    registry.ping(settings)
    return Status(
        tracking_uri=settings.tracking_uri,
        model_name=settings.model_name,
        alias=settings.alias,
        production_version=registry.alias_version(settings),
        versions=registry.list_versions(settings),
    )
