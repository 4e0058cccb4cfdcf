"""Drift of each input column, and of the predicted probability, against a version's reference
rows. Pure functions over arrays.

The tests and thresholds are Evidently's documented defaults (0.7, "data drift algorithm"), so a
user can compare verdicts: a column is numeric when it is a number with more than 5 distinct
values in the reference, else categorical. With at most 1,000 reference rows a numeric column is
tested with the two-sample Kolmogorov-Smirnov test and a categorical one with chi-squared (p <
0.05 is drift); above 1,000 rows, where p-values flag every tiny difference, a numeric column uses
the Wasserstein distance divided by the reference's standard deviation, and a categorical one the
Jensen-Shannon distance (0.1 or more is drift). PSI is reported for every column beside the
verdict (0.1 watch, 0.25 act: the common credit-scoring reading). Below MIN_ROWS current rows a
column gets no verdict ("too few rows"). The dataset drifts when half or more of the columns with
a verdict drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

MIN_ROWS = 50
SMALL_REFERENCE = 1000
P_VALUE = 0.05
DISTANCE = 0.1
CATEGORICAL_MAX_VALUES = 5
PSI_BINS = 10
PSI_FLOOR = 1e-4
DATASET_SHARE = 0.5


@dataclass(frozen=True)
class ColumnDrift:
    """One column's drift test and verdict."""

    column: str
    kind: str
    test: str
    statistic: float | None
    threshold: float
    drifted: bool | None
    psi: float | None
    rows: int
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        """The result as JSON-ready data."""
        return dict(self.__dict__)


def _is_numeric(reference: pd.Series) -> bool:
    return bool(
        pd.api.types.is_numeric_dtype(reference)
        and not pd.api.types.is_bool_dtype(reference)
        and reference.nunique(dropna=True) > CATEGORICAL_MAX_VALUES
    )


def _shares(reference: pd.Series, current: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Category shares of both samples over the union of their categories."""
    ref = reference.astype(str).value_counts()
    cur = current.astype(str).value_counts()
    categories = sorted(set(ref.index) | set(cur.index))
    return (
        ref.reindex(categories, fill_value=0).to_numpy(dtype=float),
        cur.reindex(categories, fill_value=0).to_numpy(dtype=float),
    )


def psi(reference: pd.Series, current: pd.Series, numeric: bool) -> float:
    """Population stability index over 10 equal-width bins (numeric) or the categories."""
    if numeric:
        ref, cur = reference.to_numpy(dtype=float), current.to_numpy(dtype=float)
        edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins=PSI_BINS)
        ref_counts = np.histogram(ref, edges)[0].astype(float)
        cur_counts = np.histogram(cur, edges)[0].astype(float)
    else:
        ref_counts, cur_counts = _shares(reference, current)
    ref_share = np.maximum(ref_counts / ref_counts.sum(), PSI_FLOOR)
    cur_share = np.maximum(cur_counts / cur_counts.sum(), PSI_FLOOR)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def column_drift(name: str, reference: pd.Series, current: pd.Series) -> ColumnDrift:
    """Test one column of the current rows against the reference rows."""
    reference, current = reference.dropna(), current.dropna()
    numeric = _is_numeric(reference)
    kind = "numeric" if numeric else "categorical"
    small = len(reference) <= SMALL_REFERENCE
    if numeric:
        test, threshold = ("ks", P_VALUE) if small else ("wasserstein", DISTANCE)
    else:
        test, threshold = ("chi2", P_VALUE) if small else ("jensenshannon", DISTANCE)
    if len(current) < MIN_ROWS or len(reference) < MIN_ROWS:
        return ColumnDrift(
            name, kind, test, None, threshold, None, None, len(current), "too few rows"
        )
    if numeric:
        ref, cur = reference.to_numpy(dtype=float), current.to_numpy(dtype=float)
        if small:
            statistic = float(stats.ks_2samp(ref, cur).pvalue)
        else:
            statistic = float(stats.wasserstein_distance(ref, cur) / max(np.std(ref), 0.001))
    else:
        ref_counts, cur_counts = _shares(reference, current)
        if small:
            table = np.vstack([ref_counts, cur_counts])
            table = table[:, table.sum(0) > 0]
            statistic = float(stats.chi2_contingency(table).pvalue) if table.shape[1] > 1 else 1.0
        else:
            statistic = float(
                jensenshannon(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum())
            )
    drifted = statistic < threshold if small else statistic >= threshold
    return ColumnDrift(
        name,
        kind,
        test,
        statistic,
        threshold,
        bool(drifted),
        psi(reference, current, numeric),
        len(current),
    )


def table_drift(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]
) -> tuple[list[ColumnDrift], bool | None]:
    """Every column's drift, and whether the dataset drifts (None: no column had a verdict)."""
    results = [column_drift(c, reference[c], current[c]) for c in columns]
    judged = [r for r in results if r.drifted is not None]
    if not judged:
        return results, None
    return results, sum(bool(r.drifted) for r in judged) / len(judged) >= DATASET_SHARE
