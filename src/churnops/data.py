"""Churn data: the built-in synthetic generator and the loader that turns a CSV into features + 0/1
target, refusing unusable tables with a message that names the problem.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churnops.config import MIN_TRAINING_ROWS, TARGET
from churnops.errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")
NUMERIC_FEATURES = ("tenure_months", "num_complaints", "avg_session_minutes")
CATEGORICAL_FEATURES = ("plan_type", "region")
PLAN_TYPES = ("basic", "standard", "premium")
REGIONS = ("NA", "EU", "AF", "AS")
IDENTIFIER = "identifier: every value distinct"
NAMED_IDENTIFIER = "identifier: the customer id the table names"
# NB: a Parquet table can name its customer id column in its schema's metadata (tables built
# from the prediction store do: a customer appears once per outcome, so its ids repeat).
ID_COLUMN_METADATA = b"churnops.id_column"
ROW_NUMBER = "row number: every value distinct, increasing in table order"
# NB: a text column with more distinct values than this is not one-hot encoded: surnames and
# free text (thousands of values) would become thousands of sparse, mostly-noise columns. The
# telecom table's State (51 values) stays categorical.
HIGH_CARDINALITY = 100
# NB: a high-cardinality column is kept (target-encoded) only when its cross-fitted encoding
# ranks churners above chance by this many standard errors of the AUC under no signal (the
# Mann-Whitney null, one-sided p ~ 0.001); bench/search.py measures why (see BENCHMARKS.md).
SIGNAL_Z = 3.0
TARGET_ENCODED = "categorical, target-encoded"
BUILTIN_SOURCE = "built-in synthetic data"
log = logging.getLogger(__name__)

# NB: the event time of each row of a table built from the prediction store; not a feature.
TIME_COLUMN = "__time__"

# NB: label spellings seen in real churn tables; anything else needs an explicit mapping.
_POSITIVE_LABELS = frozenset({"1", "1.0", "true", "yes", "y", "t", "churn", "churned"})
_NEGATIVE_LABELS = frozenset({"0", "0.0", "false", "no", "n", "f", "retained", "stayed"})

# Coefficients of the synthetic logistic model; the intercept puts the positive rate near 25%.
_INTERCEPT = -2.2
_PLAN_EFFECT = {"basic": 0.7, "standard": 0.0, "premium": -0.8}
_REGION_EFFECT = {"NA": 0.0, "EU": -0.15, "AF": 0.25, "AS": 0.1}


@dataclass(frozen=True)
class Dataset:
    """Features and a 0/1 target, with the columns split by kind."""

    features: pd.DataFrame
    target: pd.Series
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    source: str
    report: DataReport
    # NB: high-cardinality text columns that carry signal: target-encoded, never one-hot.
    encoded: tuple[str, ...] = ()
    # NB: when the table has TIME_COLUMN (a table `train --from-store` built), each row's
    # event time: training then holds out the newest rows instead of a random share.
    times: pd.Series | None = None

    @property
    def table(self) -> pd.DataFrame:
        """The features with the 0/1 target column beside them, as training saw the table."""
        return self.features.assign(**{self.report.target: self.target.to_numpy()})

    @property
    def positive_rate(self) -> float:
        """Share of rows labelled as churned."""
        return float(self.target.mean())

    @property
    def id_column(self) -> str | None:
        """The customer identifier column training dropped, if the table has one: an
        identifier before a row number (a table with RowNumber and CustomerId is keyed by the
        customer, whose outcomes arrive later under that id)."""
        dropped = self.report.dropped_columns
        for reason in (NAMED_IDENTIFIER, IDENTIFIER, ROW_NUMBER):
            found = [c for c, why in dropped.items() if why == reason]
            if found:
                return str(found[0])
        return None


@dataclass(frozen=True)
class DataReport:
    """What loading did to a table: rows kept and dropped, columns used and dropped, and why."""

    source: str
    target: str
    rows_read: int
    rows_without_label: int
    rows_kept: int
    columns: dict[str, str]
    dropped_columns: dict[str, str]
    positive_rate: float
    missing_values: dict[str, int]

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready data."""
        return dict(self.__dict__)

    def render(self) -> str:
        """A short text report."""
        lines = [
            f"data: {self.source}: {self.rows_read} rows read, {self.rows_kept} kept, "
            f"{self.rows_without_label} dropped without a {self.target!r} label; "
            f"churn rate {self.positive_rate:.1%}",
            "  columns used: " + ", ".join(f"{c} ({k})" for c, k in self.columns.items()),
        ]
        if self.missing_values:
            lines.append(
                "  missing values (imputed by the model): "
                + ", ".join(f"{c} {n}" for c, n in self.missing_values.items())
            )
        if self.dropped_columns:
            lines.append(
                "  columns dropped: "
                + ", ".join(f"{c} ({why})" for c, why in self.dropped_columns.items())
            )
        return "\n".join(lines)


def generate(
    rows: int = 5000,
    seed: int = 42,
    *,
    first_id: int = 1,
    covariate_shift: float = 0.0,
    concept_drift: float = 0.0,
) -> pd.DataFrame:
    """Draw a synthetic churn table in the course's schema from a seeded logistic model, with a
    ``customer_id`` column (an identifier, which training drops).

    ``covariate_shift`` (0..1) moves the customers: shorter tenure, more complaints, shorter
    sessions, more basic plans; churn still follows the same model of them. ``concept_drift``
    (0..1) changes the model itself: complaints stop predicting churn and long tenure starts to.
    """
    if rows < 1:
        raise DataError(f"rows must be at least 1 (got {rows})")
    rng = np.random.default_rng(seed)
    s, c = covariate_shift, concept_drift
    tenure = rng.integers(1, 73 - round(40 * s), size=rows)
    complaints = np.minimum(rng.poisson(0.9 * (1 + 1.5 * s), size=rows), 10)
    session = np.clip(rng.normal(32.0 - 10.0 * s, 11.0, size=rows), 1.0, None).round(1)
    basic = 0.5 + 0.3 * s
    plan = rng.choice(PLAN_TYPES, size=rows, p=[basic, (1 - basic) * 0.6, (1 - basic) * 0.4])
    region = rng.choice(REGIONS, size=rows, p=[0.35, 0.3, 0.15, 0.2])
    logit = (
        _INTERCEPT
        - 0.1 * (1 - 2 * c) * (tenure - 36)
        + 1.6 * (1 - 1.5 * c) * (complaints - 0.9)
        - 0.07 * (session - 32.0)
        + np.vectorize(_PLAN_EFFECT.__getitem__)(plan)
        + np.vectorize(_REGION_EFFECT.__getitem__)(region)
        + rng.normal(0.0, 0.3, size=rows)
    )
    churn = rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:07d}" for i in range(first_id, first_id + rows)],
            "tenure_months": tenure,
            "num_complaints": complaints,
            "avg_session_minutes": session,
            "plan_type": plan,
            "region": region,
            TARGET: churn.astype(int),
        }
    )


def write_generated(path: Path, rows: int = 5000, seed: int = 42) -> pd.DataFrame:
    """Generate the built-in data set and write it to ``path`` atomically."""
    if rows < MIN_TRAINING_ROWS:
        raise DataError(f"--rows must be at least {MIN_TRAINING_ROWS} (got {rows})")
    writable_destination(path)
    frame = generate(rows=rows, seed=seed)
    partial = path.with_name(path.name + ".partial")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        frame.to_parquet(partial, index=False)
    else:
        frame.to_csv(partial, index=False)
    partial.replace(path)
    return frame


def writable_destination(path: Path) -> None:
    """Make sure ``path`` can be written before any work starts: its folder is created (and
    said so on the log) when missing; an unwritable place is one clear DataError."""
    folder = path.parent
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a file name, e.g. {path / 'scores.csv'}")
    try:
        if not folder.exists():
            folder.mkdir(parents=True)
            log.info("created the folder %s", folder)
    except OSError as exc:
        raise DataError(
            f"cannot create the folder {folder} for {path.name}: {exc.strerror}; choose a "
            "place you can write to"
        ) from None
    try:
        # NB: a real file, not os.access: root passes every access check, and /proc refuses.
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise DataError(
            f"cannot write {path}: {exc.strerror or exc}; choose a place you can write to"
        ) from None


def _label_text(labels: pd.Series) -> pd.Series:
    """Labels as trimmed lower-case text, with the spellings of a missing label as NA."""
    text = labels.astype("string").str.strip().str.lower()
    return text.mask(text.isin(["", "nan", "na", "none", "?"]))


def normalise_target(labels: pd.Series, column: str) -> pd.Series:
    """Map label spellings (yes/no, true/false, 1/0, ...) to 0/1, keeping missing labels as NA."""
    text = _label_text(labels)
    mapped = pd.Series(pd.NA, index=labels.index, dtype="Int64")
    mapped[text.isin(_POSITIVE_LABELS).fillna(False)] = 1
    mapped[text.isin(_NEGATIVE_LABELS).fillna(False)] = 0
    unknown = sorted(set(text.dropna()) - _POSITIVE_LABELS - _NEGATIVE_LABELS)
    if unknown:
        shown = ", ".join(repr(v) for v in unknown[:5])
        raise DataError(
            f"target column {column!r} has values that are not a churn label: {shown}; "
            "use labels such as yes/no, true/false or 1/0, or name the churn value with "
            "--positive-label VALUE"
        )
    return mapped


def _positive_label_target(labels: pd.Series, positive: str) -> pd.Series:
    text = _label_text(labels)
    mapped = pd.Series(pd.NA, index=labels.index, dtype="Int64")
    present = text.notna()
    mapped[present] = (text[present] == positive.strip().lower()).astype(int)
    return mapped


def _is_row_number(values: pd.Series) -> bool:
    """Whether distinct integers increase down the table, as a row number's do."""
    return pd.api.types.is_integer_dtype(values) and bool(values.is_monotonic_increasing)


def _dropped_columns(features: pd.DataFrame) -> dict[str, str]:
    """Columns that cannot help a model: row identifiers (row numbers told apart) and
    constants."""
    dropped = {}
    for column in features.columns:
        values = features[column].dropna()
        if values.nunique() <= 1:
            dropped[column] = "constant"
        elif (
            not pd.api.types.is_float_dtype(values)
            and len(values) > 1
            and values.nunique() == len(values)
        ):
            # NB: never a float column: distinct measurements (a salary) are not identifiers.
            dropped[column] = ROW_NUMBER if _is_row_number(values) else IDENTIFIER
    return dropped


def encoding_signal(values: pd.Series, y: pd.Series) -> tuple[float, float]:
    """(ROC AUC of the column's cross-fitted target encoding against ``y``, the AUC that many
    standard errors of no signal above 0.5 would reach): what a model could learn from it.

    NB: cross-fitted (scikit-learn's TargetEncoder, 5 folds): each row's encoding comes from
    the other folds' rows, so a column of noise scores ~0.5 however many values it has.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import TargetEncoder

    text = values.astype(object).where(values.notna(), "").to_numpy().reshape(-1, 1)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    encoder = TargetEncoder(target_type="binary", cv=folds)
    encoded = encoder.fit_transform(text, y.to_numpy())[:, 0]
    auc = float(roc_auc_score(y, encoded))
    positives = int(y.sum())
    negatives = len(y) - positives
    null_se = float(np.sqrt((positives + negatives + 1) / (12 * positives * negatives)))
    return auc, 0.5 + SIGNAL_Z * null_se


def _high_cardinality(
    features: pd.DataFrame, categorical: tuple[str, ...], y: pd.Series
) -> tuple[dict[str, str], dict[str, str]]:
    """Text columns with more than HIGH_CARDINALITY values: ({column: why} to target-encode,
    {column: why} to drop), decided by the signal in their cross-fitted encoding."""
    encode, drop = {}, {}
    for column in categorical:
        levels = int(features[column].nunique())
        if levels <= HIGH_CARDINALITY:
            continue
        auc, needed = encoding_signal(features[column], y)
        measured = f"{levels:,} values, cross-fitted encoding AUC {auc:.3f}"
        if auc >= needed:
            encode[column] = f"{TARGET_ENCODED} ({measured})"
        else:
            drop[column] = f"high-cardinality text without signal ({measured} < {needed:.3f})"
    return encode, drop


def from_frame(
    frame: pd.DataFrame,
    target: str = TARGET,
    source: str = "<frame>",
    positive_label: str | None = None,
    identifier: str | None = None,
) -> Dataset:
    """Split a table into features and a 0/1 target, refusing data that cannot train a model."""
    if target not in frame.columns:
        columns = ", ".join(map(str, frame.columns)) or "none"
        raise DataError(f"{source}: target column {target!r} not found; the columns are: {columns}")
    if positive_label is not None:
        labels = _positive_label_target(frame[target], positive_label)
    else:
        labels = normalise_target(frame[target], target)
    labelled = labels.notna()
    features = frame.loc[labelled].drop(columns=[target]).reset_index(drop=True)
    y = labels[labelled].astype(int).reset_index(drop=True)
    times = None
    if TIME_COLUMN in features.columns:
        times = pd.to_datetime(features.pop(TIME_COLUMN), utc=True).reset_index(drop=True)
    if len(y) < MIN_TRAINING_ROWS:
        raise DataError(
            f"{source}: only {len(y)} labelled rows; at least {MIN_TRAINING_ROWS} are needed"
        )
    if y.nunique() < 2:
        raise DataError(
            f"{source}: target {target!r} has a single class ({int(y.iloc[0])}); "
            "a churn model needs both churned and retained customers"
        )
    dropped = _dropped_columns(features)
    if identifier is not None and identifier in features.columns:
        dropped[identifier] = NAMED_IDENTIFIER
    features = features.drop(columns=list(dropped))
    if features.shape[1] == 0:
        raise DataError(
            f"{source}: no usable feature columns besides the target {target!r} "
            f"(dropped: {', '.join(dropped) or 'none'})"
        )
    numeric = tuple(c for c in features.columns if pd.api.types.is_numeric_dtype(features[c]))
    categorical = tuple(c for c in features.columns if c not in numeric)
    for column in categorical:
        # NB: plain objects with NaN for missing, which the pipeline's imputer understands.
        values = features[column]
        features[column] = values.astype(str).where(values.notna(), np.nan).astype(object)
    encode, noise = _high_cardinality(features, categorical, y)
    dropped |= noise
    features = features.drop(columns=list(noise))
    if features.shape[1] == 0:
        raise DataError(
            f"{source}: no usable feature columns besides the target {target!r} "
            f"(dropped: {', '.join(dropped)})"
        )
    categorical = tuple(c for c in categorical if c not in noise and c not in encode)
    report = DataReport(
        source=source,
        target=target,
        rows_read=len(frame),
        rows_without_label=int((~labelled).sum()),
        rows_kept=len(y),
        columns={
            c: "numeric" if c in numeric else encode.get(c, "categorical") for c in features.columns
        },
        dropped_columns=dropped,
        positive_rate=float(y.mean()),
        missing_values={str(c): int(n) for c, n in features.isna().sum().items() if n},
    )
    return Dataset(features, y, numeric, categorical, source, report, tuple(encode), times)


# NB: "NA" is not among them: it is a region code (North America) in churn data. A single space
# is: real exports write one for an empty number (11 of 7,043 TotalCharges cells in one), and
# `churnops score` reads with these markers too.
MISSING_MARKERS = ("", " ", "?", "NaN", "nan", "NULL", "null", "None", "N/A", "n/a", "#N/A")


def _coerce_numeric_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Turn whitespace-only cells into missing values, then text columns whose every present
    value is a number (or "NA") into numeric columns."""
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values):
            continue
        if pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values):
            text = values.where(values.map(lambda v: isinstance(v, str)))
            values = values.mask(text.str.strip().eq("").fillna(False).astype(bool))
            frame[column] = values
        marker = values.isin(["NA", "na"])
        numbers = pd.to_numeric(values.mask(marker), errors="coerce")
        present = values.notna() & ~marker
        if present.any() and numbers[present].notna().all():
            frame[column] = numbers
    return frame


def load(
    path: Path | None, seed: int, target: str = TARGET, positive_label: str | None = None
) -> Dataset:
    """The table at ``path``, or without one the built-in data drawn with ``seed``."""
    if path is None:
        return from_frame(generate(seed=seed), source=BUILTIN_SOURCE)
    return load_table(path, target=target, positive_label=positive_label)


def load_table(path: Path, target: str = TARGET, positive_label: str | None = None) -> Dataset:
    """Read a churn table (CSV, or Parquet by its suffix) and validate it for training."""
    identifier = None
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            frame = pd.read_parquet(path)
            import pyarrow.parquet as pq

            metadata = pq.read_schema(path).metadata or {}
            named = metadata.get(ID_COLUMN_METADATA)
            identifier = None if named is None else named.decode()
        else:
            frame = pd.read_csv(path, keep_default_na=False, na_values=list(MISSING_MARKERS))
    except FileNotFoundError:
        raise DataError(f"data file {path} does not exist") from None
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        OSError,
        ValueError,
    ) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    return from_frame(
        _coerce_numeric_text(frame),
        target=target,
        source=str(path),
        positive_label=positive_label,
        identifier=identifier,
    )
