"""Late churn outcomes: reading an outcome file, keeping it in the store, and joining it back to
the predictions it is about.

An outcome is keyed by ``prediction_id`` (final as given) or by ``customer_id`` plus the ``time``
it was observed. A customer's outcome applies to that customer's predictions made within the
churn horizon before it: a churn there labels the prediction 1; a "retained" labels it 0, but
only once the horizon after the prediction has passed (until then it is *immature*: reported,
never counted). When one key has conflicting outcomes the latest added wins, and the conflict
is reported.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from churnops.config import Settings
from churnops.data import normalise_target
from churnops.errors import DataError
from churnops.monitoring import store

PREDICTION_ID = "prediction_id"
CUSTOMER_ID = "customer_id"
TIME = "time"


@dataclass(frozen=True)
class Outcomes:
    """One outcome file, normalised: key kind, key, outcome 0/1, observed time (or NaT)."""

    keyed_by: str
    frame: pd.DataFrame
    conflicts: int


@dataclass(frozen=True)
class AddReport:
    """What `labels add` did."""

    source: str
    keyed_by: str
    rows: int
    churned: int
    added: bool
    conflicts: int
    unknown: int
    path: str

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready data."""
        return dict(self.__dict__)

    def render(self) -> str:
        """What was added (or that nothing changed), conflicts and unmatched keys."""
        lines = [
            (
                f"added {self.rows} outcomes ({self.churned} churned) keyed by {self.keyed_by} "
                f"from {self.source}"
            )
            if self.added
            else f"{self.source}: these {self.rows} outcomes were already added; nothing changed",
        ]
        if self.conflicts:
            lines.append(
                f"  {self.conflicts} key(s) have conflicting outcomes in this file: the last wins"
            )
        if self.unknown:
            lines.append(
                f"  {self.unknown} {self.keyed_by} value(s) match no stored prediction (yet): "
                "kept, not counted"
            )
        return "\n".join(lines)


def _read(path: Path) -> pd.DataFrame:
    if path.exists() and not path.is_file():
        raise DataError(
            f"label file {path} is not a regular file (a pipe, socket or device); save the "
            "outcomes to a CSV or Parquet file"
        )
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise DataError(f"label file {path} does not exist") from None
    except (UnicodeDecodeError, OSError, ValueError, pa.ArrowException) as exc:
        # NB: pandas' ParserError and EmptyDataError are ValueErrors.
        raise DataError(f"cannot read {path}: {exc}") from None


def read_outcomes(path: Path, target: str, id_column: str | None = None) -> Outcomes:
    """Read and check an outcome file; raise DataError naming the problem (nothing is kept)."""
    frame = _read(path)
    customer = id_column or CUSTOMER_ID
    if target not in frame.columns:
        raise DataError(
            f"{path}: outcome column {target!r} not found (name it like training's --target, "
            f"or pass --target); {_columns_found(frame)}"
        )
    if PREDICTION_ID in frame.columns:
        keyed_by, keys = PREDICTION_ID, frame[PREDICTION_ID]
    elif customer in frame.columns:
        if TIME not in frame.columns:
            raise DataError(
                f"{path}: outcomes keyed by {customer!r} need a {TIME!r} column (ISO 8601) saying "
                "when each outcome was observed"
            )
        keyed_by, keys = CUSTOMER_ID, frame[customer]
    else:
        raise DataError(
            f"{path}: no key column: give a {PREDICTION_ID!r} column (from the API or `score`), "
            f"or {customer!r} plus {TIME!r}"
        )
    if frame.empty:
        raise DataError(f"{path}: no outcome rows")
    for name in {keys.name, target, TIME} & set(frame.columns):
        _scalars(frame[name], path)
    keys = keys.astype("string").str.strip()
    missing_key = keys.isna() | (keys == "")
    if missing_key.any():
        rows = ", ".join(str(i + 2) for i in np.flatnonzero(missing_key.to_numpy())[:5])
        raise DataError(f"{path}: {keyed_by} is empty on line(s) {rows}")
    try:
        outcome = normalise_target(frame[target], target)
    except DataError as exc:
        # NB: training's message suggests --positive-label, which `labels add` does not take.
        shown = str(exc).partition(": ")[2].partition(";")[0]
        raise DataError(
            f"{path}: outcome column {target!r} has values that are not a churn outcome: "
            f"{shown}; write churned/retained, yes/no, true/false or 1/0"
        ) from None
    if outcome.isna().any():
        rows = ", ".join(str(i + 2) for i in np.flatnonzero(outcome.isna().to_numpy())[:5])
        raise DataError(f"{path}: no outcome in {target!r} on line(s) {rows}")
    times = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")
    if TIME in frame.columns:
        times = _times(frame[TIME], path, required=keyed_by == CUSTOMER_ID)
    normalised = pd.DataFrame(
        {
            "key_kind": keyed_by,
            "key": keys.astype(str).to_numpy(),
            "outcome": outcome.astype("int8").to_numpy(),
            "time": times.to_numpy(),
        }
    )
    key_columns = ["key"] if keyed_by == PREDICTION_ID else ["key", "time"]
    distinct = normalised.drop_duplicates()
    conflicts = int(distinct.duplicated(key_columns).sum())
    return Outcomes(keyed_by, normalised, conflicts)


def _columns_found(frame: pd.DataFrame) -> str:
    """The columns a file has, named only when it reads as a table: a file that is not CSV
    parses as one column named after its first line, which may be a secret (never shown)."""
    if len(frame.columns) < 2:
        return (
            "the file does not read as a table with a header row (one column found): write "
            "CSV with comma-separated columns, or Parquet"
        )
    shown = [str(c)[:40] for c in frame.columns[:20]]
    more = f" and {len(frame.columns) - 20} more" if len(frame.columns) > 20 else ""
    return f"the columns are: {', '.join(shown)}{more}"


def _scalars(values: pd.Series, path: Path) -> None:
    """A DataError when a column holds lists, arrays or maps (a nested Parquet column)."""
    if values.dtype != object:
        return
    nested = values.map(lambda v: isinstance(v, list | tuple | dict | set | np.ndarray))
    if nested.any():
        line = int(np.flatnonzero(nested.to_numpy())[0]) + 2
        raise DataError(
            f"{path}: column {values.name!r} holds a list or nested value (row {line - 1}); "
            "each cell must be one value"
        )


def _times(values: pd.Series, path: Path, required: bool) -> pd.Series:
    text = values.astype("string").str.strip()
    parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    given = text.notna() & (text != "")
    bad = parsed.isna() if required else parsed.isna() & given
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise DataError(
            f"{path}: {TIME!r} on line {line} is not an ISO 8601 time ({values.iloc[line - 2]!r});"
            " write e.g. 2026-12-01 or 2026-12-01T09:30:00Z"
        )
    return parsed.astype("datetime64[us, UTC]")


def content_name(outcomes: Outcomes) -> str:
    """A name for the outcomes from their content, so adding a file twice changes nothing."""
    ordered = outcomes.frame.sort_values(["key", "time", "outcome"]).reset_index(drop=True)
    digest = hashlib.sha256(pd.util.hash_pandas_object(ordered, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:32]


def keep(target: store.Store, outcomes: Outcomes) -> tuple[str, bool]:
    """Write the outcomes to the store under their content name; (path, whether new)."""
    frame = outcomes.frame.assign(added_at=pd.Timestamp(datetime.now(UTC)).as_unit("us"))
    frame["row"] = np.arange(len(frame), dtype=np.int64)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return store.write_labels(target, content_name(outcomes), table)


def unknown_keys(outcomes: Outcomes, predictions: pd.DataFrame) -> int:
    """How many distinct prediction ids or customers the outcomes name that the store has no
    prediction for."""
    column = PREDICTION_ID if outcomes.keyed_by == PREDICTION_ID else CUSTOMER_ID
    known = set(predictions[column].dropna()) if column in predictions else set()
    # NB: distinct keys: a customer's several outcomes, or a key listed twice, count once.
    keys = outcomes.frame["key"].drop_duplicates()
    return int((~keys.isin(known)).sum())


@dataclass(frozen=True)
class Joined:
    """Predictions with their outcome (NaN when none counts yet) and why not."""

    frame: pd.DataFrame
    conflicts: int
    immature: int


def latest(labels: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One outcome per key (the latest added wins) and the number of keys that had several."""
    if labels.empty:
        return labels, 0
    ordered = labels.sort_values(["added_at", "row"], kind="stable")
    keys = ["key_kind", "key", "time"]
    distinct = ordered.drop_duplicates([*keys, "outcome"], keep="last")
    conflicts = int(distinct.duplicated(keys, keep=False).sum() - distinct.duplicated(keys).sum())
    return ordered.drop_duplicates(keys, keep="last"), conflicts


def join(
    predictions: pd.DataFrame,
    labels: pd.DataFrame | None,
    horizon: pd.Timedelta,
    now: pd.Timestamp,
) -> Joined:
    """Each prediction's outcome: by prediction id, else by customer within the horizon; adds
    the columns ``outcome`` and ``immature`` to ``predictions`` itself."""
    # NB: not a copy: the caller hands its frame over (a copy of a million rows is ~150 MiB).
    frame = predictions
    frame["outcome"] = np.nan
    frame["immature"] = False
    if labels is None or labels.empty or frame.empty:
        return Joined(frame, 0, 0)
    labels, conflicts = latest(labels)
    by_id = labels[labels["key_kind"] == PREDICTION_ID]
    if not by_id.empty:
        frame["outcome"] = frame["prediction_id"].map(
            pd.Series(by_id["outcome"].to_numpy(dtype=float), index=by_id["key"].to_numpy())
        )
    by_customer = labels[labels["key_kind"] == CUSTOMER_ID]
    open_rows = frame["outcome"].isna() & frame["customer_id"].notna()
    if not by_customer.empty and open_rows.any():
        left = frame.loc[open_rows, ["customer_id", "time"]].reset_index()
        left = left.sort_values("time", kind="stable")
        found = {}
        for value in (1, 0):
            right = by_customer.loc[by_customer["outcome"] == value, ["key", "time"]]
            right = right.rename(columns={"key": "customer_id", "time": "outcome_time"})
            right = right.sort_values("outcome_time", kind="stable")
            matched = pd.merge_asof(
                left,
                right,
                left_on="time",
                right_on="outcome_time",
                by="customer_id",
                direction="forward",
                tolerance=horizon,
            )
            found[value] = pd.Series(matched["outcome_time"].notna().to_numpy(), matched["index"])
        churned = found[1].reindex(frame.index, fill_value=False)
        retained = found[0].reindex(frame.index, fill_value=False) & ~churned
        mature = frame["time"] + horizon <= now
        frame.loc[churned, "outcome"] = 1.0
        frame.loc[retained & mature, "outcome"] = 0.0
        frame.loc[retained & ~mature, "immature"] = True
    return Joined(frame, conflicts, int(frame["immature"].sum()))


def add(
    where: store.Store,
    model: str,
    path: Path,
    target: str,
    id_column: str | None = None,
    settings: Settings | None = None,
) -> AddReport:
    """`churnops labels add`: check an outcome file, keep it in the store ``where`` (once:
    adding it again changes nothing) and count the outcomes no stored prediction matches
    (through the settings' engine when ``settings`` are given, else in memory)."""
    outcomes = read_outcomes(path, target, id_column)
    if settings is None or settings.engine == "pandas":
        known = store.read_predictions(
            where, model, columns=["prediction_id", "customer_id", "model", "time"]
        ).to_pandas()
        unknown = unknown_keys(outcomes, known)
    else:
        unknown = _unknown_through(settings, where, model, outcomes)
    written, added = keep(where, outcomes)
    return AddReport(
        source=str(path),
        keyed_by=outcomes.keyed_by,
        rows=len(outcomes.frame),
        churned=int(outcomes.frame["outcome"].sum()),
        added=added,
        conflicts=outcomes.conflicts,
        unknown=unknown,
        path=written,
    )


def _unknown_through(settings: Settings, where: store.Store, model: str, outcomes: Outcomes) -> int:
    """:func:`unknown_keys` as a query over the store."""
    from churnops.monitoring import engine as engines

    column = PREDICTION_ID if outcomes.keyed_by == PREDICTION_ID else CUSTOMER_ID
    keys = pd.DataFrame({"key": outcomes.frame["key"].drop_duplicates().astype(str)})
    with engines.open_engine(settings, settings.engine, where) as engine:
        if column not in engine.columns():
            return len(keys)
        engine.register("new_keys", keys)
        answer = engine.query(
            "SELECT count(*) AS unknown FROM new_keys k WHERE NOT EXISTS (SELECT 1 FROM "
            f"predictions p WHERE p.model = {engines.text(model)} AND p.{column} = k.key)"
        )
    return int(answer["unknown"].iloc[0])
