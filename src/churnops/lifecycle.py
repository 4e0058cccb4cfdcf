"""The life-cycle operations the CLI exposes: train, promote, roll back and report status.

Each is one function over Settings returning a small result; the decisions (which version a rollback
picks, whether the gate lets a version through) are pure functions beside them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from sklearn.metrics import f1_score

from churnops import data, gate, ledger, moves, training
from churnops.config import Settings
from churnops.errors import (
    ChurnopsError,
    GateUnavailableError,
    ModelFilesMissingError,
    NoRollbackTargetError,
    StaleMoveError,
    TrackingUnavailableError,
    UnsafeModelError,
    VersionNotFoundError,
)
from churnops.gate import GateVerdict
from churnops.predict import Engine, smoke_test
from churnops.registry import connection, loading, runs, versions
from churnops.registry.versions import VersionInfo

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
    search: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as `churnops train --json` prints it."""
        return {
            "run_id": self.run_id,
            "version": self.version,
            "metrics": self.metrics,
            "gate_passed": self.verdict.passed,
            "gate_reason": self.verdict.reason,
            "model_type": self.model_type,
            "threshold": self.threshold,
            "cv_f1": self.cv_f1,
            "fit_seconds": self.fit_seconds,
            "data_report": self.data_report.to_dict(),
            **({"search": self._search_summary()} if self.search is not None else {}),
        }

    def _search_summary(self) -> dict[str, Any]:
        """The search without its trial list (kept in the run's search/trials.json)."""
        return {k: v for k, v in (self.search or {}).items() if k != "trials"}

    def render(self, model_name: str) -> str:
        """The data, the model chosen, the run and version, the metrics and the gate."""
        metrics = "  ".join(f"{k}={v:.4f}" for k, v in self.metrics.items())
        chosen = "  ".join(f"{k}={v:.4f}" for k, v in self.cv_f1.items())
        searched = ""
        if self.search is not None:
            best = self.search["best"]
            searched = (
                f"search: {self.search['completed_trials']} configurations in "
                f"{self.search['seconds']:.1f} s of a {self.search['budget_seconds']:.0f} s "
                f"budget; best {best['family']} {best['params'] or '(defaults)'}: cross-validated "
                f"f1 {best['cv_f1']:.4f} (the default's {self.search['default_cv_f1']:.4f})\n"
            )
        return (
            f"{self.data_report.render()}\n"
            f"model: {self.model_type} (cross-validated f1 on the training split: {chosen}); "
            f"threshold {self.threshold:.4f}; fitted in {self.fit_seconds:.1f} s\n"
            f"{searched}"
            f"run {self.run_id}\n"
            f"registered {model_name} version {self.version}\n"
            f"held-out metrics: {metrics}\n"
            f"gate: {'PASS' if self.verdict.passed else 'FAIL'} ({self.verdict.reason})\n"
            f"reproduce: churnops reproduce {self.run_id}"
        )


@dataclass(frozen=True)
class Status:
    """The registry as churnops sees it."""

    tracking_uri: str
    model_name: str
    alias: str
    production_version: int | None
    versions: list[VersionInfo]

    def to_dict(self) -> dict[str, Any]:
        """The registry as `churnops status --json` prints it."""
        return {
            "tracking_uri": self.tracking_uri,
            "reachable": True,
            "model_name": self.model_name,
            "alias": self.alias,
            "production_version": self.production_version,
            "versions": [
                {
                    "version": v.version,
                    "created": v.created.isoformat(),
                    "f1": v.f1,
                    "gate_passed": v.gate_passed,
                    "aliases": list(v.aliases),
                    "run_id": v.run_id,
                    "monitor": {
                        k.removeprefix("monitor."): val
                        for k, val in v.tags.items()
                        if k.startswith("monitor.")
                    },
                }
                for v in self.versions
            ],
        }

    def render(self) -> str:
        """The alias and a table of every version, as `churnops status` prints it."""
        lines = [
            f"tracking URI: {self.tracking_uri} (answering)",
            f"{self.model_name}@{self.alias}: "
            + (f"v{self.production_version}" if self.production_version else "not set"),
        ]
        if not self.versions:
            lines.append("no versions yet: run `churnops train`")
            return "\n".join(lines)
        # NB: the live column appears once `churnops monitor` has tagged a version.
        live = any("monitor.label_coverage" in v.tags for v in self.versions)
        heading = f"{'live f1 (realised/estimated, coverage)':<46}  " if live else ""
        lines.append(
            f"{'version':>7}  {'created (UTC)':<19}  {'f1':>6}  {'gate':<4}  {heading}aliases"
        )
        for v in self.versions:
            f1 = f"{v.f1:.4f}" if v.f1 is not None else "-"
            cell = f"{_live(v.tags):<46}  " if live else ""
            lines.append(
                f"{v.version:>7}  {v.created:%Y-%m-%d %H:%M:%S}  {f1:>6}  "
                f"{'pass' if v.gate_passed else 'FAIL':<4}  {cell}{','.join(v.aliases)}".rstrip()
            )
        return "\n".join(lines)


def _live(tags: dict[str, str]) -> str:
    """A version's F1 over its monitored period from its tags, the figures `churnops monitor`
    printed, with the rows they rest on."""
    if "monitor.label_coverage" not in tags:
        return "-"
    coverage = float(tags["monitor.label_coverage"])
    rows = f" of {tags['monitor.rows']} rows" if "monitor.rows" in tags else ""
    return (
        f"{tags.get('monitor.realised_f1', '-')}/{tags.get('monitor.estimated_f1', '-')}, "
        f"{coverage:.0%}{rows}"
    )


def train(
    settings: Settings,
    *,
    data_file: Path | None,
    version_label: str | None,
    seed: int,
    gate_f1: float,
    target: str = data.TARGET,
    positive_label: str | None = None,
    kind: training.ModelKind | None = None,
    search_budget: float | None = None,
    extra_params: dict[str, str] | None = None,
) -> TrainReport:
    """Train on a table (or the built-in synthetic data) and register the result as a new
    version, with its evidence. ``kind`` defaults to the course's logistic regression on the
    built-in data and to ``auto`` on a user's table or with a search (``search_budget``
    seconds)."""
    from churnops import evidence

    connection.ping(settings)
    dataset = data.load(data_file, seed, target=target, positive_label=positive_label)
    if kind is None:
        kind = "logreg" if data_file is None and search_budget is None else "auto"
    result = training.train(
        dataset, seed=seed, gate_f1=gate_f1, kind=kind, search_budget=search_budget
    )
    if extra_params:
        result = replace(result, params={**result.params, **extra_params})
    proof = evidence.build(
        result.model,
        result.holdout_features,
        result.holdout_target,
        result.threshold,
        dataset.report,
        seed,
    )
    moves.failpoint(settings, "before-logging")
    registered = runs.log_training(
        settings,
        result,
        version_label=version_label,
        seed=seed,
        dataset=dataset,
        evidence=proof,
        reference=monitoring_reference(result, seed),
        positive_label=positive_label,
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
        result.search.to_dict() if result.search is not None else None,
    )


REFERENCE_ROWS = 10_000


def monitoring_reference(result: training.TrainingResult, seed: int) -> runs.Reference:
    """What monitoring will compare this version's traffic with: up to 10,000 training rows,
    the held-out probabilities and outcomes, and the calibration fitted on them."""
    from churnops.monitoring.estimate import fit_calibration

    rows = result.train_features
    if len(rows) > REFERENCE_ROWS:
        rows = rows.sample(REFERENCE_ROWS, random_state=seed)
    probability = result.model.predict_proba(result.holdout_features)[:, 1]
    truth = result.holdout_target
    scores = pd.DataFrame(
        {
            "probability": probability,
            "label": (probability >= result.threshold).astype(int),
            "outcome": truth,
        }
    )
    calibration = fit_calibration(probability, truth, seed)
    return runs.Reference(
        rows.reset_index(drop=True),
        scores,
        calibration.to_dict(),
        runs.column_kinds(result.train_features),
    )


def _f1(labels: np.ndarray, truth: np.ndarray) -> float:
    return float(f1_score(truth, labels, zero_division=0))


def _known_unloadable(exc: BaseException) -> bool:
    """True for failures that retrying cannot cure: a version refused as unsafe, deleted, or
    whose files are gone; a timeout or a refused connection is not one of them."""
    if isinstance(
        exc, UnsafeModelError | ModelFilesMissingError | VersionNotFoundError | FileNotFoundError
    ):
        return True
    return isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def _could_not_compare(champion: int, exc: BaseException) -> GateUnavailableError:
    return GateUnavailableError(
        f"could not compare with the champion v{champion}: {str(exc)[:300]}; nothing was "
        "changed, retry"
    )


def _not_compared(
    name: gate.Criteria, threshold: str, champion: int, exc: BaseException
) -> gate.Criterion:
    return gate.Criterion(
        name,
        True,
        "not compared",
        threshold,
        f"v{champion} is known unloadable, so there is nothing to compare against: "
        f"{str(exc)[:300]}",
    )


def _champion_criterion(
    settings: Settings,
    candidate: VersionInfo,
    engine: Engine,
    champion: int,
    champion_inputs: list[dict[str, str]] | None,
    tolerance: float,
) -> gate.Criterion:
    name, threshold = gate.Criteria.CHAMPION, f">= champion - {tolerance:.2f}"
    holdout = loading.load_holdout(settings, candidate)
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
        champion_engine = loading.load_version(settings, champion).engine
    except TrackingUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - sorted into "known unloadable" and "retry"
        if _known_unloadable(exc):
            return _not_compared(name, threshold, champion, exc)
        raise _could_not_compare(champion, exc) from None
    if champion_inputs is None:
        return _not_compared(name, threshold, champion, ChurnopsError("its signature is gone"))
    # NB: a column the candidate dropped reaches the champion as missing, as it would from a
    # client that stopped sending it; the signature criterion reports the drop itself.
    wanted = [c["name"] for c in champion_inputs]
    lacking = [
        c["name"]
        for c in champion_inputs
        if c["name"] not in features.columns and c.get("required", "true") == "true"
    ]
    if lacking:
        # NB: all-missing rows would score (the pipeline imputes), and F1 0.0000 would "pass":
        # a champion that needs inputs the candidate's table lacks cannot be compared on it.
        return gate.Criterion(
            name,
            False,
            gate.NOT_COMPARABLE,
            threshold,
            f"v{champion} needs {len(lacking)} input(s) v{candidate.version}'s table lacks "
            f"({', '.join(lacking[:5])}{', ...' if len(lacking) > 5 else ''}): another table",
        )
    try:
        champion_f1 = _f1(
            champion_engine.predict_frame(features.reindex(columns=wanted)).label, truth
        )
    except Exception as exc:  # noqa: BLE001 - a loaded champion failing here is no network error
        # NB: a retry cannot help (the rows and the model are on this machine), so this is a
        # failed criterion, overridable with --force like the signature one it usually joins.
        return gate.Criterion(
            name,
            False,
            gate.NOT_COMPARABLE,
            threshold,
            f"v{champion} cannot score v{candidate.version}'s held-out split: {str(exc)[:300]}",
        )
    candidate_f1 = _f1(engine.predict_frame(features).label, truth)
    return gate.check_champion(candidate_f1, champion_f1, champion, tolerance)


def _champion_signature(settings: Settings, champion: int) -> list[dict[str, str]] | None:
    """The champion's input columns; None when it is known unloadable."""
    try:
        return loading.signature_inputs(settings, champion)
    except TrackingUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - sorted into "known unloadable" and "retry"
        if _known_unloadable(exc):
            return None
        raise _could_not_compare(champion, exc) from None


def _full_precision(settings: Settings, info: versions.VersionInfo) -> dict[str, float]:
    """The version's metrics as its run logged them: its tags are rounded for reading, and the
    gate must not pass an F1 of 0.49996 as 0.5000."""
    if not info.run_id:
        return info.metrics
    try:
        _, logged, _ = runs.run_record(settings, info.run_id)
    except VersionNotFoundError:
        return info.metrics
    return info.metrics | {k: v for k, v in logged.items() if k in info.metrics}


def gate_report(
    settings: Settings,
    version: int,
    champion: int | None,
    tolerance: float = gate.DEFAULT_TOLERANCE,
    compare_champion: bool = True,
) -> gate.GateReport:
    """Check every criterion for putting ``version`` where ``champion`` serves now.

    GateUnavailableError when a criterion cannot be checked for a reason a retry may cure: the
    gate fails closed."""
    info = versions.get_version(settings, version)
    trained_gate = float(info.tags.get(versions.GATE_F1_TAG, gate.DEFAULT_GATE_F1))
    # NB: the trainer's own gate_f1 can be anything (`train --gate-f1 0`); the promoter's
    # policy floor is the least it may be.
    gate_f1 = max(trained_gate, settings.gate_f1_min)
    metrics = _full_precision(settings, info)
    criteria = [gate.check_quality(metrics.get("f1"), metrics.get("baseline_f1"), gate_f1)]
    engine: Engine | None = None
    digests: dict[str, str] = {}
    try:
        loaded = loading.load_version(settings, version)
        smoke_test(loaded.engine, loaded.input_example, version)
        engine, digests = loaded.engine, loaded.digests
        smoke = gate.Criterion(
            gate.Criteria.SMOKE_TEST, True, "predicts", "loads and predicts its example"
        )
    except TrackingUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to load or predict fails the criterion
        smoke = gate.Criterion(
            gate.Criteria.SMOKE_TEST,
            False,
            "failed",
            "loads and predicts its example",
            str(exc)[:500],
        )
    # NB: comparing with the champion needs a candidate that loads; a failed smoke test already
    # refuses it, so those criteria are left out rather than failed twice.
    if champion is not None and champion != version and engine is not None:
        champion_inputs = _champion_signature(settings, champion)
        criteria.append(
            gate.check_signature(
                champion_inputs, loading.signature_inputs(settings, version), champion
            )
        )
        if compare_champion:
            criteria.append(
                _champion_criterion(settings, info, engine, champion, champion_inputs, tolerance)
            )
    criteria.append(smoke)
    return gate.GateReport(version, tuple(criteria), digests)


def promote(
    settings: Settings,
    version: int | None = None,
    force: bool = False,
    reason: str = "",
    tolerance: float = gate.DEFAULT_TOLERANCE,
    allow_schema_change: bool = False,
) -> moves.MoveResult:
    """Point the serving alias at ``version`` (default: the latest) if it passes the gate; a
    version already in production changes nothing. ``allow_schema_change`` lets a version that
    reads another table through, and nothing else."""
    moves.check_force(force, reason, allow_schema_change)
    connection.ping(settings)
    if version is None:
        known = versions.list_versions(settings)
        if not known:
            raise VersionNotFoundError(
                f"{settings.model_name} has no versions yet; run `churnops train` first"
            )
        version = known[-1].version
    else:
        versions.get_version(settings, version)
    current = versions.alias_version(settings)
    if current == version:
        return moves.unchanged(settings, settings.alias, version)
    report = gate_report(settings, version, current, tolerance)
    live = live_comparison(settings, version)
    if live is not None:
        report = gate.GateReport(version, (*report.criteria, live), report.digests)
    return moves.move(
        settings,
        settings.alias,
        action="promote",
        target=version,
        decided_from=current,
        report=report,
        force=force,
        reason=reason,
        allow_schema_change=allow_schema_change,
    )


def live_comparison(settings: Settings, version: int) -> gate.Criterion | None:
    """The challenger comparison of ``version`` on live traffic as a gate criterion: it fails
    when the version was significantly worse than production; None when ``version`` never ran
    as a challenger (no rows in the prediction store)."""
    from churnops.monitoring import compare

    try:
        found = compare.compare(settings, version, log_to_mlflow=False, measure_latency=False)
    except OSError as exc:
        raise GateUnavailableError(
            f"could not read the prediction store for v{version}'s live comparison: {exc}; "
            "nothing was changed, retry"
        ) from None
    if not found.found_rows:
        return None
    verdict = found.verdict
    value = "undecided" if verdict.result == "no evidence yet" else verdict.result
    if verdict.f1_difference is not None:
        value += f" (F1 {verdict.f1_difference:+.4f})"
    return gate.Criterion(
        gate.Criteria.LIVE_COMPARISON,
        verdict.result != "worse",
        value,
        "not significantly worse than production",
        verdict.message,
    )


def rollback_target(versions: list[VersionInfo], current: int | None) -> VersionInfo | None:
    """The nearest version below ``current`` that passed the gate, or None."""
    if current is None:
        return None
    earlier = [v for v in versions if v.version < current and v.gate_passed]
    return earlier[-1] if earlier else None


def undo_target(settings: Settings, current: int) -> int | None:
    """The version production held before ``current`` was put there, per the ledger; else the
    nearest lower-numbered version that passed the gate. Never ``current`` itself."""
    stack = ledger.production_stack(ledger.entries(settings), settings.alias)
    if not stack or stack[-1] != current:
        stack.append(current)  # a move the ledger has not recorded yet
    if len(stack) >= 2 and stack[-2] != current:
        return stack[-2]
    found = rollback_target(versions.list_versions(settings), current)
    return found.version if found else None


def rollback(
    settings: Settings,
    version: int | None = None,
    force: bool = False,
    reason: str = "",
    allow_schema_change: bool = False,
    expected: int | None = None,
    expected_target: int | None = None,
) -> moves.MoveResult:
    """Undo the last production change, or move the alias back to an older ``version``;
    gate-checked either way (without the champion comparison). Moving to a newer version is a
    promotion and is refused here. With ``expected`` (an automatic action's decision), a
    StaleMoveError unless production is still that version, before and under the ledger's
    lock; with ``expected_target``, unless the undo still goes to that version."""
    moves.check_force(force, reason, allow_schema_change)
    connection.ping(settings)
    current = versions.alias_version(settings)
    if expected is not None and current != expected:
        raise StaleMoveError(
            f"{settings.model_name}@{settings.alias} is v{current}, no longer v{expected}, the "
            f"version this rollback was decided about; nothing changed (run monitor again)"
        )
    if version is not None:
        versions.get_version(settings, version)
        if current == version:
            return moves.unchanged(settings, settings.alias, version)
        if current is not None and version > current:
            raise ChurnopsError(
                f"v{version} is newer than production (v{current}): that is a promotion, "
                f"which compares it with the champion; run `churnops promote --version {version}`"
            )
        target, action = version, "rollback"
    else:
        if current is None:
            raise NoRollbackTargetError(
                f"{settings.model_name}@{settings.alias} is not set, so there is nothing to roll "
                "back; use `churnops promote`"
            )
        found = undo_target(settings, current)
        if found is None or found == current:
            raise NoRollbackTargetError(
                f"nothing earlier to roll back to: the ledger has no production version before "
                f"v{current} and no lower version passed the gate; {settings.alias} stays at "
                f"v{current}"
            )
        if expected_target is not None and found != expected_target:
            raise StaleMoveError(
                f"undoing v{current} now goes to v{found}, not v{expected_target} as decided; "
                "nothing changed (run monitor again)"
            )
        target, action = found, "undo"
    report = gate_report(settings, target, current, compare_champion=False)
    return moves.move(
        settings,
        settings.alias,
        action=action,
        target=target,
        decided_from=current,
        report=report,
        force=force,
        reason=reason,
        allow_schema_change=allow_schema_change,
    )


def history(settings: Settings) -> list[ledger.Entry]:
    """Every alias move, newest first. Reads only: a move made outside churnops that the ledger
    lacks is shown as an ``unrecorded`` external entry, which the next promote or rollback
    records."""
    connection.ping(settings)
    chain = ledger.read(settings)
    found = list(chain.entries)
    current = versions.alias_version(settings)
    if current is not None and current != chain.holds(settings.alias):
        found.append(
            ledger.Entry(
                seq=(chain.head.seq + 1) if chain.head else 1,
                time="",
                actor=ledger.EXTERNAL_ACTOR,
                alias=settings.alias,
                action="external",
                from_version=chain.holds(settings.alias),
                to_version=current,
                reason="alias moved outside churnops; recorded by the next promote or rollback",
                override=False,
                gate=None,
                state="unrecorded",
            )
        )
    return list(reversed(found))


def status(settings: Settings) -> Status:
    """Every version with its metrics, verdict and aliases."""
    connection.ping(settings)
    return Status(
        tracking_uri=settings.tracking_uri,
        model_name=settings.model_name,
        alias=settings.alias,
        production_version=versions.alias_version(settings),
        versions=versions.list_versions(settings),
    )
