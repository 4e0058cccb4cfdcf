"""`train --from-store`'s table: the production rows with mature outcomes, one per customer per
outcome (the latest prediction before it), built by the engine exactly as by hand."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnops import data, from_store, training
from churnops.config import Settings
from churnops.errors import DataError
from churnops.monitoring import engine as engines
from churnops.monitoring import labels, store, training_table
from churnops.monitoring.summary import Scope
from tests.test_engines import COLUMNS, NOW, _store

HORIZON = pd.Timedelta(days=30)


def _by_hand(settings: Settings) -> pd.DataFrame:
    """The definition, row by row."""
    target = store.settings_store(settings)
    rows = store.read_predictions(target, "churn_model").to_pandas()
    rows = rows[(rows["alias"] == "production") & (rows["role"] == "production")]
    stored = store.read_labels(target)
    assert stored is not None
    outcomes, _ = labels.latest(stored.to_pandas())
    by_id = outcomes[outcomes["key_kind"] == labels.PREDICTION_ID].groupby("key")["outcome"].max()
    events = outcomes[outcomes["key_kind"] == labels.CUSTOMER_ID]
    now = pd.Timestamp(NOW)
    kept: dict[tuple, tuple] = {}
    for row in rows.itertuples():
        t, customer = row.time, row.customer_id
        if row.prediction_id in by_id.index:
            outcome, event = int(by_id[row.prediction_id]), ("id", t.floor(HORIZON))
        else:
            mine = events[(events["key"] == customer) & (events["time"] >= t)]
            mine = mine[mine["time"] <= t + HORIZON]
            churned = mine[mine["outcome"] == 1]["time"]
            retained = mine[mine["outcome"] == 0]["time"]
            if len(churned):
                outcome, event = 1, ("customer", churned.min())
            elif len(retained) and t + HORIZON <= now:
                outcome, event = 0, ("customer", retained.min())
            else:
                continue
        key = (row.prediction_id if pd.isna(customer) else customer, *event)
        if key not in kept or (t, row.prediction_id) > kept[key][:2]:
            kept[key] = (t, row.prediction_id, outcome)
    return pd.DataFrame(
        [(p, o) for _, p, o in kept.values()], columns=["prediction_id", "churn"]
    ).sort_values("prediction_id", ignore_index=True)


def _built(settings: Settings, engine: str) -> training_table.Table:
    scope = Scope("churn_model", "production", None, NOW, NOW, timedelta(days=30))
    target = store.settings_store(settings)
    with engines.open_engine(settings, engine, target, None, NOW) as opened:
        return training_table.build(opened, scope, COLUMNS, needed=5)


@pytest.mark.parametrize("engine", ["duckdb", pytest.param("spark", marks=pytest.mark.slow)])
def test_the_training_table_from_the_store_equals_the_one_built_by_hand(
    tmp_path: Path, engine: str
) -> None:
    settings, _ = _store(tmp_path, rows=2_000)
    table = _built(settings, engine)
    expected = _by_hand(settings)
    found = table.rows[["prediction_id", "churn"]].sort_values("prediction_id", ignore_index=True)
    assert len(expected) > 100 and expected["churn"].nunique() == 2
    pd.testing.assert_frame_equal(found, expected, check_dtype=False)
    assert list(table.rows.columns) == [*COLUMNS, "churn", "time", "customer_id", "prediction_id"]
    assert table.rows["time"].is_monotonic_increasing
    # NB: one row per customer per outcome: no customer twice for one outcome event.
    assert table.labelled == len(expected) < table.served


def test_immature_outcomes_are_left_out_and_listed_by_when_they_mature(tmp_path: Path) -> None:
    settings, _ = _store(tmp_path, rows=2_000)
    table = _built(settings, "duckdb")
    assert len(table.immature_until) == 5
    assert table.immature_until == sorted(table.immature_until)
    assert all(moment > pd.Timestamp(NOW) for moment in table.immature_until)
    stored = store.read_predictions(store.settings_store(settings), "churn_model").to_pandas()
    read = store.read_labels(store.settings_store(settings))
    assert read is not None
    outcomes = read.to_pandas()
    by_id = set(outcomes.loc[outcomes["key_kind"] == labels.PREDICTION_ID, "key"])
    young = set(stored[stored["time"] + HORIZON > pd.Timestamp(NOW)]["prediction_id"]) - by_id
    retained = set(table.rows.loc[table.rows["churn"] == 0, "prediction_id"])
    # NB: a "retained" keyed by customer counts only once its horizon has passed.
    assert young and not young & retained
    assert np.isin(table.rows["churn"], [0, 1]).all()


def test_too_few_mature_outcomes_is_refused_with_the_count_and_when_more_mature(
    tmp_path: Path,
) -> None:
    settings, _ = _store(tmp_path, rows=2_000)
    table = _built(settings, "duckdb")
    few = training_table.Table(table.rows.head(10), table.served, 10, table.immature_until)
    with pytest.raises(DataError) as refused:
        from_store._refuse(few, None, NOW)
    message = str(refused.value)
    assert f"10 of the {table.served} production rows" in message
    assert "at least 50" in message
    assert f"will be mature by {table.immature_until[-1].isoformat()}" in message
    from_store._refuse(table, None, NOW)  # NB: enough rows: no refusal


def test_a_table_with_event_times_holds_out_its_newest_quarter() -> None:
    frame = data.generate(400, seed=3)
    frame[data.TIME_COLUMN] = pd.date_range("2026-01-01", periods=400, freq="h", tz="UTC")[
        ::-1
    ]  # NB: newest first in the file: the split must sort, not slice
    dataset = data.from_frame(frame.drop(columns=["customer_id"]))
    assert dataset.times is not None and data.TIME_COLUMN not in dataset.features
    _, held_out, _, _ = training.split(dataset, seed=0)
    newest = dataset.times.sort_values().iloc[-100:].index
    assert sorted(held_out.index) == sorted(newest)
