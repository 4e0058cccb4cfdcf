"""Training, the gate and the rollback decision as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from churnops import data, evidence, gate, training
from churnops.lifecycle import rollback_target
from churnops.predict import predict
from churnops.registry.versions import VersionInfo


def test_logistic_regression_clears_the_default_gate_and_the_baseline_on_built_in_data() -> None:
    result = training.train(data.from_frame(data.generate(seed=42)), seed=42)
    assert result.metrics["f1"] >= gate.DEFAULT_GATE_F1 + 0.05
    assert result.metrics["f1"] > result.metrics["baseline_f1"]
    assert result.metrics["roc_auc"] > 0.8
    assert result.verdict.passed
    assert set(result.metrics) == {
        "accuracy",
        "precision",
        "recall",
        "f1",
        "roc_auc",
        "baseline_f1",
    }
    assert result.test_rows == 1250 and result.train_rows == 3750


def test_training_is_reproducible_for_a_seed() -> None:
    dataset = data.from_frame(data.generate(seed=3))
    assert training.train(dataset, seed=3).metrics == training.train(dataset, seed=3).metrics


def test_the_trained_pipeline_scores_an_unknown_category_instead_of_failing() -> None:
    result = training.train(data.from_frame(data.generate(seed=1)), seed=1)
    row = pd.DataFrame(
        [
            {
                "tenure_months": 5,
                "num_complaints": 3,
                "avg_session_minutes": 12.0,
                "plan_type": "platinum",
                "region": "Mars",
            }
        ]
    )
    scored = predict(result.model, row)
    assert scored.label.tolist() in ([0], [1])
    assert 0.0 <= scored.probability[0] <= 1.0


def test_the_gate_fails_below_its_threshold_and_when_not_beating_the_baseline() -> None:
    assert gate.decide(0.70, 0.40, 0.60).passed
    below = gate.decide(0.55, 0.40, 0.60)
    assert not below.passed and "below the gate" in below.reason
    no_better = gate.decide(0.62, 0.65, 0.60)
    assert not no_better.passed and "baseline" in no_better.reason


def _version(number: int, passed: bool) -> VersionInfo:
    return VersionInfo(number, datetime.now(UTC), None, passed, {}, (), {})


def test_rollback_picks_the_nearest_earlier_version_that_passed_the_gate() -> None:
    versions = [_version(1, True), _version(2, True), _version(3, False), _version(4, True)]
    target = rollback_target(versions, current=4)
    assert target is not None and target.version == 2


def test_rollback_has_no_target_when_nothing_earlier_passed() -> None:
    versions = [_version(1, False), _version(2, True)]
    assert rollback_target(versions, current=2) is None
    assert rollback_target(versions, current=None) is None


def _with_missing_values(seed: int) -> data.Dataset:
    frame = data.generate(rows=1500, seed=seed)
    rng = np.random.default_rng(seed)
    frame["avg_session_minutes"] = frame["avg_session_minutes"].mask(rng.random(1500) < 0.2)
    frame["plan_type"] = frame["plan_type"].mask(rng.random(1500) < 0.1)
    return data.from_frame(frame)


@pytest.mark.parametrize("kind", ["logreg", "hgb"])
def test_each_model_handles_missing_values_inside_the_pipeline(kind: training.ModelKind) -> None:
    result = training.train(_with_missing_values(4), seed=4, kind=kind)
    assert result.kind == kind and result.metrics["f1"] > result.metrics["baseline_f1"]
    row = pd.DataFrame(
        [
            {
                "tenure_months": 3,
                "num_complaints": 4,
                "avg_session_minutes": np.nan,
                "plan_type": None,
                "region": "EU",
            }
        ]
    )
    scored = predict(result.model, row)
    assert np.isfinite(scored.probability).all() and scored.label.tolist() in ([0], [1])


def test_labels_and_logged_metrics_follow_the_tuned_threshold() -> None:
    result = training.train(data.from_frame(data.generate(seed=9)), seed=9, kind="logreg")
    assert 0.0 < result.threshold < 1.0 and result.threshold != 0.5
    assert result.threshold == result.model.threshold == result.params["threshold"]
    features, truth = result.holdout_features, result.holdout_target
    labels = predict(result.model, features).label
    assert (labels == result.model.predict(features)).all()
    assert (labels == (result.model.predict_proba(features)[:, 1] >= result.threshold)).all()
    assert result.metrics["f1"] == pytest.approx(f1_score(truth, labels))


def test_the_fast_f1_used_for_tuning_equals_scikit_learns() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth, guess = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
        assert training.binary_f1(truth, guess) == pytest.approx(f1_score(truth, guess))
    assert training.binary_f1(np.zeros(5), np.zeros(5)) == 0.0


def test_auto_keeps_logistic_regression_on_the_built_in_data_and_says_why() -> None:
    result = training.train(data.from_frame(data.generate(seed=42)), seed=42, kind="auto")
    assert set(result.cv_f1) == {"logreg", "hgb"}
    assert result.kind == max(result.cv_f1, key=lambda k: result.cv_f1[k]) == "logreg"
    assert result.params["model_requested"] == "auto" and result.params["model_type"] == "logreg"


def test_auto_on_the_real_telecom_table_reaches_the_issue_targets(telecom_csv: Path) -> None:
    dataset = data.load_table(telecom_csv, target="Churn")
    result = training.train(dataset, seed=42, kind="auto")
    assert result.kind == "hgb", result.cv_f1
    assert result.test_rows == 832 and result.train_rows == 2496
    assert result.metrics["f1"] >= 0.80, result.metrics
    assert result.metrics["roc_auc"] >= 0.92, result.metrics
    assert result.verdict.passed


def test_evidence_has_every_figure_and_document_with_consistent_numbers() -> None:
    dataset = _with_missing_values(2)
    result = training.train(dataset, seed=2, kind="logreg")
    proof = evidence.build(
        result.model,
        result.holdout_features,
        result.holdout_target,
        result.threshold,
        dataset.report,
        seed=2,
    )
    names = {
        "confusion_matrix",
        "roc_curve",
        "precision_recall_curve",
        "permutation_importance",
        "data_report",
    }
    assert set(proof.figures) == {f"{n}.png" for n in names}
    assert set(proof.documents) == {f"{n}.json" for n in names}
    matrix = proof.documents["confusion_matrix.json"]
    assert matrix["tn"] + matrix["fp"] + matrix["fn"] + matrix["tp"] == result.test_rows
    assert 2 * matrix["tp"] / (2 * matrix["tp"] + matrix["fp"] + matrix["fn"]) == pytest.approx(
        result.metrics["f1"]
    )
    assert proof.documents["roc_curve.json"]["roc_auc"] == pytest.approx(result.metrics["roc_auc"])
    ranked = proof.documents["permutation_importance.json"]["features"]
    assert {r["feature"] for r in ranked} == set(dataset.features.columns)
    assert ranked[0]["feature"] in ("num_complaints", "tenure_months")
    assert proof.documents["data_report.json"]["missing_values"] == dataset.report.missing_values
    assert dataset.report.missing_values["avg_session_minutes"] > 0
