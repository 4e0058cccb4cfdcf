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
# NB: scipy's ks_2samp computes the exact p-value up to this many rows a side, else Smirnov's.
KS_EXACT_ROWS = 10_000
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


@dataclass
class Weighted:
    """Current values as distinct ``values`` with ``counts`` (an engine's summary, or a column
    counted here); ``spread``: each value's cell width when it stands for a histogram cell."""

    values: pd.Series
    counts: np.ndarray
    spread: np.ndarray | None = None

    @classmethod
    def of(cls, values: pd.Series) -> Weighted:
        """A column's values counted."""
        counted = values.value_counts(sort=False, dropna=True)
        return cls(pd.Series(counted.index, dtype=object), counted.to_numpy(dtype=np.int64))

    @property
    def rows(self) -> int:
        """How many values."""
        return int(self.counts.sum())

    def as_kind(self, kind: str | None, numeric: bool | None = None) -> Weighted:
        """The values read as ``kind`` (see _as_kind), counts of values that read alike summed."""
        values = self.values
        converted: pd.Series
        if kind == "numeric" or numeric:
            converted = pd.to_numeric(values.astype(object), errors="coerce").astype(float)
        elif kind == "categorical":
            converted = values.astype(str)
        else:
            converted = values
        keep = converted.notna().to_numpy()
        frame = pd.DataFrame(
            {
                "value": converted[keep].to_numpy(),
                "n": self.counts[keep],
                "spread": (np.zeros(len(values)) if self.spread is None else self.spread)[keep],
            }
        )
        if self.spread is None:
            grouped = frame.groupby("value", sort=True, as_index=False).agg(
                n=("n", "sum"), spread=("spread", "max")
            )
            return Weighted(
                pd.Series(grouped["value"].to_numpy(), dtype=object),
                grouped["n"].to_numpy(dtype=np.int64),
            )
        frame = frame.sort_values("value", kind="stable")
        return Weighted(
            pd.Series(frame["value"].to_numpy(), dtype=object),
            frame["n"].to_numpy(dtype=np.int64),
            frame["spread"].to_numpy(dtype=float),
        )

    def floats(self) -> np.ndarray:
        """The values as floats."""
        return self.values.to_numpy(dtype=float)


def _pooled(reference: pd.Series, current: Weighted) -> tuple[pd.Series, Weighted]:
    """A high-cardinality column with its rare and new levels pooled into one."""
    ref, cur = reference.astype(str), current.values.astype(str)
    if ref.nunique() <= HIGH_CARDINALITY:
        return ref, Weighted(cur, current.counts)
    shares = ref.value_counts(normalize=True)
    frequent = set(shares.index[shares >= RARE_SHARE])
    return ref.where(ref.isin(frequent), POOLED), Weighted(
        cur.where(cur.isin(frequent), POOLED), current.counts
    )


def _shares(reference: pd.Series, current: Weighted) -> tuple[np.ndarray, np.ndarray]:
    """Category counts of both samples over the union of their categories."""
    ref = reference.astype(str).value_counts()
    cur = pd.Series(current.counts, index=current.values.astype(str)).groupby(level=0).sum()
    categories = sorted(set(ref.index) | set(cur.index))
    return (
        ref.reindex(categories, fill_value=0).to_numpy(dtype=float),
        cur.reindex(categories, fill_value=0).to_numpy(dtype=float),
    )


def psi(reference: pd.Series, current: Weighted, numeric: bool) -> float:
    """Population stability index over 10 equal-width bins (numeric) or the categories."""
    if numeric:
        ref, cur = reference.to_numpy(dtype=float), current.floats()
        ends = np.array([min(ref.min(), cur.min()), max(ref.max(), cur.max())])
        edges = np.histogram_bin_edges(ends, bins=PSI_BINS)
        ref_counts = np.histogram(ref, edges)[0].astype(float)
        cur_counts = np.histogram(cur, edges, weights=current.counts.astype(float))[0]
    else:
        ref_counts, cur_counts = _shares(reference, current)
    ref_share = np.maximum(ref_counts / ref_counts.sum(), PSI_FLOOR)
    cur_share = np.maximum(cur_counts / cur_counts.sum(), PSI_FLOOR)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def ks_p_value(reference: np.ndarray, current: Weighted) -> tuple[float, float]:
    """scipy's two-sided two-sample Kolmogorov-Smirnov p-value and statistic, from counts: the
    exact method on the expanded values while the current sample is small enough for scipy to
    use it (<= 10,000), else the statistic from the two empirical distributions and Smirnov's
    asymptotic distribution, as scipy computes it there."""
    n2 = current.rows
    if n2 <= KS_EXACT_ROWS:
        result = stats.ks_2samp(reference, np.repeat(current.floats(), current.counts))
        return float(result.pvalue), float(result.statistic)
    ref = np.sort(reference)
    values, counts = current.floats(), current.counts
    grid = np.union1d(ref, values)
    cdf1 = np.searchsorted(ref, grid, side="right") / len(ref)
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    cdf2 = cumulative[np.searchsorted(values, grid, side="right")] / n2
    d = float(max(np.clip(-(cdf1 - cdf2).min(), 0, 1), (cdf1 - cdf2).max()))
    m, n = sorted([float(len(ref)), float(n2)], reverse=True)
    return float(np.clip(stats.kstwo.sf(d, np.round(m * n / (m + n))), 0, 1)), d


def _approximation(current: Weighted, reference: np.ndarray) -> float | None:
    """When the current values stand for histogram cells: the most the Kolmogorov-Smirnov
    statistic can be off (the largest share of rows in one cell wider than a point) and the most
    the normalised Wasserstein distance can be (each row moved at most its cell's width)."""
    if current.spread is None or not (current.spread > 0).any():
        return None
    shares = current.counts / current.rows
    wide = current.spread > 0
    ks = float(shares[wide].max())
    wasserstein = float((shares * current.spread).sum() / max(np.std(reference), 0.001))
    return max(ks, wasserstein)


def column_drift(
    name: str,
    reference: pd.Series,
    current: pd.Series | Weighted,
    recorded: str | None = None,
) -> ColumnDrift:
    """Test one column of the current rows (values, or their counts) against the reference rows,
    both read as the ``recorded`` kind (numeric / categorical) when training recorded one."""
    reference = _as_kind(reference, recorded)
    counted = current if isinstance(current, Weighted) else Weighted.of(current)
    numeric = _is_numeric(reference)
    kind = "numeric" if numeric else "categorical"
    counted = counted.as_kind(recorded, numeric=numeric)
    note = ""
    if not numeric:
        reference, counted = _pooled(reference, counted)
        if reference.nunique() == 1 and (reference == POOLED).all():
            return ColumnDrift(
                name,
                kind,
                "none",
                None,
                DISTANCE,
                None,
                None,
                counted.rows,
                f"high cardinality: no level holds {RARE_SHARE:.0%} of the reference",
            )
        if (reference == POOLED).any():
            note = f"levels under {RARE_SHARE:.0%} of the reference pooled"
    small = len(reference) <= SMALL_REFERENCE
    if numeric:
        test, threshold = ("ks", P_VALUE) if small else ("wasserstein", DISTANCE)
    else:
        test, threshold = ("chi2", P_VALUE) if small else ("jensenshannon", DISTANCE)
    if counted.rows < MIN_ROWS or len(reference) < MIN_ROWS:
        return ColumnDrift(
            name, kind, test, None, threshold, None, None, counted.rows, "too few rows"
        )
    bound = None
    if numeric:
        ref = reference.to_numpy(dtype=float)
        p_value, _ = ks_p_value(ref, counted)
        if small:
            statistic = p_value
        else:
            statistic = float(
                stats.wasserstein_distance(
                    ref, counted.floats(), v_weights=counted.counts.astype(float)
                )
                / max(np.std(ref), 0.001)
            )
        bound = _approximation(counted, ref)
        if bound is not None:
            note = f"from a {len(counted.counts)}-cell histogram: statistic within {bound:.2g}"
    else:
        ref_counts, cur_counts = _shares(reference, counted)
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
        psi(reference, counted, numeric),
        counted.rows,
        note,
    )


def table_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame | dict[str, Weighted],
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
