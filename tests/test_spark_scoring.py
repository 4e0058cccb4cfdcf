"""`churnops score --engine spark`: a Parquet dataset scored on local[2] with the single-machine
rule book, its rows in the prediction store and counted by `monitor`; an engine that cannot run
here is one line naming the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import Result

from churnops import data, lifecycle
from churnops.config import Settings
from churnops.errors import EngineError
from churnops.monitoring import store
from churnops.spark import check_master, local_cores, parse_conf


def _json(result: Result) -> dict:
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def _customers() -> pd.DataFrame:
    """Clean customers and, among them, rows each rule refuses (typed, as Parquet holds them)."""
    frame = data.generate(rows=400, seed=11).drop(columns=["churn"])
    frame["tenure_months"] = frame["tenure_months"].astype(float)
    frame["num_complaints"] = frame["num_complaints"].astype(float)
    frame.loc[3, "tenure_months"] = np.nan  # required value missing
    frame.loc[7, "tenure_months"] = 7.5  # not a whole number
    frame.loc[11, "num_complaints"] = 1e20  # beyond the accepted range
    frame.loc[13, "plan_type"] = "x" * 2000  # text longer than the API takes
    frame.loc[17, "tenure_months"] = np.nan  # two reasons
    frame.loc[17, "region"] = None
    frame.loc[19, "avg_session_minutes"] = np.nan  # optional: scored
    frame.loc[23, "customer_id"] = "=HYPERLINK(1)"  # a formula, neutralised
    return frame


@pytest.mark.slow
def test_a_parquet_dataset_scored_on_spark_matches_local_score_and_lands_in_the_store(
    cli: Callable[..., Result], settings: Settings, tmp_path: Path
) -> None:
    train = tmp_path / "train.csv"
    frame = data.generate(rows=1200, seed=5)
    frame.loc[::7, "avg_session_minutes"] = np.nan
    frame.to_csv(train, index=False)
    version = lifecycle.train(
        settings, data_file=train, version_label="v1", seed=5, gate_f1=0.5, kind="logreg"
    ).version
    lifecycle.promote(settings, version)

    customers = _customers()
    dataset = tmp_path / "customers"
    dataset.mkdir()
    # Two files, as a data lake holds a table.
    customers.iloc[:250].to_parquet(dataset / "part-0.parquet", index=False)
    customers.iloc[250:].to_parquet(dataset / "part-1.parquet", index=False)
    whole = tmp_path / "customers.parquet"
    customers.to_parquet(whole, index=False)

    local = _json(cli("score", str(whole), str(tmp_path / "local.csv"), "--json"))
    output = tmp_path / "out"
    report = _json(cli("score", "--engine", "spark", str(dataset), str(output), "--json"))
    assert report["rows_read"] == 400 and report["rows_scored"] == local["rows_scored"] == 395
    assert report["rows_rejected"] == local["rows_rejected"] == 5
    assert report["version"] == version and report["id_column"] == "customer_id"
    assert report["output"] == f"{output}/predictions"
    assert sorted(p.name for p in output.iterdir()) == ["predictions", "rejects"]

    # The same probabilities and labels as the single-machine score, customer by customer.
    expected = pd.read_csv(tmp_path / "local.csv").set_index("customer_id")
    got = pd.read_parquet(output / "predictions").set_index("customer_id")
    assert list(got.columns) == ["prediction_id", "probability", "prediction", "model_version"]
    assert sorted(got.index) == sorted(expected.index)
    got = got.loc[expected.index]
    np.testing.assert_allclose(got["probability"], expected["probability"], atol=1e-6)
    assert got["prediction"].tolist() == expected["prediction"].tolist()
    assert (got["model_version"] == version).all()

    # The same rows refused for the same reasons; where each came from.
    local_rejects = pd.read_csv(tmp_path / "local.rejects.csv", keep_default_na=False)
    rejects = pd.read_parquet(output / "rejects")
    assert dict(zip(rejects["customer_id"], rejects["reason"], strict=True)) == dict(
        zip(local_rejects["customer_id"], local_rejects["reason"], strict=True)
    )
    assert rejects.set_index("customer_id").loc["C0000018", "row"] == 18
    assert rejects["file"].str.endswith("part-0.parquet").all()
    assert "'=HYPERLINK(1)" in got.index

    # Every scored row is in the store once, with the columns single-machine rows have.
    kept = store.read_predictions(store.settings_store(settings), settings.model_name)
    ids = set(got["prediction_id"])
    ours = kept.filter(pd.Series(kept["prediction_id"].to_pylist()).isin(ids).to_numpy())
    assert ours.num_rows == 395 and len(ids) == 395
    rows = ours.to_pandas().set_index("prediction_id").loc[got["prediction_id"]]
    np.testing.assert_allclose(rows["probability"], got["probability"], atol=0)
    assert set(rows["source"]) == {"batch"} and set(rows["alias"]) == {"production"}
    assert set(rows["role"]) == {"production"} and set(rows["version"]) == {version}
    files = sorted((Path(settings.store_uri) / "predictions").rglob("*.parquet"))
    # NB: pandas 3 hands the local path's text as large_string, which Parquet stores as the
    # same UTF-8 column as Spark's string; only the Arrow hint in the footer differs.
    schemas = {
        str(pq.read_schema(f).remove_metadata()).replace("large_string", "string") for f in files
    }
    assert len(files) >= 2 and len(schemas) == 1, schemas  # local and Spark files: one schema
    assert not (Path(settings.store_uri) / ".spark-staging").exists() or not any(
        (Path(settings.store_uri) / ".spark-staging").iterdir()
    )

    # The monitor counts both runs' rows, in memory and through DuckDB (which reads the
    # Spark-written files beside the local ones), and again once compaction merged them.
    today = datetime.now(UTC).date().isoformat()
    for step in ("as written", "compacted"):
        if step == "compacted":
            _json(cli("store", "compact", "--day", today, "--grace", "0", "--json"))
            assert len(list((Path(settings.store_uri) / "predictions").rglob("*.parquet"))) == 1
        for engine in ("pandas", "duckdb"):
            monitored = cli("monitor", "--engine", engine, "--json", "--no-log")
            assert monitored.exit_code in (0, 3), monitored.output + monitored.stderr
            assert json.loads(monitored.stdout)["rows"] == 395 * 2, (step, engine)

    # A second run into the same OUTPUT is refused before any work.
    again = cli("score", "--engine", "spark", str(dataset), str(output))
    assert again.exit_code == 1
    assert "out/predictions exists; remove it or choose another OUTPUT folder" in again.stderr


@pytest.mark.slow
def test_a_csv_dataset_on_spark_rejects_text_in_numbers_like_local_score(
    cli: Callable[..., Result], settings: Settings, tmp_path: Path
) -> None:
    train = tmp_path / "train.csv"
    data.generate(rows=600, seed=3).to_csv(train, index=False)
    lifecycle.train(
        settings, data_file=train, version_label="v1", seed=3, gate_f1=0.5, kind="logreg"
    )
    source = tmp_path / "in.csv"
    source.write_text(
        "customer_id,tenure_months,num_complaints,avg_session_minutes,plan_type,region\n"
        "A1,12,1,30.5,basic,EU\n"
        "A2,seven,1,30.5,basic,EU\n"
        "A3,12,?,30.5,basic,EU\n"
        "A4,40,0,NA,platinum,Mars\n"
    )
    local = _json(cli("score", "--version", "1", str(source), str(tmp_path / "l.csv"), "--json"))
    out = tmp_path / "o"
    spark = _json(
        cli("score", "--engine", "spark", "--version", "1", str(source), str(out), "--json")
    )
    assert (spark["rows_scored"], spark["rows_rejected"]) == (
        local["rows_scored"],
        local["rows_rejected"],
    )
    rejects = pd.read_parquet(tmp_path / "o" / "rejects").set_index("customer_id")
    local_rejects = pd.read_csv(tmp_path / "l.rejects.csv").set_index("customer_id")
    assert rejects["reason"].to_dict() == local_rejects["reason"].to_dict()
    assert rejects.loc["A2", "tenure_months"] == "seven" and rejects["row"].isna().all()
    got = pd.read_parquet(tmp_path / "o" / "predictions").set_index("customer_id").sort_index()
    expected = pd.read_csv(tmp_path / "l.csv").set_index("customer_id").sort_index()
    np.testing.assert_allclose(got["probability"], expected["probability"], atol=1e-6)


@pytest.mark.slow
def test_a_failed_spark_job_is_one_line_and_leaves_no_output_and_no_stored_rows(
    cli: Callable[..., Result],
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    train = tmp_path / "train.csv"
    data.generate(rows=600, seed=4).to_csv(train, index=False)
    lifecycle.train(
        settings, data_file=train, version_label="v1", seed=4, gate_f1=0.5, kind="logreg"
    )
    dataset = tmp_path / "customers.parquet"
    data.generate(rows=300, seed=8).to_parquet(dataset, index=False)
    # A store Spark cannot write: its folder would be inside a regular file.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("CHURNOPS_PREDICTION_STORE", str(blocker / "store"))
    output = tmp_path / "out"
    result = cli("score", "--engine", "spark", "--version", "1", str(dataset), str(output))
    assert result.exit_code == 1
    # NB: MLflow may draw its download progress bar on stderr before; the error is one line.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: the Spark job failed: "), errors
    assert "not-a-folder" in errors[0]  # the JVM's root cause, not py4j's "calling o339"
    assert "Traceback" not in result.stderr
    assert not output.exists() or not any(output.iterdir())
    assert blocker.read_text() == ""


def _without_java(tmp_path: Path) -> dict[str, str]:
    """The environment with no java anywhere: JAVA_HOME points nowhere, PATH has no java."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(Path(sys.executable).parent / "churnops", bin_dir / "churnops")
    return {**os.environ, "JAVA_HOME": str(tmp_path / "no-jdk"), "PATH": str(bin_dir)}


def _churnops(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "churnops", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_spark_scoring_without_java_is_one_line_naming_java_17(tmp_path: Path) -> None:
    env = _without_java(tmp_path)
    done = _churnops(env, "score", "--engine", "spark", "in.parquet", "out")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: the spark engine needs Java 17, and JAVA_HOME={tmp_path}/no-jdk has no "
        "bin/java: install it (apt-get install openjdk-17-jre-headless) or set JAVA_HOME to a "
        "Java 17 installation"
    ]
    env.pop("JAVA_HOME")
    done = _churnops(env, "score", "--engine", "spark", "in.parquet", "out")
    assert done.returncode == 1
    assert "error: the spark engine needs Java 17, and there is no java on PATH" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_without_pyspark_spark_scoring_names_the_extra_and_other_commands_still_work(
    tmp_path: Path,
) -> None:
    # A pyspark that cannot be imported, ahead of the real one on the path.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "pyspark.py").write_text("raise ImportError('no pyspark here')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow)}
    done = _churnops(env, "score", "--engine", "spark", "in.parquet", "out")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: the spark engine needs pyspark: pip install 'churnops[spark]'"
    ]
    for args in (["--help"], ["score", "--help"]):
        shown = _churnops(env, *args)
        assert shown.returncode == 0, shown.stderr
    assert "--engine [local|spark]" in shown.stdout


def test_spark_settings_are_parsed_and_a_bad_master_names_the_setting() -> None:
    assert parse_conf("spark.executor.memory=4g, spark.jars=a.jar,b.jar") == {
        "spark.executor.memory": "4g",
        "spark.jars": "a.jar,b.jar",
    }
    assert parse_conf("") == {}
    with pytest.raises(EngineError, match="CHURNOPS_SPARK_CONF: 'oops' is not key=value"):
        parse_conf("oops")
    for good in ("local", "local[2]", "local[*]", "spark://h:7077", "yarn", "k8s://https://h"):
        check_master(good)
    with pytest.raises(EngineError, match=r"CHURNOPS_SPARK_MASTER='locl\[2\]' is not a Spark"):
        check_master("locl[2]")
    assert local_cores("local[2]") == 2 and local_cores("local") == 1
    assert local_cores("yarn") is None
