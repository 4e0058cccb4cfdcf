"""`churnops score`: a messy customer table in, one scored row or one reject per input row out."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import Result

from churnops import data, lifecycle, scoring
from churnops.config import Settings
from churnops.monitoring import store
from churnops.registry import loading


def _json(result: Result) -> dict:
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def _train_with_ids_and_gaps(settings: Settings, tmp_path: Path) -> int:
    """A promoted version trained on a table with a customer id and missing session lengths."""
    frame = data.generate(rows=1200, seed=5)
    frame.loc[::7, "avg_session_minutes"] = np.nan
    path = tmp_path / "train.csv"
    frame.to_csv(path, index=False)
    report = lifecycle.train(
        settings, data_file=path, version_label="v1", seed=5, gate_f1=0.5, kind="logreg"
    )
    assert report.data_report.dropped_columns == {"customer_id": data.IDENTIFIER}
    lifecycle.promote(settings, report.version)
    return report.version


MESSY = (
    "customer_id,tenure_months,num_complaints,avg_session_minutes,plan_type,region,churn,notes\r\n"
    "A1,12,1,30.5,basic,EU,Yes,fine\r\n"  # scored
    "A2,5,3,?,premium,NA,No,gap\r\n"  # optional field missing as ? -> scored
    "A3,,2,20,basic,EU,,blank\r\n"  # required tenure blank -> rejected
    "A4,seven,2,20,basic,EU,No,text\r\n"  # text in a number -> rejected
    "A5,7.5,2,20,standard,AF,No,half\r\n"  # fractional integer -> rejected
    "A6,40,0,NA,platinum,Mars,No,unknown categories\r\n"  # scored (unknown categories)
    "A7,3,,,,EU,No,several\r\n"  # two required values missing -> one reject, both reasons
)


def test_a_messy_table_gives_one_scored_row_or_one_reject_per_input_row(
    cli: Callable[..., Result], settings: Settings, tmp_path: Path
) -> None:
    version = _train_with_ids_and_gaps(settings, tmp_path)
    source, out = tmp_path / "customers.csv", tmp_path / "out" / "scores.csv"
    source.write_bytes(MESSY.encode())
    report = _json(cli("score", str(source), str(out), "--json"))
    assert report["rows_read"] == 7 and report["rows_scored"] == 3
    assert report["rows_rejected"] == 4 and report["id_column"] == "customer_id"
    assert report["version"] == version and report["rows_per_second"] > 0

    scored = pd.read_csv(out)
    assert list(scored.columns) == [
        "customer_id",
        "prediction_id",
        "probability",
        "prediction",
        "model_version",
    ]
    assert scored["customer_id"].tolist() == ["A1", "A2", "A6"]
    # Every scored row is in the prediction store too, with its id, customer and inputs.
    kept = store.read_predictions(store.settings_store(settings), settings.model_name)
    by_id = {r["prediction_id"]: r for r in kept.to_pylist()}
    assert sorted(by_id) == sorted(scored["prediction_id"])
    for row in scored.itertuples():
        stored = by_id[row.prediction_id]
        assert stored["customer_id"] == row.customer_id and stored["source"] == "batch"
        assert stored["probability"] == pytest.approx(row.probability)
        assert stored["version"] == version and stored["alias"] == "production"
    assert (scored["model_version"] == version).all()
    rejects = pd.read_csv(tmp_path / "out" / "scores.rejects.csv", keep_default_na=False)
    assert rejects["row"].tolist() == [3, 4, 5, 7]
    assert rejects["customer_id"].tolist() == ["A3", "A4", "A5", "A7"]
    reasons = dict(zip(rejects["customer_id"], rejects["reason"], strict=True))
    assert reasons["A3"].startswith("tenure_months: missing")
    assert reasons["A4"] == "tenure_months: 'seven' is not a number"
    assert reasons["A5"] == "tenure_months: 7.5 is not a whole number"
    assert "num_complaints: missing" in reasons["A7"] and "plan_type: missing" in reasons["A7"]
    assert "notes" not in rejects.columns and "churn" not in rejects.columns
    as_text = pd.read_csv(scoring.rejects_path(out), dtype=str, keep_default_na=False)
    # A column with a blank is read as floats; its values go back as given: 2, not 2.0.
    assert as_text.set_index("customer_id").loc["A3", "num_complaints"] == "2"

    # The scores are the version's own, at its tuned threshold.
    loaded = loading.load_version(settings, version)
    expected = loaded.engine.predict_frame(
        pd.DataFrame(
            {
                "tenure_months": [12, 5, 40],
                "num_complaints": [1, 3, 0],
                "avg_session_minutes": [30.5, np.nan, np.nan],
                "plan_type": ["basic", "premium", "platinum"],
                "region": ["EU", "NA", "Mars"],
            }
        )
    )
    np.testing.assert_allclose(scored["probability"], expected.probability, atol=1e-6)
    assert scored["prediction"].tolist() == expected.label.tolist()


def test_an_input_without_a_required_column_is_refused_and_writes_nothing(
    cli: Callable[..., Result], settings: Settings, tmp_path: Path
) -> None:
    _train_with_ids_and_gaps(settings, tmp_path)
    source, out = tmp_path / "customers.csv", tmp_path / "scores.csv"
    data.generate(rows=60, seed=1).drop(columns=["region"]).to_csv(source, index=False)
    result = cli("score", str(source), str(out))
    assert result.exit_code == 1
    assert "lacks columns version 1 needs: region" in result.stderr
    assert not out.exists() and not scoring.rejects_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["customers.csv", "train.csv"]


def test_scoring_without_a_production_version_says_how_to_fix_it(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    source = tmp_path / "customers.csv"
    data.generate(rows=60, seed=1).to_csv(source, index=False)
    result = cli("score", str(source), str(tmp_path / "scores.csv"))
    assert result.exit_code == 1
    assert "production is not set" in result.stderr and "churnops promote" in result.stderr


def test_a_named_version_and_id_column_are_used_and_chunks_add_up(
    cli: Callable[..., Result], settings: Settings, tmp_path: Path
) -> None:
    version = _train_with_ids_and_gaps(settings, tmp_path)
    frame = data.generate(rows=1000, seed=8)
    frame.insert(0, "account", range(1000))
    frame.loc[frame.index % 10 == 0, "num_complaints"] = None
    source, out = tmp_path / "customers.parquet", tmp_path / "scores.csv"
    frame.to_parquet(source)
    report = _json(
        cli(
            "score",
            str(source),
            str(out),
            "--version",
            str(version),
            "--id-column",
            "account",
            "--chunk-rows",
            "128",
            "--json",
        )
    )
    assert (report["rows_scored"], report["rows_rejected"]) == (900, 100)
    scored, rejects = pd.read_csv(out), pd.read_csv(scoring.rejects_path(out))
    assert sorted([*scored["account"], *rejects["account"]]) == list(range(1000))
    assert set(rejects["row"]) == {i + 1 for i in range(0, 1000, 10)}


def test_both_version_and_alias_is_a_usage_error(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    result = cli("score", "in.csv", "out.csv", "--version", "1", "--alias", "staging")
    assert result.exit_code == 64 and "not both" in result.stderr


@pytest.mark.parametrize("same", ["scores.csv", "./scores.csv"])
def test_the_output_may_not_overwrite_the_input(
    cli: Callable[..., Result], tmp_path: Path, same: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("scores.csv").write_text("a,b\n1,2\n")
    result = cli("score", "scores.csv", same)
    assert result.exit_code == 1 and "would overwrite the input" in result.stderr
    assert Path("scores.csv").read_text() == "a,b\n1,2\n"


@pytest.mark.parametrize("input_name", ["scores.csv.partial", "scores.rejects.csv.partial"])
def test_an_input_named_like_a_temporary_output_is_read_whole_and_left_intact(
    cli: Callable[..., Result],
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    input_name: str,
) -> None:
    _train_with_ids_and_gaps(settings, tmp_path)
    monkeypatch.chdir(tmp_path)
    data.generate(rows=500, seed=3).to_csv(input_name, index=False)
    before = Path(input_name).read_bytes()
    report = _json(cli("score", input_name, "scores.csv", "--chunk-rows", "64", "--json"))
    assert report["rows_read"] == 500 and report["rows_scored"] + report["rows_rejected"] == 500
    assert Path(input_name).read_bytes() == before
    assert len(pd.read_csv("scores.csv")) == report["rows_scored"]
    # NB: no temporary file or staging folder is left beside the outputs.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_an_output_that_is_a_hard_link_to_the_input_is_refused(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    source = tmp_path / "customers.csv"
    source.write_text("a,b\n1,2\n")
    (tmp_path / "scores.csv").hardlink_to(source)
    result = cli("score", str(source), str(tmp_path / "scores.csv"))
    assert result.exit_code == 1 and "would overwrite the input" in result.stderr
    assert source.read_text() == "a,b\n1,2\n"


def test_stored_rows_of_a_run_in_many_chunks_are_all_in_the_store_once(
    cli: Callable[..., Result], settings: Settings, tmp_path: Path
) -> None:
    _train_with_ids_and_gaps(settings, tmp_path)
    source, out = tmp_path / "customers.csv", tmp_path / "scores.csv"
    data.generate(rows=700, seed=4).to_csv(source, index=False)
    report = _json(cli("score", str(source), str(out), "--chunk-rows", "50", "--json"))
    rows = store.read_predictions(store.settings_store(settings), settings.model_name)
    ids = rows["prediction_id"].to_pylist()
    assert len(ids) == len(set(ids)) == report["rows_scored"]
    assert set(ids) == set(pd.read_csv(out)["prediction_id"])


def test_an_as_of_time_before_1970_is_a_usage_error_before_any_work(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    source = tmp_path / "customers.csv"
    data.generate(rows=10, seed=1).to_csv(source, index=False)
    result = cli("score", str(source), str(tmp_path / "s.csv"), "--as-of", "0001-01-01")
    assert result.exit_code == 64 and "1970-01-01 or later" in result.stderr
    assert not (tmp_path / "s.csv").exists()
