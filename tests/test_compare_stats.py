"""The challenger comparison's statistics against reference computations: scikit-learn's F1 and
ROC AUC, scipy's exact tests, a row-level bootstrap, and DeLong's variance written out from its
definition (every positive-negative pair)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score, roc_auc_score

from churnops.monitoring import paired


def two_models(rows: int, seed: int, gap: float) -> tuple[np.ndarray, ...]:
    """Outcomes and two models' probabilities; B separates the outcomes ``gap`` better."""
    rng = np.random.default_rng(seed)
    truth = (rng.random(rows) < 0.3).astype(int)
    signal = truth * 1.2 + rng.normal(0, 1, rows)
    prob_a = 1 / (1 + np.exp(-(signal + rng.normal(0, 1.0, rows) - 0.8)))
    prob_b = 1 / (1 + np.exp(-(signal * (1 + gap) + rng.normal(0, 1.0, rows) - 0.8)))
    return truth, prob_a, prob_b


def bootstrap_rows(rng: np.random.Generator, rows: int, resamples: int = 1000) -> np.ndarray:
    """Row indices of ``resamples`` bootstrap resamples, one per line."""
    return rng.integers(0, rows, (resamples, rows))


def f1_per_line(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """F1 of each line of 0/1 matrices (scikit-learn's, checked on the first lines below)."""
    tp = (truth & predicted).sum(axis=1)
    return 2 * tp / (truth.sum(axis=1) + predicted.sum(axis=1))


def auc_per_line(truth: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """ROC AUC of each line by the rank-sum formula, ties as midranks (scikit-learn's, checked
    on the first lines below)."""
    ranks = stats.rankdata(probability, axis=1)
    positives = truth.sum(axis=1)
    negatives = truth.shape[1] - positives
    return ((ranks * truth).sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)


def test_paired_f1_equals_scikit_learn_and_its_interval_a_row_bootstrap() -> None:
    truth, prob_a, prob_b = two_models(3000, 1, 0.3)
    a, b = (prob_a >= 0.4).astype(int), (prob_b >= 0.4).astype(int)
    found = paired.paired_f1(truth, a, b)
    assert found.a == pytest.approx(f1_score(truth, a))
    assert found.b == pytest.approx(f1_score(truth, b))
    rows = bootstrap_rows(np.random.default_rng(7), len(truth))
    diffs = f1_per_line(truth[rows], b[rows]) - f1_per_line(truth[rows], a[rows])
    for line in rows[:5]:
        assert f1_per_line(truth[line][None], b[line][None])[0] == pytest.approx(
            f1_score(truth[line], b[line])
        )
    low, high = np.percentile(diffs, [2.5, 97.5])
    assert found.low == pytest.approx(low, abs=0.01)
    assert found.high == pytest.approx(high, abs=0.01)
    assert found.se == pytest.approx(np.std(diffs, ddof=1), rel=0.1)


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_rows() -> None:
    truth, prob_a, prob_b = two_models(2000, 2, 0.4)
    a, b = (prob_a >= 0.5).astype(int), (prob_b >= 0.5).astype(int)
    found = paired.mcnemar(truth, a, b)
    a_only = int(((a == truth) & (b != truth)).sum())
    b_only = int(((a != truth) & (b == truth)).sum())
    low = min(a_only, b_only)
    reference = min(1.0, 2 * stats.binom.cdf(low, a_only + b_only, 0.5))
    assert (found["a_only"], found["b_only"]) == (a_only, b_only)
    assert found["p_value"] == pytest.approx(reference)


def delong_by_definition(truth: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Var(AUC_b - AUC_a) from DeLong's structural components, every pair compared."""

    def components(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = score[truth == 1], score[truth == 0]
        psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
        return psi.mean(1), psi.mean(0)

    (a10, a01), (b10, b01) = components(a), components(b)
    m, n = len(a10), len(a01)
    s10 = np.cov(np.vstack([a10, b10]))
    s01 = np.cov(np.vstack([a01, b01]))
    s = s10 / m + s01 / n
    return float(s[0, 0] + s[1, 1] - 2 * s[0, 1])


def test_delong_equals_its_definition_and_a_bootstrap_of_the_auc_difference() -> None:
    truth, prob_a, prob_b = two_models(600, 3, 0.3)
    prob_b = np.round(prob_b, 2)  # NB: ties, which midranks must count as halves
    found = paired.paired_auc(truth, prob_a, prob_b)
    assert found.a == pytest.approx(roc_auc_score(truth, prob_a))
    assert found.b == pytest.approx(roc_auc_score(truth, prob_b))
    assert found.se is not None
    assert found.se**2 == pytest.approx(delong_by_definition(truth, prob_a, prob_b), rel=1e-9)
    rows = bootstrap_rows(np.random.default_rng(5), len(truth))
    diffs = auc_per_line(truth[rows], prob_b[rows]) - auc_per_line(truth[rows], prob_a[rows])
    for line in rows[:5]:
        assert auc_per_line(truth[line][None], prob_b[line][None])[0] == pytest.approx(
            roc_auc_score(truth[line], prob_b[line])
        )
    assert found.se == pytest.approx(np.std(diffs, ddof=1), rel=0.15)


def test_the_unpaired_tests_equal_scipy_and_scikit_learn_on_each_group() -> None:
    truth_a, prob_a, _ = two_models(1500, 4, 0.0)
    truth_b, _, prob_b = two_models(400, 5, 0.5)
    a, b = (prob_a >= 0.4).astype(int), (prob_b >= 0.4).astype(int)
    f1 = paired.unpaired_f1(truth_a, a, truth_b, b)
    assert f1.difference == pytest.approx(f1_score(truth_b, b) - f1_score(truth_a, a))
    assert f1.low is not None and f1.high is not None and f1.difference is not None
    assert f1.low < f1.difference < f1.high
    table = [
        [int((a == truth_a).sum()), int((a != truth_a).sum())],
        [int((b == truth_b).sum()), int((b != truth_b).sum())],
    ]
    assert paired.fisher(truth_a, a, truth_b, b)["p_value"] == pytest.approx(
        stats.fisher_exact(table).pvalue
    )
    auc = paired.unpaired_auc(truth_a, prob_a, truth_b, prob_b)
    assert auc.difference == pytest.approx(
        roc_auc_score(truth_b, prob_b) - roc_auc_score(truth_a, prob_a)
    )


def test_the_rows_it_asks_for_make_the_same_difference_decisive() -> None:
    truth, prob_a, prob_b = two_models(800, 6, 0.15)
    a, b = (prob_a >= 0.4).astype(int), (prob_b >= 0.4).astype(int)
    found = paired.paired_f1(truth, a, b)
    assert paired.decided(found) is None and found.difference
    expected = "better" if found.difference > 0 else "worse"
    more = paired.rows_to_decide(found, len(truth))
    assert more is not None and more > 0
    # NB: the same rows repeated until there are that many more: same difference, more evidence.
    times = int(np.ceil((len(truth) + more) / len(truth))) + 1
    bigger = paired.paired_f1(np.tile(truth, times), np.tile(a, times), np.tile(b, times))
    assert paired.decided(bigger) == expected
    assert paired.rows_to_decide(bigger, len(truth) * times) == 0
