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

Two departures, both about noise. Above 1,000 reference rows a distance alone measures sampling
noise when a sample is small or a column has many levels (a 51-level state column over 667 rows
shows a Jensen-Shannon distance near 0.1 between two halves of one table), so a column drifts only
when its distance reaches the threshold *and* the matching test (Kolmogorov-Smirnov,
chi-squared) says the difference is not chance (p < 0.05). A categorical column with more than 50
levels (a surname) is compared on its frequent levels only: levels under 1% of the reference are
pooled, new ones with them; when no level is frequent it gets no verdict. And a column's kind is
the one training recorded (``kinds``), so both sides are read the same way: an integer 0/1 flag
the store keeps as a float compares as the same two values.
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
HIGH_CARDINALITY = 50
RARE_SHARE = 0.01
POOLED = "(rare or new)"


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


def _as_kind(values: pd.Series, kind: str | None) -> pd.Series:
    """The values read as the recorded kind: numbers as floats, anything else as text."""
    if kind == "numeric":
        return pd.to_numeric(values.astype(object), errors="coerce").astype(float).dropna()
    if kind == "categorical":
        return values.dropna().astype(str)
    return values.dropna()


def _pooled(reference: pd.Series, current: pd.Series) -> tuple[pd.Series, pd.Series]:
    """A high-cardinality column with its rare and new levels pooled into one."""
    ref, cur = reference.astype(str), current.astype(str)
    if ref.nunique() <= HIGH_CARDINALITY:
        return ref, cur
    shares = ref.value_counts(normalize=True)
    frequent = set(shares.index[shares >= RARE_SHARE])
    return ref.where(ref.isin(frequent), POOLED), cur.where(cur.isin(frequent), POOLED)


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


def column_drift(
    name: str, reference: pd.Series, current: pd.Series, recorded: str | None = None
) -> ColumnDrift:
    """Test one column of the current rows against the reference rows, both read as the
    ``recorded`` kind (numeric / categorical) when training recorded one."""
    reference, current = _as_kind(reference, recorded), _as_kind(current, recorded)
    numeric = _is_numeric(reference)
    kind = "numeric" if numeric else "categorical"
    note = ""
    if not numeric:
        reference, current = _pooled(reference, current)
        if reference.nunique() == 1 and (reference == POOLED).all():
            return ColumnDrift(
                name,
                kind,
                "none",
                None,
                DISTANCE,
                None,
                None,
                len(current),
                f"high cardinality: no level holds {RARE_SHARE:.0%} of the reference",
            )
        if (reference == POOLED).any():
            note = f"levels under {RARE_SHARE:.0%} of the reference pooled"
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
        p_value = float(stats.ks_2samp(ref, cur).pvalue)
        if small:
            statistic = p_value
        else:
            statistic = float(stats.wasserstein_distance(ref, cur) / max(np.std(ref), 0.001))
    else:
        ref_counts, cur_counts = _shares(reference, current)
        table = np.vstack([ref_counts, cur_counts])
        table = table[:, table.sum(0) > 0]
        p_value = float(stats.chi2_contingency(table).pvalue) if table.shape[1] > 1 else 1.0
        if small:
            statistic = p_value
        else:
            statistic = float(
                jensenshannon(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum())
            )
    drifted = statistic < threshold if small else statistic >= threshold and p_value < P_VALUE
    return ColumnDrift(
        name,
        kind,
        test,
        statistic,
        threshold,
        bool(drifted),
        psi(reference, current, numeric),
        len(current),
        note,
    )


def table_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    kinds: dict[str, str] | None = None,
) -> tuple[list[ColumnDrift], bool | None]:
    """Every column's drift, and whether the dataset drifts (None: no column had a verdict)."""
    kinds = kinds or {}
    results = [column_drift(c, reference[c], current[c], kinds.get(c)) for c in columns]
    judged = [r for r in results if r.drifted is not None]
    if not judged:
        return results, None
    return results, sum(bool(r.drifted) for r in judged) / len(judged) >= DATASET_SHARE
