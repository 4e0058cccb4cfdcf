"""What `compare` needs from the stored rows, as counts an engine returns.

Two summaries, each a small table whatever the number of rows:

- **pairs** (shadow rows joined to the production answer they shadow): rows per (outcome,
  production's label, challenger's label, production's score, challenger's score). F1, McNemar's
  test and agreement are exact from the labels; ROC AUC (DeLong) and the rank correlation are
  computed on the scores with their counts, exact from the rows in memory, and on probability
  bins of 1/SCORE_BINS from an engine (pairs inside one bin tie; the AUCs state their bound).
- **sides** (canary rows, and production's over the canary's period): rows per (outcome, label,
  score), the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import pyarrow.compute as pc

from churnops.config import Settings
from churnops.monitoring import engine as engines
from churnops.monitoring import labels, store
from churnops.monitoring.summary import Scope, joined_sql, rows_sql

SCORE_BINS = 1000
COLUMNS = (
    "prediction_id",
    "time",
    "version",
    "alias",
    "role",
    "probability",
    "label",
    "customer_id",
)


@dataclass(frozen=True)
class Pairs:
    """Shadowed rows with production's answer: counts per (outcome -1/0/1, label_a, label_b,
    score_a, score_b), and the production versions that answered them."""

    counts: pd.DataFrame
    production_versions: list[int]
    binned: bool


@dataclass(frozen=True)
class Side:
    """One side's rows: counts per (outcome -1/0/1, label, score)."""

    counts: pd.DataFrame
    binned: bool

    @property
    def rows(self) -> int:
        """How many rows."""
        return int(self.counts["n"].sum())


@dataclass(frozen=True)
class Found:
    """Everything compare reads: shadow pairs, canary rows and production's over their period
    (None when the challenger has no rows of that role)."""

    pairs: Pairs | None
    canary: Side | None
    production: Side | None
    production_versions: list[int]


def _side(frame: pd.DataFrame) -> Side:
    counts = (
        frame.assign(
            outcome=frame["outcome"].fillna(-1).astype("int64"),
            label=frame["label"].astype("int64"),
            score=frame["probability"].astype(float),
        )
        .groupby(["outcome", "label", "score"], as_index=False)
        .size()
        .rename(columns={"size": "n"})
    )
    return Side(counts, binned=False)


def from_frame(settings: Settings, version: int, until: datetime | None, now: datetime) -> Found:
    """The pandas path: the rows in memory, joined there."""
    table = store.read_predictions(
        store.settings_store(settings), settings.model_name, until=until, columns=COLUMNS
    )
    if "role" not in table.column_names or table.num_rows == 0:
        return Found(None, None, None, [])
    role = pc.fill_null(table["role"], "production")
    challenger = pc.and_(pc.equal(table["version"], version), pc.not_equal(role, "production"))
    production = pc.and_(pc.equal(table["alias"], settings.alias), pc.equal(role, "production"))
    frame = table.filter(pc.or_(challenger, production)).to_pandas()
    frame["role"] = frame["role"].fillna("production")
    stored = store.read_labels(store.settings_store(settings))
    joined = labels.join(
        frame,
        None if stored is None else stored.to_pandas(),
        pd.Timedelta(days=settings.churn_horizon_days),
        pd.Timestamp(now),
    ).frame
    prod = joined[joined["role"] == "production"]
    shadow_rows = joined[joined["role"] == "shadow"]
    canary_rows = joined[joined["role"] == "canary"]
    versions = sorted(int(v) for v in prod["version"].unique())
    pairs = None
    if len(shadow_rows):
        matched = prod[["prediction_id", "version", "probability", "label", "outcome"]].merge(
            shadow_rows[["prediction_id", "probability", "label"]],
            on="prediction_id",
            suffixes=("_a", "_b"),
        )
        counts = (
            matched.assign(outcome=matched["outcome"].fillna(-1).astype("int64"))
            .groupby(
                ["outcome", "label_a", "label_b", "probability_a", "probability_b"],
                as_index=False,
            )
            .size()
            .rename(columns={"size": "n", "probability_a": "score_a", "probability_b": "score_b"})
        )
        counts = counts.astype({"label_a": "int64", "label_b": "int64"})
        versions = sorted(int(v) for v in matched["version"].unique())
        pairs = Pairs(counts, versions, binned=False)
    canary = period = None
    if len(canary_rows):
        start, end = canary_rows["time"].min(), canary_rows["time"].max()
        period = _side(prod[(prod["time"] >= start) & (prod["time"] <= end)])
        canary = _side(canary_rows)
    return Found(pairs, canary, period, versions)


def _score(column: str) -> str:
    # NB: a bin's middle stands for its rows' scores.
    return (
        f"(CAST(LEAST(FLOOR({column} * {SCORE_BINS}), {SCORE_BINS - 1}) AS DOUBLE) + 0.5) "
        f"/ {SCORE_BINS}"
    )


def from_engine(
    engine: engines.Engine, scope: Scope, version: int, until: datetime | None
) -> Found:
    """An engine's SQL over the store."""
    if "role" not in engine.columns():
        return Found(None, None, None, [])
    production = (
        f"alias = {engines.text(scope.alias)} AND COALESCE(role, 'production') = 'production'"
    )
    challenger = f"version = {int(version)} AND COALESCE(role, 'production') <> 'production'"
    # NB: each question reads the joined rows once: a relation used twice is materialised,
    # which at 100,000,000 rows is what runs out of memory.
    pairs = engine.query(
        f"""{joined_sql(scope, where=production)},
b AS ({rows_sql(scope, ["role"], where=f"{challenger} AND role = 'shadow'")})
SELECT joined.version, CAST(COALESCE(joined.outcome, -1) AS BIGINT) AS outcome,
  CAST(joined.label AS BIGINT) AS label_a, CAST(b.label AS BIGINT) AS label_b,
  {_score("joined.probability")} AS score_a, {_score("b.probability")} AS score_b,
  count(*) AS n
FROM joined JOIN b ON joined.prediction_id = b.prediction_id GROUP BY 1, 2, 3, 4, 5, 6"""
    )
    found_pairs = None
    answer = engine.query(
        f"WITH p AS ({rows_sql(scope, [], where=production)}) SELECT DISTINCT version FROM p"
    )
    versions = sorted(int(v) for v in answer["version"])
    if len(pairs):
        versions = sorted(int(v) for v in pairs["version"].unique())
        keys = ["outcome", "label_a", "label_b", "score_a", "score_b"]
        counts = pairs.groupby(keys, as_index=False).agg(n=("n", "sum"))
        found_pairs = Pairs(_typed(counts), versions, binned=True)
    canaries = f"{challenger} AND role = 'canary'"
    span = engine.query(
        f"WITH p AS ({rows_sql(scope, [], where=canaries)}) "
        "SELECT min(t_us) AS lo, max(t_us) AS hi FROM p"
    )
    canary = period = None
    if len(span) and not pd.isna(span["lo"].iloc[0]):
        lo, hi = int(span["lo"].iloc[0]), int(span["hi"].iloc[0])
        both = f"(({canaries}) OR ({production} AND t_us >= {lo} AND t_us <= {hi}))"
        sides = engine.query(
            f"""{joined_sql(scope, ["role"], where=both)}
SELECT COALESCE(role, 'production') = 'canary' AS canary,
  CAST(COALESCE(outcome, -1) AS BIGINT) AS outcome, CAST(label AS BIGINT) AS label,
  {_score("probability")} AS score, count(*) AS n
FROM joined GROUP BY 1, 2, 3, 4"""
        )
        mine = sides["canary"].astype(bool)
        canary = Side(_typed(sides[mine].drop(columns=["canary"])), binned=True)
        period = Side(_typed(sides[~mine].drop(columns=["canary"])), binned=True)
    return Found(found_pairs, canary, period, versions)


def _typed(counts: pd.DataFrame) -> pd.DataFrame:
    ints = [c for c in counts.columns if c in ("outcome", "label", "label_a", "label_b", "n")]
    return counts.astype(dict.fromkeys(ints, "int64")).reset_index(drop=True)


@contextmanager
def open_found(
    settings: Settings,
    name: str,
    version: int,
    until: datetime | None,
    now: datetime,
    scope: Scope,
) -> Iterator[Found]:
    """Compare's rows through engine ``name`` (duckdb, spark or pandas)."""
    if name == "pandas":
        yield from_frame(settings, version, until, now)
        return
    target = store.settings_store(settings)
    with engines.open_engine(settings, name, target, None, until) as engine:
        yield from_engine(engine, scope, version, until)
