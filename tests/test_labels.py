"""Late churn outcomes without servers: both join rules (prediction id; customer within the
horizon, with immature "retained" outcomes left out), conflicts, and `churnops labels add`:
idempotent, unknown ids counted, bad files refused whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from click.testing import CliRunner

from churnops.cli import main
from churnops.monitoring import labels, store
from tests.test_store import batch

T0 = pd.Timestamp("2026-10-01T00:00:00Z")
HORIZON = pd.Timedelta(days=30)


def predictions(*rows: tuple[str, str | None, int]) -> pd.DataFrame:
    """(prediction_id, customer_id, day) rows."""
    return pd.DataFrame(
        {
            "prediction_id": [r[0] for r in rows],
            "customer_id": [r[1] for r in rows],
            "time": [T0 + pd.Timedelta(days=r[2]) for r in rows],
        }
    )


def outcomes(*rows: tuple[str, str, int, float | None], added: int = 0) -> pd.DataFrame:
    """(key kind, key, outcome, day or None) rows."""
    return pd.DataFrame(
        {
            "key_kind": [r[0] for r in rows],
            "key": [r[1] for r in rows],
            "outcome": [r[2] for r in rows],
            "time": [pd.NaT if r[3] is None else T0 + pd.Timedelta(days=r[3]) for r in rows],
            "added_at": [T0 + pd.Timedelta(seconds=added)] * len(rows),
            "row": np.arange(len(rows)),
        }
    )


def test_an_outcome_keyed_by_prediction_id_is_final_as_given() -> None:
    joined = labels.join(
        predictions(("p1", None, 0), ("p2", "c2", 50)),
        outcomes(("prediction_id", "p1", 1, None), ("prediction_id", "p2", 0, None)),
        HORIZON,
        now=T0 + pd.Timedelta(days=51),
    )
    assert joined.frame["outcome"].tolist() == [1.0, 0.0]
    assert joined.immature == 0


def test_a_customer_outcome_applies_to_predictions_within_the_horizon_before_it() -> None:
    frame = predictions(
        ("before", "c1", 0),  # churn on day 20: within 30 days after -> 1
        ("too-early", "c2", 0),  # churn on day 45: beyond the horizon -> unlabelled
        ("after", "c3", 25),  # churn on day 20: before the prediction -> unlabelled
        ("mature", "c4", 0),  # retained seen on day 10; day 30 has passed by now -> 0
        ("immature", "c5", 40),  # retained seen on day 45; day 70 has not passed -> immature
        ("unknown", "c6", 0),
    )
    found = outcomes(
        ("customer_id", "c1", 1, 20),
        ("customer_id", "c2", 1, 45),
        ("customer_id", "c3", 1, 20),
        ("customer_id", "c4", 0, 10),
        ("customer_id", "c5", 0, 45),
    )
    joined = labels.join(frame, found, HORIZON, now=T0 + pd.Timedelta(days=50))
    result = dict(zip(joined.frame["prediction_id"], joined.frame["outcome"], strict=True))
    assert result["before"] == 1.0 and result["mature"] == 0.0
    assert all(np.isnan(result[k]) for k in ("too-early", "after", "immature", "unknown"))
    assert joined.immature == 1
    assert joined.frame.set_index("prediction_id").loc["immature", "immature"]


def test_the_latest_of_conflicting_outcomes_wins_and_is_counted() -> None:
    first = outcomes(("prediction_id", "p1", 0, None), added=0)
    second = outcomes(("prediction_id", "p1", 1, None), added=10)
    joined = labels.join(predictions(("p1", None, 0)), pd.concat([second, first]), HORIZON, now=T0)
    assert joined.frame["outcome"].tolist() == [1.0]
    assert joined.conflicts == 1


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CHURNOPS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    target = store.open_store(str(tmp_path / "store"))
    served = batch(
        ["a-0", "a-1"], served_at=T0.timestamp(), model="churn_model", customer_ids=["c1", "c2"]
    )
    store.write_predictions(target, store.to_table([served]))
    return tmp_path


def add(*args: str) -> tuple[int, dict, str]:
    result = CliRunner().invoke(main, ["labels", "add", "--json", *args])
    return result.exit_code, json.loads(result.stdout or "{}"), result.stderr


def label_files(project: Path) -> list[Path]:
    return sorted((project / "store" / "labels").glob("*.parquet"))


def test_adding_the_same_outcomes_twice_changes_nothing(project: Path) -> None:
    path = project / "outcomes.csv"
    path.write_text("prediction_id,churn\na-0,no\na-1,Yes\nzz-9,TRUE\n")
    code, first, _ = add(str(path))
    assert code == 0 and first["added"] and first["rows"] == 3 and first["churned"] == 2
    assert first["unknown"] == 1
    code, second, _ = add(str(path))
    assert code == 0 and not second["added"]
    assert len(label_files(project)) == 1


def test_customer_outcomes_need_a_time_and_count_conflicts(project: Path) -> None:
    path = project / "by_customer.csv"
    path.write_text(
        "customer_id,time,churn\nc1,2026-10-05,churned\nc1,2026-10-05,retained\nc9,2026-10-06,0\n"
    )
    code, report, _ = add(str(path))
    assert code == 0 and report["keyed_by"] == "customer_id"
    assert report["conflicts"] == 1 and report["unknown"] == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("prediction_id,outcome\na-0,1\n", "outcome column 'churn' not found"),
        ("prediction_id,churn\na-0,maybe\n", "values that are not a churn outcome: 'maybe'; write"),
        ("prediction_id,churn\na-0,\n", "no outcome in 'churn' on line(s) 2"),
        ("customer_id,churn\nc1,1\n", "need a 'time' column"),
        ("customer_id,time,churn\nc1,last week,1\n", "'time' on line 2 is not an ISO 8601"),
        ("who,churn\nc1,1\n", "no key column"),
        ("prediction_id,churn\n", "no outcome rows"),
    ],
)
def test_a_bad_label_file_is_refused_whole_with_a_clear_error(
    project: Path, content: str, message: str
) -> None:
    path = project / "bad.csv"
    path.write_text(content)
    code, _, stderr = add(str(path))
    assert code == 1
    assert message in stderr and stderr.startswith("error: ")
    assert label_files(project) == []


def test_a_missing_label_file_is_a_clear_error(project: Path) -> None:
    code, _, stderr = add(str(project / "nope.csv"))
    assert code == 1 and "does not exist" in stderr


def test_outcomes_keyed_by_prediction_id_and_by_customer_read_together(project: Path) -> None:
    by_id, by_customer = project / "by_id.csv", project / "by_customer.csv"
    by_id.write_text("prediction_id,churn\na-0,1\n")
    by_customer.write_text("customer_id,time,churn\nc2,2026-10-05T00:00:00Z,0\n")
    assert add(str(by_id))[0] == 0 and add(str(by_customer))[0] == 0
    # NB: this concatenation once failed (timestamp[ms] vs timestamp[us, tz=UTC]) and with it
    # every later monitor and promote.
    table = store.read_labels(store.open_store(str(project / "store")))
    assert table is not None and table.schema == store.LABELS_SCHEMA
    assert sorted(table["key"].to_pylist()) == ["a-0", "c2"]


def test_an_outcome_file_written_by_an_earlier_version_still_reads(project: Path) -> None:
    folder = project / "store" / "labels"
    folder.mkdir(parents=True)
    old = pd.DataFrame(
        {
            "key_kind": ["prediction_id"],
            "key": ["a-1"],
            "outcome": np.array([1], dtype="int8"),
            "time": pd.Series([pd.NaT], dtype="datetime64[ms]"),
            "added_at": [pd.Timestamp("2026-10-01", tz="UTC")],
            "row": [0],
        }
    )
    old.to_parquet(folder / "old.parquet", index=False)
    path = project / "by_customer.csv"
    path.write_text("customer_id,time,churn\nc1,2026-10-05,1\n")
    assert add(str(path))[0] == 0
    table = store.read_labels(store.open_store(str(project / "store")))
    assert table is not None and sorted(table["key"].to_pylist()) == ["a-1", "c1"]


def test_three_concurrent_adds_of_one_file_add_it_once_and_tell_the_others(
    project: Path,
) -> None:
    path = project / "outcomes.csv"
    path.write_text("prediction_id,churn\n" + "".join(f"a-{i},{i % 2}\n" for i in range(5000)))
    command = [str(Path(sys.executable).parent / "churnops"), "labels", "add", "--json", str(path)]
    racers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = [(r.wait(timeout=120), *r.communicate()) for r in racers]
    assert [code for code, _, _ in results] == [0, 0, 0], results
    assert all("Traceback" not in err for _, _, err in results)
    added = sorted(json.loads(out)["added"] for _, out, _ in results)
    assert added == [False, False, True]
    assert len(label_files(project)) == 1
    assert not list((project / "store" / "labels").glob("*.partial"))


def test_a_file_that_is_not_a_table_is_refused_without_showing_its_content(
    project: Path,
) -> None:
    secret = project / "shadow"
    secret.write_text("root:$6$s3cr3t-hash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
    link = project / "outcomes.csv"
    link.symlink_to(secret)
    code, _, stderr = add(str(link))
    assert code == 1 and "does not read as a table" in stderr
    assert "s3cr3t" not in stderr and "19000" not in stderr


def test_a_fifo_is_refused_as_not_a_regular_file(project: Path) -> None:
    fifo = project / "outcomes.csv"
    os.mkfifo(fifo)
    code, _, stderr = add(str(fifo))
    assert code == 1 and "not a regular file" in stderr and "does not exist" not in stderr


def test_a_parquet_key_holding_lists_is_refused(project: Path) -> None:
    path = project / "outcomes.parquet"
    pd.DataFrame({"prediction_id": [["a-0", "a-1"]], "churn": [1]}).to_parquet(path)
    code, _, stderr = add(str(path))
    assert code == 1 and "holds a list or nested value" in stderr
    assert label_files(project) == []


def test_a_key_listed_twice_is_one_unknown_key(project: Path) -> None:
    path = project / "outcomes.csv"
    path.write_text("prediction_id,churn\nzz-1,1\nzz-1,1\na-0,0\n")
    code, report, _ = add(str(path))
    assert code == 0 and report["unknown"] == 1


def test_writers_racing_past_the_existence_check_add_one_file_and_tell_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = store.open_store(str(tmp_path))
    table = store.conform_labels(
        pa.table({"key_kind": ["prediction_id"], "key": ["a-0"], "outcome": pa.array([1], "int8")})
    )
    # NB: all three have checked that the file is absent and written their temporary copy
    # before any publishes it: the race the subprocess test can only hope to hit.
    barrier = threading.Barrier(3)
    real = store.pq.write_table

    def write_then_wait(*args, **kwargs):
        real(*args, **kwargs)
        barrier.wait(timeout=10)

    monkeypatch.setattr(store.pq, "write_table", write_then_wait)
    results: list[tuple[str, bool]] = []
    racers = [
        threading.Thread(target=lambda: results.append(store.write_labels(target, "same", table)))
        for _ in range(3)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=20)
    assert sorted(added for _, added in results) == [False, False, True]
    assert [p.name for p in (tmp_path / "labels").iterdir()] == ["same.parquet"]
