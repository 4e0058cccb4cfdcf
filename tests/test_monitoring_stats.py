"""The monitoring statistics as pure functions, each checked against scikit-learn, scipy or a
direct computation on the same numbers: realised metrics and their intervals, CBPE, drift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import brier_score_loss, f1_score, precision_score, recall_score, roc_auc_score

from churnops import data
from churnops.monitoring import drift, estimate, realised


def scored(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probability = rng.beta(2, 5, rows)
    truth = (rng.random(rows) < probability).astype(int)
    return truth, (probability >= 0.35).astype(int), probability


def test_realised_metrics_equal_scikit_learn_on_the_same_rows() -> None:
    truth, predicted, probability = scored(5000, 1)
    found = realised.with_intervals(truth, predicted, probability)
    assert found["f1"].value == pytest.approx(f1_score(truth, predicted))
    assert found["precision"].value == pytest.approx(precision_score(truth, predicted))
    assert found["recall"].value == pytest.approx(recall_score(truth, predicted))
    assert found["roc_auc"].value == pytest.approx(roc_auc_score(truth, probability))
    assert found["brier"].value == pytest.approx(brier_score_loss(truth, probability))
    for interval in found.values():
        assert interval.low is not None and interval.high is not None
        assert interval.value is not None
        assert interval.low <= interval.value <= interval.high


def test_count_bootstrap_intervals_match_a_row_bootstrap_on_the_same_rows() -> None:
    truth, predicted, probability = scored(3000, 2)
    found = realised.with_intervals(truth, predicted, probability, resamples=400)
    rng = np.random.default_rng(0)
    f1s, aucs = [], []
    for _ in range(400):
        rows = rng.integers(0, len(truth), len(truth))
        f1s.append(f1_score(truth[rows], predicted[rows]))
        aucs.append(roc_auc_score(truth[rows], probability[rows]))
    for name, values in (("f1", f1s), ("roc_auc", aucs)):
        low, high = np.percentile(values, [2.5, 97.5])
        assert found[name].low == pytest.approx(low, abs=0.01)
        assert found[name].high == pytest.approx(high, abs=0.01)


def test_roc_auc_is_undefined_when_only_one_outcome_occurs() -> None:
    found = realised.with_intervals(np.ones(40), np.ones(40), np.full(40, 0.8))
    assert found["roc_auc"].value is None and found["f1"].value == 1.0


def test_cbpe_on_calibrated_scores_estimates_the_realised_f1_and_auc() -> None:
    truth, predicted, probability = scored(50_000, 3)
    found = estimate.estimate(probability, predicted, probability)
    assert found["f1"] == pytest.approx(f1_score(truth, predicted), abs=0.01)
    assert found["precision"] == pytest.approx(precision_score(truth, predicted), abs=0.01)
    assert found["roc_auc"] == pytest.approx(roc_auc_score(truth, probability), abs=0.01)


def test_expected_auc_is_the_mean_auc_over_outcomes_drawn_from_the_probabilities() -> None:
    rng = np.random.default_rng(4)
    probability = np.round(rng.beta(2, 3, 400), 2)  # rounded: ties are counted as halves
    outcomes = (rng.random((2000, 400)) < probability).astype(int)
    # NB: the probabilities are the same in every draw, so each draw's AUC is a rank sum over
    # one ranking (midranks for ties): checked against scikit-learn on the first draws.
    ranks = stats.rankdata(probability)
    positives = outcomes.sum(axis=1)
    draws = ((outcomes * ranks).sum(axis=1) - positives * (positives + 1) / 2) / (
        positives * (400 - positives)
    )
    for outcome, auc in zip(outcomes[:5], draws[:5], strict=True):
        assert auc == pytest.approx(roc_auc_score(outcome, probability))
    assert estimate.expected_auc(probability, probability) == pytest.approx(
        np.mean(draws), abs=0.003
    )


def test_isotonic_calibration_is_kept_only_when_it_lowers_the_brier_score() -> None:
    rng = np.random.default_rng(5)
    true_p = rng.beta(2, 5, 4000)
    truth = (rng.random(4000) < true_p).astype(int)
    overconfident = true_p**3
    fitted = estimate.fit_calibration(overconfident, truth)
    assert fitted.brier_calibrated is not None and fitted.brier_raw is not None
    assert fitted.used and fitted.brier_calibrated < fitted.brier_raw
    assert np.mean((fitted.apply(overconfident) - truth) ** 2) < fitted.brier_raw
    assert not estimate.fit_calibration(true_p, truth).used


def test_the_f1_band_narrows_as_windows_grow() -> None:
    truth, predicted, _ = scored(4000, 6)
    reference, low_small, high_small = estimate.f1_band(truth, predicted, 200)
    _, low_big, high_big = estimate.f1_band(truth, predicted, 20_000)
    assert reference == pytest.approx(f1_score(truth, predicted))
    assert low_small < low_big < reference < high_big < high_small


def test_numeric_and_categorical_drift_equal_scipy_with_evidently_thresholds() -> None:
    rng = np.random.default_rng(7)
    reference = pd.Series(rng.normal(0, 1, 5000))
    current = pd.Series(rng.normal(0.5, 1, 2000))
    found = drift.column_drift("x", reference, current)
    expected = stats.wasserstein_distance(reference, current) / np.std(reference)
    assert found.test == "wasserstein" and found.statistic == pytest.approx(expected)
    assert found.drifted is True
    small = drift.column_drift("x", reference[:800], current)
    assert small.test == "ks"
    assert small.statistic == pytest.approx(stats.ks_2samp(reference[:800], current).pvalue)
    plans = pd.Series(rng.choice(["a", "b", "c"], 5000, p=[0.5, 0.3, 0.2]))
    moved = pd.Series(rng.choice(["a", "b", "c"], 2000, p=[0.2, 0.3, 0.5]))
    cat = drift.column_drift("plan", plans, moved)
    ref_share = plans.value_counts(normalize=True).sort_index().to_numpy()
    cur_share = moved.value_counts(normalize=True).sort_index().to_numpy()
    assert cat.test == "jensenshannon"
    assert cat.statistic == pytest.approx(jensenshannon(ref_share, cur_share))
    assert cat.drifted is True and cat.psi is not None and cat.psi > 0.25


def test_a_column_with_too_few_current_rows_gets_no_verdict() -> None:
    found = drift.column_drift("x", pd.Series(np.arange(5000.0)), pd.Series(np.arange(10.0)))
    assert found.drifted is None and found.note == "too few rows"


def test_drift_is_found_on_the_shifted_columns_only() -> None:
    reference = data.generate(4000, seed=1).drop(columns=["customer_id", "churn"])
    current = data.generate(3000, seed=2, covariate_shift=1.0).drop(
        columns=["customer_id", "churn"]
    )
    # NB: only region keeps its distribution under the built-in covariate shift.
    results, dataset = drift.table_drift(reference, current, list(reference.columns))
    verdicts = {r.column: r.drifted for r in results}
    assert verdicts == {
        "tenure_months": True,
        "num_complaints": True,
        "avg_session_minutes": True,
        "plan_type": True,
        "region": False,
    }
    assert dataset is True


def test_no_drift_data_raises_at_most_five_percent_false_alarms_over_twenty_seeds() -> None:
    alarms = verdicts = 0
    for seed in range(20):
        reference = data.generate(3000, seed=100 + seed).drop(columns=["customer_id", "churn"])
        current = data.generate(1000, seed=200 + seed).drop(columns=["customer_id", "churn"])
        results, _ = drift.table_drift(reference, current, list(reference.columns))
        alarms += sum(bool(r.drifted) for r in results)
        verdicts += len(results)
    assert alarms <= 0.05 * verdicts


def _flag_table(rows: int, seed: int) -> pd.DataFrame:
    """A churn export's shapes: 0/1 integer flags, a boolean, a 51-level state, a surname."""
    rng = np.random.default_rng(seed)
    surnames = [f"name{i}" for i in range(3000)]
    return pd.DataFrame(
        {
            "senior_citizen": rng.integers(0, 2, rows),
            "has_credit_card": (rng.random(rows) < 0.7).astype(int),
            "paperless": rng.random(rows) < 0.6,
            "state": rng.choice([f"S{i:02d}" for i in range(51)], rows),
            "surname": rng.choice(surnames, rows, p=np.r_[0.02, np.full(2999, 0.98 / 2999)]),
            "charges": rng.gamma(2.0, 30.0, rows).round(2),
        }
    )


def test_a_tables_own_rows_show_no_drift_when_the_store_keeps_integer_flags_as_floats() -> None:
    table = _flag_table(10_000, 1)
    reference = table.sample(7500, random_state=1)
    kinds = {str(c): "categorical" if c in ("state", "surname") else "numeric" for c in table}
    # NB: what the store holds: JSON integers in a float column.
    stored = table.astype({"senior_citizen": float, "has_credit_card": float})
    for current in (stored, stored.sample(667, random_state=2)):
        results, dataset = drift.table_drift(reference, current, list(table.columns), kinds)
        assert [r.column for r in results if r.drifted] == []
        assert dataset is False
    flags = {r.column: r for r in results}
    assert flags["senior_citizen"].statistic is not None
    assert flags["senior_citizen"].statistic < 0.05
    assert flags["surname"].note == "levels under 1% of the reference pooled"


def test_a_high_cardinality_column_without_frequent_levels_gets_no_verdict() -> None:
    rng = np.random.default_rng(3)
    names = pd.Series(rng.choice([f"n{i}" for i in range(5000)], 8000))
    found = drift.column_drift("surname", names, names.sample(2000, random_state=1))
    assert found.drifted is None and found.note.startswith("high cardinality")


def test_a_flag_that_really_moved_still_drifts_against_its_float_store_copy() -> None:
    rng = np.random.default_rng(4)
    reference = pd.Series(rng.integers(0, 2, 5000))
    current = pd.Series((rng.random(3000) < 0.9).astype(float))
    found = drift.column_drift("senior_citizen", reference, current, "numeric")
    assert found.drifted is True
