"""What `monitor` needs from the stored rows, as compact summaries an engine returns.

Per serving version, three summaries, each a small table whatever the number of rows:

- **cells**: rows per (window, probability bin of 1/1000, outcome, immature, predicted label),
  with the summed squared error and the summed calibrated probability. Realised precision,
  recall, F1 and Brier score are exact from these, the bootstrap intervals resample them (as
  realised.py always did), and CBPE's expected confusion matrix is their calibrated sums.
- **fine**: rows and summed calibrated probability per (probability bin of 1/64,000, outcome):
  ROC AUC, realised and estimated, counting pairs inside one bin as half right; the most that
  can be off is half the share of pairs inside one bin, which the report states beside the value.
- **columns**: each input column's values with their counts (exact), or for a numeric column
  with more than MAX_DISTINCT distinct values, a histogram of GRID_CELLS equal cells with each
  cell's count, mean, min and max (drift.py bounds what that changes).

The same summaries come from a pandas frame (:func:`from_frame`, the in-memory path) or from an
engine's SQL (:func:`from_engine`), so every engine feeds the same statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from churnops.config import Settings
from churnops.monitoring import engine as engines
from churnops.monitoring import estimate, realised, store
from churnops.monitoring.drift import Weighted
from churnops.monitoring.engine import Engine, lit, quoted, text
from churnops.monitoring.estimate import Calibration

FINE_BINS = 64_000
MAX_DISTINCT = 100_000
GRID_CELLS = 1 << 14
CELL_KEYS = ["window_us", "bin", "outcome", "immature", "label"]


@dataclass
class VersionSummary:
    """Everything the monitor reads about one version's rows."""

    version: int
    rows: int
    first_us: int
    last_us: int
    cells: pd.DataFrame
    fine: pd.DataFrame
    columns: dict[str, Weighted] = field(default_factory=dict)
    probability: Weighted | None = None
    # NB: the in-memory path knows the rows, so it gives ROC AUC exactly (realised over the
    # labelled rows, estimated over all); an engine's summaries give it from the fine bins.
    exact_realised: dict[str, float] | None = None
    exact_estimated_auc: float | None = None

    @property
    def labelled(self) -> int:
        """Rows with an outcome."""
        return int(self.cells.loc[self.cells["outcome"] >= 0, "n"].sum())

    @property
    def immature(self) -> int:
        """Rows whose "retained" is not yet counted."""
        return int(self.cells.loc[self.cells["immature"], "n"].sum())


def _calibrated(probability: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    return probability if calibration is None else calibration.apply(probability)


def bins(probability: np.ndarray, count: int) -> np.ndarray:
    """Each probability's bin of 1/``count`` (1.0 in the last)."""
    return np.minimum((probability * count).astype(np.int64), count - 1)


# ---------------------------------------------------------------------------------------------
# From a frame in memory (the pandas path)


def from_frame(
    frame: pd.DataFrame,
    window: timedelta,
    calibrations: dict[int, Calibration | None],
    columns: dict[int, Sequence[str]],
) -> dict[int, VersionSummary]:
    """Each version's summaries from joined rows (``outcome`` and ``immature`` present)."""
    out = {}
    t_us = frame["time"].astype("datetime64[us, UTC]").astype("int64").to_numpy()
    window_us = int(window / timedelta(microseconds=1))
    for version in sorted(int(v) for v in frame["version"].unique()):
        mask = (frame["version"] == version).to_numpy()
        rows = frame[mask]
        t = t_us[mask]
        probability = rows["probability"].to_numpy(dtype=float)
        calibrated = _calibrated(probability, calibrations.get(version))
        outcome = rows["outcome"].to_numpy(dtype=float)
        known = ~np.isnan(outcome)
        squared = np.where(known, (probability - np.nan_to_num(outcome)) ** 2, 0.0)
        keyed = pd.DataFrame(
            {
                "window_us": t - t % window_us,
                "bin": bins(probability, realised.BINS),
                "outcome": np.where(known, np.nan_to_num(outcome), -1).astype(np.int64),
                "immature": rows["immature"].to_numpy(dtype=bool),
                "label": rows["label"].to_numpy(dtype=np.int64),
                "n": 1,
                "sq": squared,
                "c": calibrated,
            }
        )
        cells = keyed.groupby(CELL_KEYS, as_index=False)[["n", "sq", "c"]].sum()
        fine = (
            keyed.assign(fine=bins(probability, FINE_BINS))
            .groupby(["fine", "outcome"], as_index=False)[["n", "c"]]
            .sum()
        )
        summary = VersionSummary(version, len(rows), int(t.min()), int(t.max()), cells, fine)
        if known.any():
            summary.exact_realised = realised.point(
                outcome[known].astype(int),
                rows["label"].to_numpy(dtype=int)[known],
                probability[known],
            )
        summary.exact_estimated_auc = estimate.expected_auc(probability, calibrated)
        for name in columns.get(version, ()):
            stored = f"{store.INPUT_PREFIX}{name}"
            if stored in rows:
                summary.columns[name] = _counted(rows[stored])
        summary.probability = _counted(rows["probability"])
        out[version] = summary
    return out


def _counted(values: pd.Series) -> Weighted:
    counted = values.dropna().value_counts(sort=False)
    return Weighted(pd.Series(counted.index, dtype=object), counted.to_numpy(dtype=np.int64), None)


# ---------------------------------------------------------------------------------------------
# From an engine (SQL over the store)


@dataclass(frozen=True)
class Scope:
    """Which stored rows: one model under one alias in ``[since, until)``, as of ``now``."""

    model: str
    alias: str
    since: datetime | None
    until: datetime | None
    now: datetime
    horizon: timedelta


def _us(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return delta // timedelta(microseconds=1)


def rows_sql(scope: Scope, columns: Iterable[str], where: str | None = None) -> str:
    """The scope's rows (``p``): the fixed columns a report needs and ``columns``; ``where``
    replaces the alias condition."""
    wanted = ", ".join(
        quoted(c)
        for c in dict.fromkeys(
            ["version", "t_us", "probability", "label", "prediction_id", "customer_id", *columns]
        )
    )
    since = "" if scope.since is None else f" AND t_us >= {_us(scope.since)}"
    until = "" if scope.until is None else f" AND t_us < {_us(scope.until)}"
    chosen = f"alias = {text(scope.alias)}" if where is None else where
    return (
        f"SELECT {wanted} FROM predictions WHERE model = {text(scope.model)} "
        f"AND {chosen}{until}{since}"
    )


def latest_outcomes_sql() -> str:
    """One outcome per (key kind, key, time): the latest added wins (the last row of a file
    within one addition)."""
    # NB: an aggregate, not a window: one hash pass over outcomes that can be as many as the
    # predictions.
    return (
        "SELECT key_kind, key, t_us, arg_max(outcome, CAST(added_us AS DECIMAL(38, 0)) "
        '* 1000000000 + "row") AS outcome FROM outcomes GROUP BY key_kind, key, t_us'
    )


def conflicts_sql() -> str:
    """How many (key kind, key, time) have outcomes that disagree."""
    return (
        "SELECT count(*) AS conflicts FROM (SELECT key_kind, key, t_us FROM outcomes "
        "GROUP BY key_kind, key, t_us HAVING count(DISTINCT outcome) > 1) AS disagreeing"
    )


def joined_sql(scope: Scope, columns: Iterable[str] = (), where: str | None = None) -> str:
    """``joined``: the scope's rows with ``outcome`` (NULL: none counts yet) and ``immature``,
    as labels.join defines them: by prediction id, else by customer within the horizon."""
    horizon = scope.horizon // timedelta(microseconds=1)
    now = _us(scope.now)
    # NB: "an outcome within [t, t + horizon]" as two equality joins, not a range join (a
    # correlated EXISTS cost 8.5 us a row at 10M rows): with events bucketed by the horizon, an
    # event in that range is in t's bucket at or after t, or in the next bucket at most a
    # horizon after t; so the latest event of t's bucket and the earliest of the next decide,
    # both kept on one row per (customer, bucket): one probe a prediction.
    return f"""
WITH o AS ({latest_outcomes_sql()}),
byid AS (SELECT key, max(outcome) AS outcome FROM o WHERE key_kind = 'prediction_id'
         GROUP BY key),
ev AS (
  SELECT key, t_us - (t_us % {horizon}) AS bucket,
    max(CASE WHEN outcome = 1 THEN t_us END) AS churn_last,
    min(CASE WHEN outcome = 1 THEN t_us END) AS churn_first,
    max(CASE WHEN outcome = 0 THEN t_us END) AS stay_last,
    min(CASE WHEN outcome = 0 THEN t_us END) AS stay_first
  FROM o WHERE key_kind = 'customer_id' GROUP BY 1, 2
),
pairs AS (
  SELECT key, bucket, max(churn_last) AS churn_last, min(churn_next) AS churn_next,
    max(stay_last) AS stay_last, min(stay_next) AS stay_next
  FROM (
    SELECT key, bucket, churn_last, CAST(NULL AS BIGINT) AS churn_next, stay_last,
      CAST(NULL AS BIGINT) AS stay_next FROM ev
    UNION ALL
    SELECT key, bucket - {horizon}, CAST(NULL AS BIGINT), churn_first, CAST(NULL AS BIGINT),
      stay_first FROM ev
  ) AS both_buckets GROUP BY 1, 2
),
p AS ({rows_sql(scope, columns, where)}),
j AS (
  SELECT p.*, byid.outcome AS id_outcome,
    (COALESCE(e.churn_last >= p.t_us, FALSE)
     OR COALESCE(e.churn_next <= p.t_us + {horizon}, FALSE)) AS churned,
    (COALESCE(e.stay_last >= p.t_us, FALSE)
     OR COALESCE(e.stay_next <= p.t_us + {horizon}, FALSE)) AS retained
  FROM p LEFT JOIN byid ON byid.key = p.prediction_id
  LEFT JOIN pairs AS e
    ON e.key = p.customer_id AND e.bucket = p.t_us - (p.t_us % {horizon})
),
joined AS (
  SELECT j.*,
    CASE WHEN id_outcome IS NOT NULL THEN id_outcome
         WHEN customer_id IS NULL THEN NULL
         WHEN churned THEN 1
         WHEN retained AND t_us + {horizon} <= {now} THEN 0 END AS outcome,
    (id_outcome IS NULL AND customer_id IS NOT NULL AND NOT churned AND retained
     AND t_us + {horizon} > {now}) AS immature
  FROM j
)"""


def calibrated_sql(calibrations: dict[int, Calibration | None]) -> str:
    """Each row's calibrated probability, by its version's map (np.interp's formula)."""
    branches = []
    for version, calibration in sorted(calibrations.items()):
        if calibration is None or not calibration.used or not calibration.x:
            continue
        x, y = calibration.x, calibration.y
        steps = [f"WHEN probability <= {lit(x[0])} THEN {lit(y[0])}"]
        for i in range(len(x) - 1):
            slope = (y[i + 1] - y[i]) / (x[i + 1] - x[i])
            steps.append(
                f"WHEN probability < {lit(x[i + 1])} THEN "
                f"{lit(slope)} * (probability - {lit(x[i])}) + {lit(y[i])}"
            )
        steps.append(f"ELSE {lit(y[-1])}")
        branches.append(f"WHEN version = {version} THEN (CASE {' '.join(steps)} END)")
    if not branches:
        return "probability"
    return f"(CASE {' '.join(branches)} ELSE probability END)"


def from_engine(
    engine: Engine,
    scope: Scope,
    window: timedelta,
    calibrations: dict[int, Calibration | None],
    columns: dict[int, Sequence[str]],
) -> dict[int, VersionSummary]:
    """Each version's summaries, computed by ``engine`` over the store."""
    joined = joined_sql(scope)
    calibrated = calibrated_sql(calibrations)
    window_us = window // timedelta(microseconds=1)
    # NB: one pass over the joined rows for both summaries (the join is the expensive part).
    both = engine.query(
        f"""{joined},
keyed AS (
  SELECT version, t_us - (t_us % {window_us}) AS window_us,
    CAST(LEAST(FLOOR(probability * {realised.BINS}), {realised.BINS - 1}) AS BIGINT) AS bin,
    CAST(LEAST(FLOOR(probability * {FINE_BINS}), {FINE_BINS - 1}) AS BIGINT) AS fine,
    CAST(COALESCE(outcome, -1) AS BIGINT) AS outcome, immature, CAST(label AS BIGINT) AS label,
    CASE WHEN outcome IS NULL THEN CAST(0 AS DOUBLE)
         ELSE (probability - outcome) * (probability - outcome) END AS sq,
    {calibrated} AS c, t_us
  FROM joined
)
SELECT version, window_us, bin, fine, outcome, immature, label, count(*) AS n, sum(sq) AS sq,
  sum(c) AS c, min(t_us) AS first_us, max(t_us) AS last_us, GROUPING(fine) AS by_window
FROM keyed
GROUP BY GROUPING SETS ((version, window_us, bin, outcome, immature, label),
                        (version, fine, outcome))"""
    )
    by_window = both["by_window"].astype(bool)
    cells = both[by_window].drop(columns=["fine", "by_window"])
    fine = both[~by_window][["version", "fine", "outcome", "n", "c"]]
    out = {}
    for version in sorted(int(v) for v in cells["version"].unique()):
        v = version
        part = cells[cells["version"] == version].drop(columns=["version"])
        summary = VersionSummary(
            v,
            int(part["n"].sum()),
            int(part["first_us"].min()),
            int(part["last_us"].max()),
            _typed_cells(part.drop(columns=["first_us", "last_us"])),
            _typed_fine(fine[fine["version"] == version].drop(columns=["version"])),
        )
        out[v] = summary
    _column_summaries(engine, scope, out, columns)
    return out


def _typed_cells(cells: pd.DataFrame) -> pd.DataFrame:
    cells = cells.astype(
        {"window_us": "int64", "bin": "int64", "outcome": "int64", "label": "int64", "n": "int64"}
    )
    cells["immature"] = cells["immature"].astype(bool)
    cells["sq"] = cells["sq"].astype(float)
    cells["c"] = cells["c"].astype(float)
    return cells.sort_values(CELL_KEYS, kind="stable").reset_index(drop=True)


def _typed_fine(fine: pd.DataFrame) -> pd.DataFrame:
    fine = fine.astype({"fine": "int64", "outcome": "int64", "n": "int64", "c": "float64"})
    return fine.sort_values(["fine", "outcome"], kind="stable").reset_index(drop=True)


def _column_summaries(
    engine: Engine,
    scope: Scope,
    found: dict[int, VersionSummary],
    columns: dict[int, Sequence[str]],
) -> None:
    present = set(engine.columns())
    wanted: dict[str, list[int]] = {}
    for version, names in columns.items():
        for name in names:
            if f"{store.INPUT_PREFIX}{name}" in present and version in found:
                wanted.setdefault(name, []).append(version)
    # NB: (name, stored column); None names the served probability (an input may be called
    # "probability" too).
    stored: list[tuple[str | None, str]] = [
        (name, f"{store.INPUT_PREFIX}{name}") for name in wanted
    ] + [(None, "probability")]
    rows = rows_sql(scope, [column for _, column in stored])
    distinct = ", ".join(
        f"approx_count_distinct({quoted(column)}) AS d{i}" for i, (_, column) in enumerate(stored)
    )
    counts = engine.query(f"WITH p AS ({rows}) SELECT version, {distinct} FROM p GROUP BY 1")
    many = {
        column
        for i, (_, column) in enumerate(stored)
        if counts[f"d{i}"].fillna(0).max() > MAX_DISTINCT
        and engine.column_type(column) == "numeric"
    }
    # NB: a column's values are counted once for every version, all columns in one pass.
    results = _value_counts(engine, rows, [c for _, c in stored if c not in many])
    results |= _histograms(engine, rows, [c for _, c in stored if c in many])
    for key, column in stored:
        versions = list(found) if key is None else wanted[key]
        for version in versions:
            summary = results[column].get(version, Weighted(pd.Series([], dtype=object), _NONE))
            if key is None:
                found[version].probability = summary
            else:
                found[version].columns[key] = summary


_NONE = np.zeros(0, dtype=np.int64)


def _sets(columns: Sequence[str]) -> str:
    return ", ".join(f"(version, {quoted(c)})" for c in columns)


def _value_counts(
    engine: Engine, rows: str, columns: Sequence[str]
) -> dict[str, dict[int, Weighted]]:
    if not columns:
        return {}
    flags = ", ".join(f"GROUPING({quoted(c)}) AS g{i}" for i, c in enumerate(columns))
    picked = ", ".join(quoted(c) for c in columns)
    answer = engine.query(
        f"WITH p AS ({rows}) SELECT version, {picked}, count(*) AS n, {flags} FROM p "
        f"GROUP BY GROUPING SETS ({_sets(columns)})"
    )
    out: dict[str, dict[int, Weighted]] = {}
    for i, column in enumerate(columns):
        part = answer[(answer[f"g{i}"] == 0) & answer[column].notna()]
        out[column] = {}
        for version in sorted(int(v) for v in part["version"].unique()):
            group = part[part["version"] == version]
            out[column][version] = Weighted(
                pd.Series(group[column].to_numpy(), dtype=object),
                group["n"].to_numpy(dtype=np.int64),
            )
    return out


def _histograms(
    engine: Engine, rows: str, columns: Sequence[str]
) -> dict[str, dict[int, Weighted]]:
    if not columns:
        return {}
    values = [f"CAST({quoted(c)} AS DOUBLE)" for c in columns]
    ends = ", ".join(f"min({v}) AS lo{i}, max({v}) AS hi{i}" for i, v in enumerate(values))
    edges = engine.query(f"WITH p AS ({rows}) SELECT {ends} FROM p").iloc[0]
    cells, aggregates, flags = [], [], []
    for i, value in enumerate(values):
        lo, hi = float(edges[f"lo{i}"]), float(edges[f"hi{i}"])
        width = (hi - lo) / GRID_CELLS or 1.0
        cells.append(
            f"CAST(LEAST(FLOOR(({value} - {lit(lo)}) / {lit(width)}), {GRID_CELLS - 1}) "
            f"AS BIGINT) AS cell{i}"
        )
        aggregates.append(f"sum({value}) AS total{i}, min({value}) AS lo{i}, max({value}) AS hi{i}")
        flags.append(f"GROUPING(cell{i}) AS g{i}")
    sets = ", ".join(f"(version, cell{i})" for i in range(len(columns)))
    answer = engine.query(
        f"WITH p AS ({rows}), c AS (SELECT *, {', '.join(cells)} FROM p) "
        f"SELECT version, {', '.join(f'cell{i}' for i in range(len(columns)))}, count(*) AS n, "
        f"{', '.join(aggregates)}, {', '.join(flags)} FROM c GROUP BY GROUPING SETS ({sets})"
    )
    out: dict[str, dict[int, Weighted]] = {}
    for i, column in enumerate(columns):
        part = answer[(answer[f"g{i}"] == 0) & answer[f"cell{i}"].notna()]
        out[column] = {}
        for version in sorted(int(v) for v in part["version"].unique()):
            group = part[part["version"] == version]
            lows, highs = group[f"lo{i}"].to_numpy(float), group[f"hi{i}"].to_numpy(float)
            n = group["n"].to_numpy(dtype=np.int64)
            means = np.clip(group[f"total{i}"].to_numpy(float) / n, lows, highs)
            out[column][version] = Weighted(pd.Series(means, dtype=object), n, highs - lows)
    return out


def conflicts(engine: Engine) -> int:
    """Keys whose outcomes disagree."""
    return int(engine.query(conflicts_sql())["conflicts"].iloc[0])


# ---------------------------------------------------------------------------------------------
# Where the summaries come from


class Source(Protocol):
    """The stored rows of one scope, as the monitor asks about them."""

    def versions(self) -> list[int]:
        """The versions that served rows in the scope."""
        ...

    def summaries(
        self,
        window: timedelta,
        calibrations: dict[int, Calibration | None],
        columns: dict[int, Sequence[str]],
    ) -> dict[int, VersionSummary]:
        """Each version's summaries."""
        ...

    def conflicts(self) -> int:
        """Keys whose outcomes disagree."""
        ...

    def labelled_rows(self, version: int, inputs: Sequence[str], limit: int) -> pd.DataFrame:
        """Up to ``limit`` of ``version``'s rows with an outcome (the first by prediction id,
        a sample that is the same on every engine): ``inputs``, ``outcome`` and ``label``."""
        ...


class FrameSource:
    """The pandas path: every row of the scope read into memory and joined there."""

    def __init__(self, settings: Settings, scope: Scope) -> None:
        from churnops.monitoring import labels

        target = store.settings_store(settings)
        table = store.read_predictions(
            target,
            scope.model,
            scope.since,
            scope.until,
            # NB: what monitoring never reads stays on disk (measured: 1,000,000 rows with
            # every column peaked at 1.2 GiB).
            skip=("served_at", "source", "model", "request_id", "threshold", "role"),
            ordered=False,
        )
        table = table.filter(pc.equal(table["alias"], scope.alias)).drop_columns(["alias"])
        frame = table.to_pandas()
        del table
        stored = store.read_labels(target)
        joined = labels.join(
            frame,
            None if stored is None else stored.to_pandas(),
            pd.Timedelta(scope.horizon),
            pd.Timestamp(scope.now),
        )
        self._frame, self._conflicts = joined.frame, joined.conflicts

    def versions(self) -> list[int]:
        """The versions that served rows in the scope."""
        return sorted(int(v) for v in self._frame["version"].unique())

    def summaries(
        self,
        window: timedelta,
        calibrations: dict[int, Calibration | None],
        columns: dict[int, Sequence[str]],
    ) -> dict[int, VersionSummary]:
        """Each version's summaries."""
        return from_frame(self._frame, window, calibrations, columns)

    def conflicts(self) -> int:
        """Keys whose outcomes disagree."""
        return self._conflicts

    def labelled_rows(self, version: int, inputs: Sequence[str], limit: int) -> pd.DataFrame:
        """Up to ``limit`` of ``version``'s rows with an outcome, by prediction id."""
        frame = self._frame
        rows = frame[(frame["version"] == version) & frame["outcome"].notna()]
        rows = rows.sort_values("prediction_id", kind="stable").head(limit)
        stored = {f"{store.INPUT_PREFIX}{c}": c for c in inputs}
        picked = rows[[c for c in stored if c in rows.columns]].rename(columns=stored)
        return picked.assign(
            outcome=rows["outcome"].to_numpy(dtype=int), label=rows["label"].to_numpy(dtype=int)
        ).reset_index(drop=True)


class EngineSource:
    """An engine's SQL over the store."""

    def __init__(self, engine: Engine, scope: Scope) -> None:
        self._engine, self._scope = engine, scope

    def versions(self) -> list[int]:
        """The versions that served rows in the scope."""
        answer = self._engine.query(
            f"WITH p AS ({rows_sql(self._scope, [])}) SELECT DISTINCT version FROM p"
        )
        return sorted(int(v) for v in answer["version"])

    def summaries(
        self,
        window: timedelta,
        calibrations: dict[int, Calibration | None],
        columns: dict[int, Sequence[str]],
    ) -> dict[int, VersionSummary]:
        """Each version's summaries."""
        return from_engine(self._engine, self._scope, window, calibrations, columns)

    def conflicts(self) -> int:
        """Keys whose outcomes disagree."""
        return conflicts(self._engine)

    def labelled_rows(self, version: int, inputs: Sequence[str], limit: int) -> pd.DataFrame:
        """Up to ``limit`` of ``version``'s rows with an outcome, by prediction id."""
        present = set(self._engine.columns())
        stored = [c for c in inputs if f"{store.INPUT_PREFIX}{c}" in present]
        picked = ", ".join(f"{quoted(store.INPUT_PREFIX + c)} AS {quoted(c)}" for c in stored)
        rows = self._engine.query(
            f"""{joined_sql(self._scope, [store.INPUT_PREFIX + c for c in stored])}
SELECT {picked}{", " if picked else ""}CAST(outcome AS BIGINT) AS outcome,
  CAST(label AS BIGINT) AS label
FROM joined WHERE version = {int(version)} AND outcome IS NOT NULL
ORDER BY prediction_id LIMIT {int(limit)}"""
        )
        return rows.reset_index(drop=True)


@contextmanager
def open_source(settings: Settings, name: str, scope: Scope) -> Iterator[Source]:
    """The scope's rows through engine ``name`` (duckdb, spark or pandas)."""
    if name == "pandas":
        yield FrameSource(settings, scope)
        return
    target = store.settings_store(settings)
    with engines.open_engine(settings, name, target, scope.since, scope.until) as engine:
        yield EngineSource(engine, scope)
