"""Training, the gate and the rollback decision as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from churnops import data, gate, training
from churnops.lifecycle import rollback_target
from churnops.predict import predict
from churnops.registry import VersionInfo


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
