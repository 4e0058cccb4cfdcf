"""`churnops reproduce` and the registry's own account of each version, against a real tracking
server: a version just trained re-trains identically; a run whose kept table was altered does not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from click.testing import Result
from mlflow.tracking import MlflowClient

from churnops import data
from churnops.config import Settings
from tests.conftest import ok


def test_a_version_just_trained_on_the_built_in_data_reproduces_identically(
    cli: Callable[..., Result], settings: Settings
) -> None:
    trained = ok(cli("train", "--json", "--seed", "11"))
    found = ok(cli("reproduce", trained["run_id"], "--json"))
    assert found["identical"] is True and found["data_identical"] is True
    assert {m["name"] for m in found["metrics"]} == set(trained["metrics"])
    assert all(m["recorded"] == m["reproduced"] for m in found["metrics"])
    assert found["probabilities_identical"] is True and found["rows_compared"] == 1250
    assert found["warnings"] == []
    text = cli("reproduce", "--version", str(trained["version"]))
    assert text.exit_code == 0 and "identical" in text.stdout and "DIFFERENT" not in text.stdout
    assert trained["run_id"] in text.stdout


def test_the_version_page_tells_what_it_is_how_good_and_how_to_reproduce_it(
    cli: Callable[..., Result], settings: Settings
) -> None:
    trained = ok(cli("train", "--json", "--seed", "12"))
    client = MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    version = client.get_model_version(settings.model_name, str(trained["version"]))
    text = version.description or ""
    assert "Logistic regression" in text and "5,000 rows" in text
    assert f"F1 {trained['metrics']['f1']:.4f}" in text
    assert f"ROC AUC {trained['metrics']['roc_auc']:.4f}" in text
    assert "Gate: **passed**" in text and trained["gate_reason"] in text
    assert f"`churnops reproduce {trained['run_id']}`" in text
    run = client.get_run(trained["run_id"])
    assert run.data.params["data_digest"] in text
    # NB: the UI shows the dataset's digest on the run page: the same number as the description's.
    assert run.inputs is not None
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.digest == run.data.params["data_digest"]
    assert run.info.run_name == f"v{trained['version']}"  # not every run called v1
    assert run.data.params["version"] == f"v{trained['version']}"
    assert all(len(version.tags[m].split(".")[1]) == 4 for m in ("f1", "roc_auc", "precision"))
    # NB: the version keeps what is read back from it; the rest of the account is on its run.
    assert set(version.tags) == {
        *("accuracy", "precision", "recall", "f1", "roc_auc", "baseline_f1"),
        *("gate_passed", "gate_f1", "threshold", "inference", "id_column"),
    }
    assert run.data.tags["gate_reason"] == trained["gate_reason"]
    assert run.data.tags["model_type"] == "logreg" and run.data.tags["onnx_check"]
    assert run.data.tags["library.scikit-learn"] and run.data.tags["library.churnops"]
    model = client.get_registered_model(settings.model_name)
    assert "churnops" in model.description and "production" in model.description


def test_a_run_whose_kept_table_was_altered_does_not_reproduce_and_exits_1(
    cli: Callable[..., Result], settings: Settings, tmp_path: Path
) -> None:
    table = tmp_path / "customers.csv"
    data.write_generated(table, rows=1500, seed=4)
    trained = ok(cli("train", "--json", "--data", str(table), "--model", "logreg"))
    client = MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    kept = [a.path for a in client.list_artifacts(trained["run_id"], "data")]
    assert kept == ["data/customers.csv"]
    assert ok(cli("reproduce", trained["run_id"], "--json"))["identical"] is True

    altered = tmp_path / "altered" / "customers.csv"
    altered.parent.mkdir()
    frame = pd.read_csv(table)
    frame.loc[: len(frame) // 3, "num_complaints"] += 3
    frame.to_csv(altered, index=False)
    client.log_artifact(trained["run_id"], str(altered), "data")
    table.unlink()  # the original path is gone too: only the kept copy is read
    done = cli("reproduce", trained["run_id"], "--json")
    assert done.exit_code == 1
    found = json.loads(done.stdout)
    assert found["identical"] is False and found["data_identical"] is False
    assert found["data_recorded"] == client.get_run(trained["run_id"]).data.params["data_digest"]
    assert any(m["recorded"] != m["reproduced"] for m in found["metrics"])
    text = cli("reproduce", trained["run_id"])
    assert text.exit_code == 1 and "NOT identical" in text.stdout and "DIFFERENT" in text.stdout


def test_reproducing_a_run_that_does_not_exist_is_one_clear_error(
    cli: Callable[..., Result], settings: Settings
) -> None:
    done = cli("reproduce", "0123456789abcdef0123456789abcdef")
    assert done.exit_code == 1
    assert "no run '0123456789abcdef0123456789abcdef'" in done.stderr
    assert "churnops status --json" in done.stderr
