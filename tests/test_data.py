"""The built-in generator and the CSV loader, without servers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from churnops import data
from churnops.errors import DataError


def test_generated_data_has_the_course_schema_and_about_a_quarter_churners() -> None:
    frame = data.generate(rows=5000, seed=42)
    assert list(frame.columns) == [
        "tenure_months",
        "num_complaints",
        "avg_session_minutes",
        "plan_type",
        "region",
        "churn",
    ]
    assert 0.20 <= frame["churn"].mean() <= 0.30
    assert set(frame["plan_type"]) == set(data.PLAN_TYPES)
    assert set(frame["region"]) == set(data.REGIONS)
    assert (frame["tenure_months"] >= 0).all() and (frame["avg_session_minutes"] > 0).all()


def test_generation_is_reproducible_for_a_seed_and_differs_across_seeds() -> None:
    pd.testing.assert_frame_equal(data.generate(500, seed=7), data.generate(500, seed=7))
    assert not data.generate(500, seed=7).equals(data.generate(500, seed=8))


def test_write_generated_leaves_no_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "churn.csv"
    data.write_generated(path, rows=100, seed=1)
    assert [p.name for p in path.parent.iterdir()] == ["churn.csv"]
    assert len(pd.read_csv(path)) == 100


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        (["Yes", "No"], [1, 0]),
        (["TRUE", "FALSE"], [1, 0]),
        (["True", "False"], [1, 0]),
        (["1", "0"], [1, 0]),
        ([1, 0], [1, 0]),
        ([True, False], [1, 0]),
    ],
)
def test_label_spellings_are_normalised_to_one_and_zero(spelling: list, expected: list) -> None:
    labels = pd.Series(spelling * 3)
    assert data.normalise_target(labels, "churn").tolist() == expected * 3


def test_unknown_label_values_are_refused_with_the_values_named() -> None:
    with pytest.raises(DataError, match="'maybe'"):
        data.normalise_target(pd.Series(["yes", "maybe", "no"]), "churn")


def test_a_csv_without_the_target_column_is_refused_with_the_columns_listed(tmp_path: Path) -> None:
    path = tmp_path / "no_target.csv"
    data.generate(100).drop(columns=["churn"]).to_csv(path, index=False)
    with pytest.raises(
        DataError,
        match="target column 'churn' not found; the columns are: tenure_months, num_complaints",
    ):
        data.load_csv(path)


def test_rows_without_a_label_are_dropped() -> None:
    frame = data.generate(200)
    frame["churn"] = frame["churn"].astype(object)
    frame.loc[:9, "churn"] = None
    assert len(data.from_frame(frame).target) == 190


def test_a_single_class_is_refused() -> None:
    frame = data.generate(100).assign(churn=0)
    with pytest.raises(DataError, match="single class"):
        data.from_frame(frame)


def test_fewer_than_fifty_labelled_rows_are_refused() -> None:
    with pytest.raises(DataError, match="only 40 labelled rows"):
        data.from_frame(pd.concat([data.generate(60)] * 1).head(40))


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        data.load_csv(tmp_path / "nope.csv")


def test_columns_are_split_into_numeric_and_categorical() -> None:
    dataset = data.from_frame(data.generate(100))
    assert dataset.numeric == data.NUMERIC_FEATURES
    assert dataset.categorical == data.CATEGORICAL_FEATURES


def test_a_csv_keeps_the_region_code_na_and_reads_blank_or_question_marks_as_missing(
    tmp_path: Path,
) -> None:
    frame = data.generate(200, seed=2)
    frame["avg_session_minutes"] = frame["avg_session_minutes"].astype(object)
    frame.loc[0, "avg_session_minutes"] = "?"
    frame.loc[1, "avg_session_minutes"] = ""
    frame.loc[2, "avg_session_minutes"] = "NA"
    path = tmp_path / "messy.csv"
    frame.to_csv(path, index=False)
    dataset = data.load_csv(path)
    assert "NA" in set(dataset.features["region"])
    assert dataset.features["avg_session_minutes"].dtype.kind == "f"
    assert dataset.features["avg_session_minutes"].head(3).isna().all()
    assert "avg_session_minutes" in dataset.numeric
