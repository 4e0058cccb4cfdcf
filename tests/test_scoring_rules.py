"""`churnops score` applies the API's input rules, without servers: the scorer over a fake engine.
Non-finite and huge numbers and over-long text go to the rejects file with a reason, text that a
spreadsheet would run as a formula is neutralised, and the rejects file never replaces the input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pydantic import ValidationError

from churnops import scoring
from churnops.config import Settings
from churnops.errors import DataError
from churnops.inputs import InputField, RequestSchema
from churnops.monitoring import store
from churnops.predict import Predictions

FIELDS = (
    InputField("tenure_months", "long", True),
    InputField("avg_session_minutes", "double", False),
    InputField("plan_type", "string", True),
)


class HalfEngine:
    kind = "sklearn"
    threshold = 0.5

    def predict_columns(self, columns: dict[str, list[Any]]) -> Predictions:
        return self.predict_frame(pd.DataFrame(columns))

    def predict_frame(self, frame: pd.DataFrame) -> Predictions:
        return Predictions(np.ones(len(frame), dtype=int), np.full(len(frame), 0.5))


def _score(tmp_path: Path, text: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    source, output = tmp_path / "in.csv", tmp_path / "out.csv"
    source.write_text(text)
    scoring.score_engine(HalfEngine(), FIELDS, source, output, version=1, id_column="customer_id")
    return (
        pd.read_csv(output, dtype=str, keep_default_na=False),
        pd.read_csv(scoring.rejects_path(output), dtype=str, keep_default_na=False),
    )


def test_numbers_the_api_refuses_are_rejected_by_score_with_the_same_rule(tmp_path: Path) -> None:
    scored, rejects = _score(
        tmp_path,
        "customer_id,tenure_months,avg_session_minutes,plan_type\n"
        "a,3,12.5,basic\n"
        "b,3,inf,basic\n"
        "c,3,1e300,basic\n"
        "d,1e16,1.0,basic\n"
        "e,3,-inf,basic\n"
        f"f,3,1.0,{'x' * 1025}\n",
    )
    assert list(scored["customer_id"]) == ["a"]
    assert list(rejects["customer_id"]) == ["b", "c", "d", "e", "f"]
    reasons = list(rejects["reason"])
    assert all("outside the accepted range" in r for r in reasons[:4])
    assert "longer than 1024 characters" in reasons[4]
    # The API's schema refuses the same values.
    schema = RequestSchema(FIELDS)
    for value in (float("inf"), 1e300):
        with pytest.raises(ValidationError):
            schema.one.validate_python(
                {"tenure_months": 3, "avg_session_minutes": value, "plan_type": "basic"}
            )


def test_cells_a_spreadsheet_would_run_as_formulas_are_neutralised(tmp_path: Path) -> None:
    scored, rejects = _score(
        tmp_path,
        "customer_id,tenure_months,avg_session_minutes,plan_type\n"
        '=HYPERLINK("http://x"),3,1.0,basic\n'
        "@SUM(A1),=1+1,1.0,+cmd\n",
    )
    assert list(scored["customer_id"]) == ['\'=HYPERLINK("http://x")']
    [reject] = rejects.to_dict("records")
    assert reject["customer_id"] == "'@SUM(A1)"
    assert reject["tenure_months"] == "'=1+1" and reject["plan_type"] == "'+cmd"


def test_a_rejects_file_that_would_replace_the_input_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "out.rejects.csv"
    source.write_text("tenure_months,avg_session_minutes,plan_type\n3,1.0,basic\n")
    settings = Settings(tracking_uri="http://127.0.0.1:9")
    with pytest.raises(DataError, match="would overwrite the input"):
        scoring.score_file(settings, source, tmp_path / "out.csv")
    assert source.read_text().startswith("tenure_months")


def _chunk(start: int, rows: int, day: float, notes: list[str | None]) -> pa.Table:
    ids = pa.array([f"run-{start + i}" for i in range(rows)])
    meta = store.RowsMeta(day, day, "batch", "m", 1, "production", 0.5, "run")
    inputs = {"tenure_months": pa.array(range(rows)), "notes": pa.array(notes, pa.string())}
    if all(n is None for n in notes):
        inputs["notes"] = pa.nulls(rows)  # a chunk whose text column is all blank
    return store.rows_table(
        meta, ids, np.full(rows, 0.5), np.ones(rows, int), pa.nulls(rows, pa.string()), inputs
    )


def test_the_store_stage_places_every_chunks_rows_once_by_day_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    target = store.open_store(str(tmp_path / "store"))
    stage = scoring.StoreStage(tmp_path / ".out.store")
    stage.FILE_ROWS = 25
    day1, day2 = 86_400.0 * 20_000, 86_400.0 * 20_001
    chunks = [
        _chunk(0, 10, day1, ["x"] * 10),
        _chunk(10, 10, day1, [None] * 10),
        _chunk(20, 10, day2, ["y"] * 10),
        _chunk(30, 10, day1, ["z"] * 10),
        _chunk(40, 10, day1, ["z"] * 10),
    ]
    for chunk in chunks:
        stage.add(chunk)
    assert store.read_predictions(target, "m").num_rows == 0  # nothing before publish

    stage.publish(target)
    stage.discard()

    stored = store.read_predictions(target, "m")
    assert sorted(stored["prediction_id"].to_pylist()) == sorted(f"run-{i}" for i in range(50))
    days = {p.parent.name for p in (tmp_path / "store").rglob("*.parquet")}
    assert days == {"date=2024-10-04", "date=2024-10-05"}
    assert len(list((tmp_path / "store").rglob("*.parquet"))) == 4  # 25-row files at most
    assert not (tmp_path / ".out.store").exists()


def test_a_discarded_store_stage_stores_nothing(tmp_path: Path) -> None:
    target = store.open_store(str(tmp_path / "store"))
    stage = scoring.StoreStage(tmp_path / ".out.store")
    stage.add(_chunk(0, 10, 86_400.0 * 20_000, ["x"] * 10))
    stage.discard()
    assert store.read_predictions(target, "m").num_rows == 0
    assert not (tmp_path / ".out.store").exists()
