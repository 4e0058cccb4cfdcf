"""The life-cycle operations the CLI exposes: train, promote, roll back and report status.

Each is one function over Settings returning a small result; the decisions (which version a rollback
picks, whether the gate lets a version through) are pure functions beside them.
"""

from __future__ import annotations

import getpass
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException
from sklearn.metrics import f1_score

from churnops import data, gate, ledger, registry, training
from churnops.config import Settings
from churnops.errors import (
    ChurnopsError,
    GateRefusedError,
    NoRollbackTargetError,
    StaleMoveError,
    TrackingUnavailableError,
    VersionNotFoundError,
)
from churnops.gate import GateVerdict
from churnops.predict import Engine, smoke_test
from churnops.registry import VersionInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainReport:
    """What one `churnops train` produced."""

    run_id: str
    version: int
    metrics: dict[str, float]
    verdict: GateVerdict
    data_report: data.DataReport
    model_type: str
    threshold: float
    cv_f1: dict[str, float]
    fit_seconds: float


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
class MoveResult:
    """An alias move with the gate report that allowed it and its ledger entry."""

    move: AliasMove
    report: gate.GateReport
    entry: ledger.Entry


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
    positive_label: str | None = None,
    kind: training.ModelKind | None = None,
) -> TrainReport:
    """Train on a table (or the built-in synthetic data) and register the result as a new
    version, with its evidence. ``kind`` defaults to the course's logistic regression on the
    built-in data and to ``auto`` on a user's table."""
    from churnops import evidence

    registry.ping(settings)
    if data_file is None:
        dataset = data.from_frame(data.generate(seed=seed), source="built-in synthetic data")
    else:
        dataset = data.load_table(data_file, target=target, positive_label=positive_label)
    if kind is None:
        kind = "logreg" if data_file is None else "auto"
    result = training.train(dataset, seed=seed, gate_f1=gate_f1, kind=kind)
    proof = evidence.build(
        result.model,
        result.holdout_features,
        result.holdout_target,
        result.threshold,
        dataset.report,
        seed,
    )
    registered = registry.log_training(
        settings, result, version_label=version_label, seed=seed, dataset=dataset, evidence=proof
    )
    log.info("registered %s version %s", settings.model_name, registered.version)
    return TrainReport(
        registered.run_id,
        registered.version,
        result.metrics,
        result.verdict,
        dataset.report,
        result.kind,
        result.threshold,
        result.cv_f1,
        result.seconds,
    )


def actor_of(settings: Settings) -> str:
    """Who is moving the alias: --actor / CHURNOPS_ACTOR, else the user the tracking server
    authenticated (MLFLOW_TRACKING_USERNAME), else the OS user."""
    return settings.actor or os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def _f1(labels: np.ndarray, truth: np.ndarray) -> float:
    return float(f1_score(truth, labels, zero_division=0))


def _champion_criterion(
    settings: Settings,
    candidate: VersionInfo,
    engine: Engine,
    champion: int,
    champion_inputs: list[dict[str, str]] | None,
    tolerance: float,
) -> gate.Criterion:
    name, threshold = "champion vs challenger", f">= champion - {tolerance:.2f}"
    holdout = registry.load_holdout(settings, candidate)
    if holdout is None:
        return gate.Criterion(
            name,
            False,
            "not scored",
            threshold,
            f"v{candidate.version} has no logged held-out split to score on",
        )
    features = holdout.drop(columns=[training.HOLDOUT_TARGET])
    truth = holdout[training.HOLDOUT_TARGET].to_numpy()
    try:
        if champion_inputs is None:
            raise ChurnopsError(f"v{champion}'s signature cannot be read")
        champion_engine = registry.load_version(settings, champion).engine
        # NB: a column the candidate dropped reaches the champion as missing, as it would from a
        # client that stopped sending it; the signature criterion reports the drop itself.
        wanted = [c["name"] for c in champion_inputs]
        champion_features = features.reindex(columns=wanted)
        champion_f1 = _f1(champion_engine.predict_frame(champion_features).label, truth)
    except TrackingUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken champion must not block its replacement
        return gate.Criterion(
            name,
            True,
            "not compared",
            threshold,
            f"v{champion} cannot be loaded or score the split, so there is nothing to compare "
            f"against: {str(exc)[:300]}",
        )
    candidate_f1 = _f1(engine.predict_frame(features).label, truth)
    return gate.check_champion(candidate_f1, champion_f1, champion, tolerance)


def gate_report(
    settings: Settings,
    version: int,
    champion: int | None,
    tolerance: float = gate.DEFAULT_TOLERANCE,
    compare_champion: bool = True,
) -> gate.GateReport:
    """Check every criterion for putting ``version`` where ``champion`` serves now."""
    info = registry.get_version(settings, version)
    gate_f1 = float(info.tags.get("gate_f1", gate.DEFAULT_GATE_F1))
    criteria = [
        gate.check_quality(info.metrics.get("f1"), info.metrics.get("baseline_f1"), gate_f1)
    ]
    engine: Engine | None = None
    try:
        loaded = registry.load_version(settings, version)
        smoke_test(loaded.engine, loaded.input_example, version)
        engine = loaded.engine
        smoke = gate.Criterion("smoke test", True, "predicts", "loads and predicts its example")
    except TrackingUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to load or predict fails the criterion
        smoke = gate.Criterion(
            "smoke test", False, "failed", "loads and predicts its example", str(exc)[:500]
        )
    # NB: comparing with the champion needs a candidate that loads; a failed smoke test already
    # refuses it, so those criteria are left out rather than failed twice.
    if champion is not None and champion != version and engine is not None:
        try:
            champion_inputs: list[dict[str, str]] | None = registry.signature_inputs(
                settings, champion
            )
        except MlflowException:
            champion_inputs = None  # a broken champion: nothing to stay compatible with
        criteria.append(
            gate.check_signature(
                champion_inputs, registry.signature_inputs(settings, version), champion
            )
        )
        if compare_champion:
            criteria.append(
                _champion_criterion(settings, info, engine, champion, champion_inputs, tolerance)
            )
    criteria.append(smoke)
    return gate.GateReport(version, tuple(criteria))


def _with_external_moves(
    settings: Settings, history: list[ledger.Entry], current: int | None
) -> list[ledger.Entry]:
    """Record a move made outside churnops (MLflow UI, raw client) that the ledger lacks."""
    head = history[-1].to_version if history else None
    if current is None or current == head:
        return history
    entry = ledger.append(
        settings,
        actor="unknown (outside churnops)",
        action="external",
        from_version=head,
        to_version=current,
        reason="alias moved outside churnops; detected by churnops",
        after=history,
    )
    return [*history, entry]


def _move(
    settings: Settings,
    *,
    action: str,
    target: int,
    decided_from: int | None,
    report: gate.GateReport,
    force: bool,
    reason: str,
) -> MoveResult:
    """Move the alias to ``target`` under the lock, if nothing changed since the decision."""
    if not report.passed and not force:
        failed = ", ".join(c.name for c in report.failures)
        raise GateRefusedError(
            f"version {target} failed the gate ({failed}); {settings.alias} stays at "
            + (f"v{decided_from}" if decided_from is not None else "none")
            + ". Pass --force --reason TEXT to override.",
            report,
        )
    actor = actor_of(settings)
    with ledger.locked(settings, actor):
        history = ledger.entries(settings)
        current = registry.alias_version(settings)
        history = _with_external_moves(settings, history, current)
        if current != decided_from:
            before = f"v{decided_from}" if decided_from is not None else "none"
            raise StaleMoveError(
                f"{settings.alias} moved from {before} to v{current} while you were "
                f"{'promoting' if action == 'promote' else 'rolling back'}; re-run"
            )
        if current != target:
            registry.set_alias(settings, target)
        entry = ledger.append(
            settings,
            actor=actor,
            action=action,
            from_version=current,
            to_version=target,
            reason=reason,
            override=force and not report.passed,
            gate=report.to_dict(),
            after=history,
        )
    move = AliasMove(settings.model_name, settings.alias, current, target)
    return MoveResult(move, report, entry)


def _check_force(force: bool, reason: str) -> None:
    if force and not reason.strip():
        raise ChurnopsError("--force needs --reason TEXT: say why the gate is overridden")


def promote(
    settings: Settings,
    version: int | None = None,
    force: bool = False,
    reason: str = "",
    tolerance: float = gate.DEFAULT_TOLERANCE,
) -> MoveResult:
    """Point the serving alias at ``version`` (default: the latest) if it passes the gate."""
    _check_force(force, reason)
    registry.ping(settings)
    if version is None:
        versions = registry.list_versions(settings)
        if not versions:
            raise VersionNotFoundError(
                f"{settings.model_name} has no versions yet; run `churnops train` first"
            )
        version = versions[-1].version
    else:
        registry.get_version(settings, version)
    current = registry.alias_version(settings)
    report = gate_report(settings, version, current, tolerance)
    return _move(
        settings,
        action="promote",
        target=version,
        decided_from=current,
        report=report,
        force=force,
        reason=reason,
    )


def rollback_target(versions: list[VersionInfo], current: int | None) -> VersionInfo | None:
    """The nearest version below ``current`` that passed the gate, or None."""
    if current is None:
        return None
    earlier = [v for v in versions if v.version < current and v.gate_passed]
    return earlier[-1] if earlier else None


def undo_target(settings: Settings, current: int) -> int | None:
    """The version production held before ``current`` was put there, per the ledger; else the
    nearest lower-numbered version that passed the gate."""
    stack = ledger.production_stack(ledger.entries(settings))
    if not stack or stack[-1] != current:
        stack.append(current)  # a move the ledger has not recorded yet
    if len(stack) >= 2:
        return stack[-2]
    found = rollback_target(registry.list_versions(settings), current)
    return found.version if found else None


def rollback(
    settings: Settings, version: int | None = None, force: bool = False, reason: str = ""
) -> MoveResult:
    """Undo the last production change, or move the alias to ``version``; gate-checked either way
    (without the champion comparison)."""
    _check_force(force, reason)
    registry.ping(settings)
    current = registry.alias_version(settings)
    if version is not None:
        registry.get_version(settings, version)
        target, action = version, "rollback"
    else:
        if current is None:
            raise NoRollbackTargetError(
                f"{settings.model_name}@{settings.alias} is not set, so there is nothing to roll "
                "back; use `churnops promote`"
            )
        found = undo_target(settings, current)
        if found is None:
            raise NoRollbackTargetError(
                f"nothing earlier to roll back to: the ledger has no production version before "
                f"v{current} and no lower version passed the gate; {settings.alias} stays at "
                f"v{current}"
            )
        target, action = found, "undo"
    report = gate_report(settings, target, current, compare_champion=False)
    return _move(
        settings,
        action=action,
        target=target,
        decided_from=current,
        report=report,
        force=force,
        reason=reason,
    )


def history(settings: Settings) -> list[ledger.Entry]:
    """Every alias move, newest first, including moves made outside churnops."""
    registry.ping(settings)
    entries = ledger.entries(settings)
    current = registry.alias_version(settings)
    head = entries[-1].to_version if entries else None
    if current is not None and current != head:
        with ledger.locked(settings, actor_of(settings)):
            entries = _with_external_moves(
                settings, ledger.entries(settings), registry.alias_version(settings)
            )
    return list(reversed(entries))


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
