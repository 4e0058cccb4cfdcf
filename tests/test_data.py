"""The built-in generator and the CSV loader, without servers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnops import data
from churnops.errors import DataError


def test_generated_data_has_the_course_schema_and_about_a_quarter_churners() -> None:
    frame = data.generate(rows=5000, seed=42)
    assert list(frame.columns) == [
        "customer_id",
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
    assert frame["customer_id"].is_unique


def test_the_customer_id_is_dropped_from_the_features_as_an_identifier() -> None:
    dataset = data.from_frame(data.generate(rows=500, seed=1))
    assert "customer_id" not in dataset.features.columns
    assert dataset.id_column == "customer_id"


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
        (["yes", "NO "], [1, 0]),
        (["Y", "n"], [1, 0]),
        (["Churned", "Retained"], [1, 0]),
        (["1.0", "0.0"], [1, 0]),
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
        match="target column 'churn' not found; the columns are: customer_id, tenure_months",
    ):
        data.load_table(path)


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
        data.load_table(tmp_path / "nope.csv")


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
    dataset = data.load_table(path)
    assert "NA" in set(dataset.features["region"])
    assert dataset.features["avg_session_minutes"].dtype.kind == "f"
    assert dataset.features["avg_session_minutes"].head(3).isna().all()
    assert "avg_session_minutes" in dataset.numeric


def _messy(tmp_path: Path, frame: pd.DataFrame, name: str = "messy.csv", **kwargs: object) -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False, **kwargs)  # type: ignore[call-overload]
    return path


def test_identifier_and_constant_columns_are_dropped_but_never_a_float_measurement(
    tmp_path: Path,
) -> None:
    frame = data.generate(300, seed=4)
    frame["row_number"] = range(300)
    frame["country"] = "DE"
    frame["salary"] = np.linspace(1000.0, 9000.0, 300)  # all distinct, but a measurement
    dataset = data.load_table(_messy(tmp_path, frame))
    assert dataset.report.dropped_columns == {
        "customer_id": "identifier: every value distinct",
        "row_number": data.ROW_NUMBER,
        "country": "constant",
    }
    assert "salary" in dataset.numeric
    assert "customer_id" not in dataset.features


def test_windows_line_endings_and_unlabelled_rows_are_handled_and_reported(
    tmp_path: Path,
) -> None:
    frame = data.generate(200, seed=5)
    frame["churn"] = frame["churn"].map({1: "Yes", 0: "No"}).astype(object)
    frame.loc[:4, "churn"] = ""
    path = _messy(tmp_path, frame, lineterminator="\r\n")
    assert b"\r\n" in path.read_bytes()
    dataset = data.load_table(path)
    report = dataset.report
    assert (report.rows_read, report.rows_without_label, report.rows_kept) == (200, 5, 195)
    assert report.columns == {
        "tenure_months": "numeric",
        "num_complaints": "numeric",
        "avg_session_minutes": "numeric",
        "plan_type": "categorical",
        "region": "categorical",
    }
    assert "195 kept, 5 dropped without a 'churn' label" in report.render()


def test_a_positive_label_names_the_churn_value_when_labels_are_not_standard(
    tmp_path: Path,
) -> None:
    frame = data.generate(200, seed=6)
    frame["churn"] = frame["churn"].map({1: "Lost", 0: "Active"})
    path = _messy(tmp_path, frame)
    with pytest.raises(DataError, match="--positive-label"):
        data.load_table(path)
    dataset = data.load_table(path, positive_label="lost")
    assert dataset.target.tolist() == (frame["churn"] == "Lost").astype(int).tolist()


def test_a_parquet_table_is_read_like_a_csv(tmp_path: Path) -> None:
    path = tmp_path / "churn.parquet"
    data.generate(100, seed=7).to_parquet(path)
    dataset = data.load_table(path)
    assert len(dataset.target) == 100 and dataset.numeric == data.NUMERIC_FEATURES


def test_an_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not a parquet file")
    with pytest.raises(DataError, match=r"cannot read .*broken\.parquet"):
        data.load_table(path)


def test_a_table_of_only_identifiers_and_constants_has_no_usable_features(
    tmp_path: Path,
) -> None:
    frame = pd.DataFrame({"id": range(60), "const": 1, "churn": [0, 1] * 30})
    with pytest.raises(DataError, match="no usable feature columns"):
        data.load_table(_messy(tmp_path, frame))


def test_the_real_telecom_table_loads_with_both_label_spellings_and_every_column(
    telecom_csv: Path,
) -> None:
    text = telecom_csv.read_text()
    assert "TRUE" in text and "True" in text  # the two shipped spellings, concatenated as is
    dataset = data.load_table(telecom_csv, target="Churn")
    report = dataset.report
    assert report.rows_read == report.rows_kept == 3328 and report.rows_without_label == 0
    assert len(report.columns) == 19 and report.dropped_columns == {}
    assert report.columns["State"] == "categorical"
    assert report.columns["Total day minutes"] == "numeric"
    assert 0.14 < report.positive_rate < 0.15


@pytest.mark.parametrize("blank", [" ", "   ", "\t"])
def test_whitespace_only_cells_are_missing_and_leave_a_numeric_column_numeric(
    tmp_path: Path, blank: str
) -> None:
    frame = data.generate(300, seed=3)
    frame["avg_session_minutes"] = frame["avg_session_minutes"].astype(object)
    frame.loc[[4, 40, 140], "avg_session_minutes"] = blank
    frame["region"] = frame["region"].astype(object)
    frame.loc[7, "region"] = blank
    for path in (_messy(tmp_path, frame), tmp_path / "messy.parquet"):
        if path.suffix == ".parquet":
            # NB: a Parquet column has one type: numbers stored as text, as some exports do.
            frame.astype({"avg_session_minutes": str}).to_parquet(path, index=False)
        dataset = data.load_table(path)
        assert "avg_session_minutes" in dataset.numeric
        assert dataset.report.columns["avg_session_minutes"] == "numeric"
        assert dataset.features["avg_session_minutes"].dtype.kind == "f"
        assert dataset.report.missing_values["avg_session_minutes"] == 3
        assert dataset.report.missing_values["region"] == 1
        assert blank not in set(dataset.features["region"].dropna())
