"""Statistics for comparing two versions on live customers. Pure functions over arrays.

Paired (shadow: both versions scored the same rows): F1 difference with a paired bootstrap
interval, McNemar's exact test on right/wrong, DeLong's test for the ROC AUC difference.
Unpaired (canary: each customer met one version): F1 difference with an interval from independent
bootstraps of the two groups, Fisher's exact test on right/wrong, and the ROC AUC difference
with DeLong's variance of each group.

F1 depends on the rows only through the counts of (outcome, label A, label B), so a paired
bootstrap of n rows is a multinomial draw over 8 cells (4 per group when unpaired): exact, and
milliseconds for a million rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from churnops.monitoring import bootstrap

# NB: ten times the other figures' resamples: a verdict turns on the interval's tail.
RESAMPLES = 10 * bootstrap.RESAMPLES
Z95 = 1.959963984540054


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)


@dataclass(frozen=True)
class Difference:
    """B minus A for one metric: both values, the difference, its 95% interval and standard
    error, and a test's p-value (None when undefined on these rows)."""

    a: float | None
    b: float | None
    difference: float | None
    low: float | None
    high: float | None
    se: float | None
    p_value: float | None
    test: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return dict(self.__dict__)


def _interval(samples: np.ndarray) -> tuple[float, float, float]:
    low, high = bootstrap.bounds(samples)
    return low, high, float(np.std(samples, ddof=1))


def paired_f1(
    truth: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int = 0, resamples: int = RESAMPLES
) -> Difference:
    """F1 of labels ``b`` minus F1 of ``a`` on the same rows, with a paired bootstrap interval
    (rows resampled together, so both versions always see the same resample)."""
    cell = np.asarray(truth, int) * 4 + np.asarray(a, int) * 2 + np.asarray(b, int)
    return paired_f1_counts(np.bincount(cell, minlength=8).astype(float), seed, resamples)


def paired_f1_counts(counts: np.ndarray, seed: int = 0, resamples: int = RESAMPLES) -> Difference:
    """:func:`paired_f1` from the rows per (outcome, label a, label b) cell."""
    counts = np.asarray(counts, dtype=float)
    n = int(counts.sum())
    if n == 0:
        return Difference(None, None, None, None, None, None, None, "paired bootstrap")
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples).astype(float)

    def f1s(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = c.reshape(-1, 2, 2, 2)  # outcome, label a, label b
        f1_a = _f1(c[:, 1, 1, :].sum(1), c[:, 0, 1, :].sum(1), c[:, 1, 0, :].sum(1))
        f1_b = _f1(c[:, 1, :, 1].sum(1), c[:, 0, :, 1].sum(1), c[:, 1, :, 0].sum(1))
        return f1_a, f1_b

    point_a, point_b = f1s(counts[None, :])
    sample_a, sample_b = f1s(draws)
    low, high, se = _interval(sample_b - sample_a)
    diff = float(point_b[0] - point_a[0])
    return Difference(
        float(point_a[0]), float(point_b[0]), diff, low, high, se, None, "paired bootstrap"
    )


def mcnemar(truth: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float | int]:
    """McNemar's exact test on the rows exactly one version got right: ``a_only`` right by A
    alone, ``b_only`` by B alone; p-value of a two-sided binomial test of a_only vs b_only."""
    truth = np.asarray(truth, int)
    right_a = np.asarray(a, int) == truth
    right_b = np.asarray(b, int) == truth
    return mcnemar_counts(int((right_a & ~right_b).sum()), int((~right_a & right_b).sum()))


def mcnemar_counts(a_only: int, b_only: int) -> dict[str, float | int]:
    """:func:`mcnemar` from the two discordant counts."""
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(stats.binomtest(a_only, discordant, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p_value": p}


def _structural(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong's structural components (positives, negatives) for each row of
    ``scores`` (versions x rows), from midranks."""
    positive = truth == 1
    m, n = int(positive.sum()), int((~positive).sum())
    x, y = scores[:, positive], scores[:, ~positive]
    aucs, v10, v01 = [], [], []
    for k in range(len(scores)):
        tz = stats.rankdata(np.concatenate([x[k], y[k]]))
        tx, ty = stats.rankdata(x[k]), stats.rankdata(y[k])
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)
        v01.append(1.0 - (tz[m:] - ty) / m)
    return np.array(aucs), np.array(v10), np.array(v01)


def delong_covariance(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC of each row of ``scores`` and their covariance matrix by DeLong et al. (1988).

    NB: written here (scikit-learn and scipy have no DeLong); checked against a bootstrap of the
    AUC difference in tests/test_compare_stats.py."""
    truth = np.asarray(truth, int)
    aucs, v10, v01 = _structural(truth, np.atleast_2d(np.asarray(scores, float)))
    m, n = v10.shape[1], v01.shape[1]
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, covariance


def _midranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each value's average rank among the weighted sample (ties share their ranks)."""
    order = np.unique(values, return_inverse=True)
    totals = np.bincount(order[1], weights=weights)
    below = np.cumsum(totals) - totals
    return (below + (totals + 1) / 2)[order[1]]


def _below(values: np.ndarray, others: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """For each value, the weight of ``others`` below it plus half the weight equal to it."""
    order = np.argsort(others, kind="stable")
    sorted_values, cumulative = others[order], np.concatenate([[0.0], np.cumsum(weights[order])])
    lower = cumulative[np.searchsorted(sorted_values, values, side="left")]
    upper = cumulative[np.searchsorted(sorted_values, values, side="right")]
    return lower + 0.5 * (upper - lower)


def delong_weighted(
    truth: np.ndarray, scores: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`delong_covariance` for rows given once with a count each (``weights``): the same
    figures as on the rows repeated."""
    truth = np.asarray(truth, int)
    scores = np.atleast_2d(np.asarray(scores, float))
    weights = np.asarray(weights, dtype=np.int64)
    positive = truth == 1
    wp, wn = weights[positive], weights[~positive]
    m, n = float(wp.sum()), float(wn.sum())
    aucs, v10, v01 = [], [], []
    for k in range(len(scores)):
        x, y = scores[k, positive], scores[k, ~positive]
        v10.append(_below(x, y, wn.astype(float)) / n)
        v01.append(1.0 - _below(y, x, wp.astype(float)) / m)
        aucs.append(float((v10[-1] * wp).sum() / m))
    covariance = (
        np.atleast_2d(np.cov(np.array(v10), fweights=wp)) / m
        + np.atleast_2d(np.cov(np.array(v01), fweights=wn)) / n
    )
    return np.array(aucs), covariance


def tie_bound(truth: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float:
    """The most a ROC AUC over binned scores can differ from the rows' own: half the share of
    (churner, stayer) pairs that share a bin."""
    truth = np.asarray(truth, int)
    table = pd.DataFrame({"score": scores, "truth": truth, "n": weights})
    counts = table.pivot_table(index="score", columns="truth", values="n", aggfunc="sum")
    counts = counts.reindex(columns=[0, 1], fill_value=0).fillna(0)
    pairs = counts[0].sum() * counts[1].sum()
    return 0.0 if pairs == 0 else float(0.5 * (counts[0] * counts[1]).sum() / pairs)


def spearman_weighted(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> float:
    """Spearman's rank correlation of rows given once with a count each."""
    w = np.asarray(weights, dtype=np.int64)
    ranks = np.vstack([_midranks(np.asarray(a, float), w), _midranks(np.asarray(b, float), w)])
    covariance = np.cov(ranks, fweights=w)
    return float(covariance[0, 1] / np.sqrt(covariance[0, 0] * covariance[1, 1]))


def _both_outcomes(truth: np.ndarray) -> bool:
    return 0 < int(np.asarray(truth, int).sum()) < len(truth)


def _normal_test(a: float, b: float, variance: float, test: str) -> Difference:
    diff = b - a
    se = math.sqrt(max(variance, 0.0))
    p = 1.0 if se == 0 else float(2 * stats.norm.sf(abs(diff) / se))
    return Difference(a, b, diff, diff - Z95 * se, diff + Z95 * se, se, p, test)


def paired_auc(truth: np.ndarray, a: np.ndarray, b: np.ndarray) -> Difference:
    """ROC AUC of probabilities ``b`` minus ``a`` on the same rows, with DeLong's test."""
    if not _both_outcomes(truth):
        return Difference(None, None, None, None, None, None, None, "DeLong")
    aucs, cov = delong_covariance(truth, np.vstack([a, b]))
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    return _normal_test(float(aucs[0]), float(aucs[1]), float(variance), "DeLong")


def unpaired_f1(
    truth_a: np.ndarray,
    labels_a: np.ndarray,
    truth_b: np.ndarray,
    labels_b: np.ndarray,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> Difference:
    """F1 of group B minus group A (different rows), with an interval from independent
    bootstraps of each group."""
    counts = [
        np.bincount(np.asarray(truth, int) * 2 + np.asarray(labels, int), minlength=4)
        for truth, labels in ((truth_a, labels_a), (truth_b, labels_b))
    ]
    return unpaired_f1_counts(counts[0], counts[1], seed, resamples)


def unpaired_f1_counts(
    counts_a: np.ndarray, counts_b: np.ndarray, seed: int = 0, resamples: int = RESAMPLES
) -> Difference:
    """:func:`unpaired_f1` from each group's rows per (outcome, label) cell."""
    rng = np.random.default_rng(seed)
    points: list[np.ndarray] = []
    samples: list[np.ndarray] = []
    for cells in (counts_a, counts_b):
        counts = np.asarray(cells, dtype=float)
        n = int(counts.sum())
        if n == 0:
            return Difference(None, None, None, None, None, None, None, "unpaired bootstrap")
        draws = rng.multinomial(n, counts / n, size=resamples).astype(float)
        for target, c in ((points, counts[None, :]), (samples, draws)):
            target.append(_f1(c[:, 3], c[:, 1], c[:, 2]))
    low, high, se = _interval(samples[1] - samples[0])
    a, b = float(points[0][0]), float(points[1][0])
    return Difference(a, b, b - a, low, high, se, None, "unpaired bootstrap")


def fisher(
    truth_a: np.ndarray, labels_a: np.ndarray, truth_b: np.ndarray, labels_b: np.ndarray
) -> dict[str, float | int]:
    """Fisher's exact test on right/wrong in the two groups."""
    right_a = int((np.asarray(labels_a, int) == np.asarray(truth_a, int)).sum())
    right_b = int((np.asarray(labels_b, int) == np.asarray(truth_b, int)).sum())
    return fisher_counts(right_a, len(truth_a), right_b, len(truth_b))


def fisher_counts(right_a: int, rows_a: int, right_b: int, rows_b: int) -> dict[str, float | int]:
    """:func:`fisher` from each group's right answers and rows."""
    table = [[right_a, rows_a - right_a], [right_b, rows_b - right_b]]
    p = float(stats.fisher_exact(table).pvalue) if rows_a and rows_b else 1.0
    return {
        "right_a": right_a,
        "rows_a": rows_a,
        "right_b": right_b,
        "rows_b": rows_b,
        "p_value": p,
    }


def unpaired_auc(
    truth_a: np.ndarray, prob_a: np.ndarray, truth_b: np.ndarray, prob_b: np.ndarray
) -> Difference:
    """ROC AUC of group B minus group A, the variance the sum of each group's DeLong variance."""
    if not (_both_outcomes(truth_a) and _both_outcomes(truth_b)):
        return Difference(None, None, None, None, None, None, None, "DeLong, unpaired")
    auc_a, var_a = delong_covariance(truth_a, prob_a)
    auc_b, var_b = delong_covariance(truth_b, prob_b)
    return _normal_test(
        float(auc_a[0]), float(auc_b[0]), float(var_a[0, 0] + var_b[0, 0]), "DeLong, unpaired"
    )


def rows_to_decide(difference: Difference, rows: int) -> int | None:
    """How many more labelled rows would make the observed F1 difference decisive (its 95%
    interval clear of zero), assuming the difference holds and the standard error shrinks as
    1/sqrt(rows); 0 when it is decisive already, None when no difference was observed."""
    diff, se = difference.difference, difference.se
    if diff is None or se is None or rows == 0:
        return None
    if decided(difference) is not None:
        return 0
    if diff == 0 or se == 0:
        return None
    needed = rows * (Z95 * se / abs(diff)) ** 2
    return max(1, math.ceil(needed - rows))


def decided(difference: Difference) -> str | None:
    """ "better" when the interval of B - A lies above zero, "worse" below, else None."""
    if difference.low is None or difference.high is None:
        return None
    if difference.low > 0:
        return "better"
    if difference.high < 0:
        return "worse"
    return None
